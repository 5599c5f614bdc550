#!/usr/bin/env bash
# Benchmarks: agentshim side by side with its peers, reporting ratios.
# $1 is the build directory.
set -euo pipefail
build=${1:-build}
here=$(dirname "$0")
/usr/bin/python3 "$here/lifecycle.py" --agentshim "$build/shim/agentshim" "${@:2}"
