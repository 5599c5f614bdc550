#!/usr/bin/env bash
# Integration suites, as root, against the real kernel, runc, crun and the
# real clients. $1 is the build directory holding shim/agentshim.
set -euo pipefail
# Further arguments are pytest's (default: every suite), e.g.
#   scripts/integration.sh build integration/test_sandbox.py -k tty
build=${1:-build}
set -- "$build" "${@:2}"
[ $# -gt 1 ] || set -- "$build" integration
export AGENTSHIM_BIN=$(realpath "$build/shim/agentshim")
if [ "$(id -u)" != 0 ]; then
  echo "integration tests need root (they create namespaces, mounts and cgroups)" >&2
  exit 1
fi
# One integration session at a time on a machine: the suites share dockerd,
# containerd, podman's storage and the host's cgroup trees, and each checks
# that nothing was left behind (a second session's containers would count).
exec 9>/run/agentshim-integration.lock
flock 9
exec /usr/bin/python3 -m pytest -q -p no:cacheprovider "${@:2}"
