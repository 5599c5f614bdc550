#!/usr/bin/env bash
# Build (or reuse) the guest image the cgroup v2 tests boot (scripts/guest/run.sh):
# a Debian root made by mmdebstrap from the host's apt sources (no other
# download), Debian's kernel unpacked to an uncompressed vmlinux (faster to
# boot under TCG), a tiny initramfs that loads the block and 9p modules and
# switches to the root. Cached outside the repository in $GUEST_CACHE
# (default /var/cache/agentshim-guest)/<hash>, the hash being that of this
# script, the package list and the initramfs init; an older image is removed.
# Prints the image directory.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${GUEST_CACHE:-/var/cache/agentshim-guest}
suite=${GUEST_SUITE:-bookworm}
hash=$(cat "$here/build-image.sh" "$here/packages" "$here/initramfs-init" | { cat; echo "$suite"; } |
  sha256sum | cut -c1-16)
img=$cache/$hash
if [ -e "$img/ok" ]; then
  echo "$img"
  exit 0
fi
for t in mmdebstrap mke2fs cpio; do
  command -v "$t" >/dev/null || { echo "build-image: $t missing (scripts/deps.sh installs it)" >&2; exit 1; }
done
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
[ -e "$img/ok" ] && { echo "$img"; exit 0; }
rm -rf "$img" "$img.tmp"
mkdir -p "$img.tmp"
work=$img.tmp
pkgs=$(grep -v '^#' "$here/packages" | tr -s ' \n' ',' | sed 's/^,//; s/,$//')
echo "build-image: mmdebstrap $suite ($pkgs)" >&2
# The root: no docs, no locales; the systemd guest's unit and the serial
# console's getty masked (the test command owns ttyS0).
mmdebstrap --variant=minbase --include="$pkgs" \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --customize-hook='echo agentshim-guest > "$1/etc/hostname"' \
  --customize-hook='printf "127.0.0.1 localhost agentshim-guest\n" > "$1/etc/hosts"' \
  --customize-hook='mkdir -p "$1/etc/systemd/system"' \
  --customize-hook='for u in serial-getty@ttyS0.service getty@tty1.service systemd-timesyncd.service apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer; do ln -sf /dev/null "$1/etc/systemd/system/$u"; done' \
  --customize-hook='rm -f "$1/etc/machine-id"; : > "$1/etc/machine-id"' \
  "$suite" "$work/root"
root=$work/root
kver=$(ls "$root/lib/modules" | sort -V | tail -1)
# An uncompressed vmlinux (ELF with a PVH note: QEMU boots it directly).
vmlinuz=$root/boot/vmlinuz-$kver
python3 - "$vmlinuz" "$work/vmlinux" <<'PY'
import gzip, lzma, subprocess, sys, zlib
data = open(sys.argv[1], "rb").read()
magics = [(b"\x1f\x8b\x08", "gzip"), (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd")]
for magic, kind in magics:
    off = data.find(magic)
    while off >= 0:
        try:
            if kind == "gzip":
                out = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data[off:])
            elif kind == "xz":
                out = lzma.LZMADecompressor().decompress(data[off:])
            else:
                out = subprocess.run(["zstd", "-dc"], input=data[off:], capture_output=True).stdout
            if out[:4] == b"\x7fELF":
                open(sys.argv[2], "wb").write(out)
                sys.exit(0)
        except Exception:
            pass
        off = data.find(magic, off + 1)
sys.exit("build-image: no ELF payload found in " + sys.argv[1])
PY
# The initramfs: busybox, the modules for virtio block/9p/ext4 with their
# dependencies (from modules.dep), in load order.
ird=$work/initramfs
mkdir -p "$ird"/{bin,dev,proc,sys,newroot,modules}
cp "$root/bin/busybox" "$ird/bin/busybox"
ln -s busybox "$ird/bin/sh"
cp "$here/initramfs-init" "$ird/init"
chmod 0755 "$ird/init"
moddir=$root/lib/modules/$kver
want="virtio_pci virtio_blk ext4 9p 9pnet_virtio crc32c_generic crc32c_intel"
python3 - "$moddir" "$ird/modules" $want <<'PY'
import os, shutil, sys
moddir, out, want = sys.argv[1], sys.argv[2], sys.argv[3:]
dep = {}
for line in open(os.path.join(moddir, "modules.dep")):
    k, _, v = line.partition(":")
    dep[os.path.basename(k).split(".ko")[0].replace("-", "_")] = (k, v.split())
builtin = {os.path.basename(l.strip()).split(".ko")[0].replace("-", "_")
           for l in open(os.path.join(moddir, "modules.builtin"))}
order, seen = [], set()
def add(name):
    name = name.replace("-", "_")
    if name in seen or name in builtin or name not in dep:
        return
    seen.add(name)
    for d in dep[name][1]:
        add(os.path.basename(d).split(".ko")[0])
    order.append(dep[name][0])
for w in want:
    add(w)
with open(os.path.join(out, "order"), "w") as f:
    for i, path in enumerate(order):
        name = "%02d-%s" % (i, os.path.basename(path))
        shutil.copy(os.path.join(moddir, path), os.path.join(out, name))
        f.write(name + "\n")
PY
# Compressed modules are unpacked (busybox insmod takes plain ELF).
for m in "$ird"/modules/*.ko.xz; do [ -e "$m" ] && xz -d "$m"; done
for m in "$ird"/modules/*.ko.zst; do [ -e "$m" ] && zstd -q -d --rm "$m"; done
sed -i 's/\.ko\.\(xz\|zst\)$/.ko/' "$ird/modules/order"
(cd "$ird" && find . | cpio -o -H newc --quiet) >"$work/initrd"
# The root file system image (booted with snapshot=on: every run starts clean).
size=$(( $(du -sm "$root" | cut -f1) + 1536 ))
mke2fs -q -t ext4 -L agentshim-guest -d "$root" "$work/root.img" "${size}M"
rm -rf "$root" "$ird"
echo "$kver" >"$work/kernel-version"
touch "$work/ok"
mv "$work" "$img"
# Older images (other hashes) are removed.
for o in "$cache"/*/; do
  o=${o%/}
  [ "$o" = "$img" ] || rm -rf "$o"
done
echo "$img"
