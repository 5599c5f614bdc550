#!/usr/bin/env bash
# Run one command in a booted pure-cgroup-v2 guest and return its exit status
# and output (on stdout).
#   scripts/guest/run.sh [--systemd] [--placement root|child] [--timeout S]
#                        [--env K=V]... [--cwd DIR] -- COMMAND ARGS...
# The guest: Debian's kernel with cgroup_no_v1=all, the root image from
# build-image.sh (a throwaway snapshot per run), the repository shared
# read-only at the same path over 9p (so build/ and the test tree are there),
# under TCG (this machine's /dev/kvm is kvm_pvm, which runs no ordinary
# guest; no_timer_check: a slow TCG guest on a busy host otherwise fails the
# IO-APIC timer check and panics). Without --systemd a tiny init (init.py) is PID 1, mounts cgroup2
# with nsdelegate and runs the command from the root cgroup or, with
# --placement child, from /init; with --systemd Debian's systemd is PID 1 and
# runs it as kernel-command-line.service.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
systemd=0 placement=root timeout=${GUEST_TIMEOUT:-1800} cwd=$repo
env_json='{}'
envs=()
while [ $# -gt 0 ]; do
  case "$1" in
    --systemd) systemd=1 ;;
    --placement) placement=$2; shift ;;
    --timeout) timeout=$2; shift ;;
    --env) envs+=("$2"); shift ;;
    --cwd) cwd=$2; shift ;;
    --) shift; break ;;
    *) break ;;
  esac
  shift
done
[ $# -gt 0 ] || { echo "usage: $0 [--systemd] [--placement root|child] -- COMMAND..." >&2; exit 2; }
case "$placement" in root|child) ;; *) echo "run.sh: --placement root|child" >&2; exit 2 ;; esac
img=$("$here/build-image.sh")
ctl=$(mktemp -d /tmp/agentshim-guest.XXXXXX)
trap 'rm -rf "$ctl"' EXIT
python3 - "$ctl/cmd.json" "$cwd" "$placement" "${envs[@]+"${envs[@]}"}" -- "$@" <<'PY'
import json, sys
out, cwd, placement = sys.argv[1:4]
rest = sys.argv[4:]
sep = rest.index("--")
env = dict(e.split("=", 1) for e in rest[:sep])
json.dump({"argv": rest[sep + 1:], "cwd": cwd, "placement": placement, "env": env}, open(out, "w"))
PY
append="console=ttyS0 quiet loglevel=1 panic=-1 no_timer_check cgroup_no_v1=all systemd.unified_cgroup_hierarchy=1"
append+=" guest.repo=$repo"
if [ "$systemd" = 1 ]; then
  append+=" guest.init=/lib/systemd/systemd systemd.show_status=0 systemd.run=$here/init.py"
  append+=" systemd.run_success_action=poweroff systemd.run_failure_action=poweroff"
else
  append+=" guest.init=$here/init.py"
fi
start=$(date +%s)
set +e
timeout --foreground -k 10 "$timeout" qemu-system-x86_64 \
  -accel tcg,thread=multi -machine q35 -cpu max -smp "${GUEST_CPUS:-2}" -m "${GUEST_MEM:-2048}" \
  -display none -monitor none -serial stdio -no-reboot -nodefaults \
  -kernel "$img/vmlinux" -initrd "$img/initrd" -append "$append" \
  -drive "file=$img/root.img,if=virtio,format=raw,snapshot=on" \
  -virtfs "local,path=$repo,mount_tag=repo,security_model=none,readonly=on" \
  -virtfs "local,path=$ctl,mount_tag=ctl,security_model=none" </dev/null
q=$?
set -e
echo "guest: $(($(date +%s) - start)) s" >&2
if [ ! -s "$ctl/rc" ]; then
  echo "guest: no exit status (qemu exited $q: boot failure or timeout after ${timeout}s)" >&2
  exit 125
fi
exit "$(cat "$ctl/rc")"
