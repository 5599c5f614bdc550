#!/usr/bin/env bash
# The integration suites on pure cgroup v2, in booted guests (run.sh), one
# guest at a time, against agentshim ($1/shim/agentshim) and Debian's runc
# side by side (each suite compares them):
#   v2-root   no systemd, cgroup2 with nsdelegate, runner in the root cgroup
#   v2-child  the same, runner in the child cgroup /init
#   systemd   systemd as PID 1, runner in a service (kernel-command-line.service)
# GUEST_CONFIGS picks some of them (default: all three); further arguments
# are pytest's (default: per guest, below). Prints each guest's time; exits
# non-zero when any guest's tests failed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
build=$(realpath "${1:-build}")
shift || true
given=("$@")
case "$build" in "$repo"/*) ;; *) echo "guest test: $build must be inside $repo (shared with the guest)" >&2; exit 2 ;; esac
start=$(date +%s)
"$here/build-image.sh" >/dev/null
echo "=== guest image: ready in $(($(date +%s) - start)) s"
# What each guest runs unless arguments say otherwise: everything in one
# placement, the cgroup tests (and lifecycle's cgroup-touching ones) in the
# others, to fit CI's time (docs/OPERATIONS.md has the figures).
cgroup_tests=(integration/test_cgroups.py integration/test_lifecycle.py
  -k "test_cgroups or exec or kill or pause or events or update or oom or delete")
rc=0
for cfg in ${GUEST_CONFIGS:-v2-root v2-child systemd}; do
  case "$cfg" in
    v2-root) opts=(--placement root) suites=("${cgroup_tests[@]}") ;;
    v2-child) opts=(--placement child)
      suites=(integration/test_lifecycle.py integration/test_bad_input.py integration/test_sandbox.py
        integration/test_cgroups.py) ;;
    # The CRI suite with containerd's SystemdCgroup = true (the kubelet's
    # systemd driver) joins the cgroup tests here ("test_cri" in -k).
    systemd) opts=(--systemd --env CRI_SYSTEMD_CGROUP=1)
      suites=(integration/test_cgroups.py integration/test_lifecycle.py integration/test_cri.py
        -k "${cgroup_tests[3]} or test_cri") ;;
    *) echo "guest test: unknown configuration $cfg" >&2; exit 2 ;;
  esac
  [ ${#given[@]} -gt 0 ] && suites=("${given[@]}")
  pytest=(/usr/bin/python3 -m pytest -q -p no:cacheprovider -o console_output_style=classic "${suites[@]}")
  echo "=== guest $cfg: ${suites[*]}"
  start=$(date +%s)
  set +e
  "$here/run.sh" "${opts[@]}" --env "AGENTSHIM_BIN=$build/shim/agentshim" --env "GUEST_CONFIG=$cfg" \
    -- "${pytest[@]}"
  r=$?
  set -e
  echo "=== guest $cfg: exit $r in $(($(date +%s) - start)) s"
  [ $r = 0 ] || rc=1
done
exit $rc
