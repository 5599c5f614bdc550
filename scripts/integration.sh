#!/usr/bin/env bash
# Integration suites, as root, against the real kernel, runc, crun and the
# real clients. $1 is the build directory holding shim/agentshim.
set -euo pipefail
build=${1:-build}
export AGENTSHIM_BIN=$(realpath "$build/shim/agentshim")
if [ "$(id -u)" != 0 ]; then
  echo "integration tests need root (they create namespaces, mounts and cgroups)" >&2
  exit 1
fi
exec /usr/bin/python3 -m pytest -q -p no:cacheprovider integration "${@:2}"
