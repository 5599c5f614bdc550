#!/usr/bin/env bash
# Build a busybox root filesystem from Debian's busybox-static into $1
# (no registry, no network): /bin/busybox, a symlink per applet, /etc files.
set -euo pipefail
dest=${1:?usage: mkrootfs.sh DIR}
bb=/bin/busybox
[ -x "$bb" ] || { echo "mkrootfs: $bb missing (apt-get install busybox-static)" >&2; exit 1; }
mkdir -p "$dest"/{bin,etc,proc,sys,dev,tmp,root,workspace,home/agent,var/tmp}
cp "$bb" "$dest/bin/busybox"
for a in $("$dest/bin/busybox" --list); do
  [ -e "$dest/bin/$a" ] || ln -s busybox "$dest/bin/$a"
done
cat >"$dest/etc/passwd" <<'P'
root:x:0:0:root:/root:/bin/sh
agent:x:1000:1000:agent:/home/agent:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
P
cat >"$dest/etc/group" <<'G'
root:x:0:
agent:x:1000:
nogroup:x:65534:
G
echo "nameserver 127.0.0.53" >"$dest/etc/resolv.conf"
echo "127.0.0.1 localhost" >"$dest/etc/hosts"
chmod 1777 "$dest/tmp" "$dest/var/tmp"
chown 1000:1000 "$dest/home/agent"
