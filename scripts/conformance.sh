#!/usr/bin/env bash
# The OCI runtime-tools validation programs against one runtime, one program
# at a time, with the host's state compared before and after each program
# (docs/CONFORMANCE.md says how the suite is built and which runtimes).
#
#   scripts/conformance.sh SUITE OUT NAME RUNTIME [program...]
#
# SUITE: a built opencontainers/runtime-tools checkout (validation/*/*.t);
# OUT/NAME/<program>.{tap,err,rc,host}: TAP, stderr, exit status, and the
# host differences (empty: nothing outside the container changed);
# OUT/NAME.tsv: program, verdict, ok lines, total lines, exit status, host.
# Run as root, with the integration lock held (scripts/integration.sh's) so
# no test session runs beside it.
set -uo pipefail
suite=$1 out=$2 name=$3 rt=$4
shift 4
mkdir -p "$out/$name"
out=$(realpath "$out")
cd "$suite"
if [ $# -gt 0 ]; then progs=("$@"); else
  progs=()
  for t in validation/*/*.t; do progs+=("$(basename "$t" .t)"); done
fi

ocitest_cleanup() {
  # linux_ns_itype runs in the host mount namespace and leaves proc, sys and
  # dev mounts under /tmp/ocitest*: unmount deepest first, then remove.
  awk '$5 ~ "^/tmp/ocitest" {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null
  done
  for d in /tmp/ocitest*; do [ -e "$d" ] && rm -rf --one-file-system "$d"; done
}

host_state() {
  # What a runtime must not change outside its containers.
  stat -c '%i %A %u %g %t %T %n' /dev/* /dev/.[!.]* 2>/dev/null
  stat -c 'devnull %i %a %u %g %t %T' /dev/null
  for k in fs/mqueue/queues_max fs/mqueue/msg_max fs/mqueue/msgsize_max kernel/shmmax kernel/shmall \
    kernel/shmmni kernel/shm_rmid_forced kernel/msgmax kernel/msgmnb kernel/msgmni kernel/sem \
    net/ipv4/ip_forward net/ipv4/ping_group_range kernel/hostname kernel/domainname; do
    echo "$k $(cat /proc/sys/$k)"
  done
  awk '$5 !~ "^/tmp/ocitest" {print "mount", $5, $6, $7}' /proc/self/mountinfo | sort
  find /sys/fs/cgroup -maxdepth 4 -type d \( -name '*cgrouptest*' -o -name testdir \) | sort
}

: >"$out/$name.tsv"
for p in "${progs[@]}"; do
  host_state >"$out/$name/$p.before" 2>&1
  : | RUNTIME="$rt" timeout 60 "validation/$p/$p.t" >"$out/$name/$p.tap" 2>"$out/$name/$p.err"
  echo $? >"$out/$name/$p.rc"
  ocitest_cleanup
  host_state >"$out/$name/$p.after" 2>&1
  diff "$out/$name/$p.before" "$out/$name/$p.after" >"$out/$name/$p.host"
  rm -f "$out/$name/$p.before" "$out/$name/$p.after"
  rc=$(cat "$out/$name/$p.rc")
  ok=$(grep -c '^ok' "$out/$name/$p.tap")
  total=$(grep -cE '^(not )?ok' "$out/$name/$p.tap")
  verdict=PASS
  [ "$rc" = 0 ] || verdict=FAIL
  [ "$ok" = "$total" ] || verdict=FAIL
  # Programs without ok/not-ok lines report problems as an error block.
  if [ "$total" = 0 ] && grep -qi 'error' "$out/$name/$p.tap"; then verdict=FAIL; fi
  host=$([ -s "$out/$name/$p.host" ] && echo changed || echo same)
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$p" "$verdict" "$ok" "$total" "$rc" "$host" | tee -a "$out/$name.tsv"
done
