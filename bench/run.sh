#!/usr/bin/env bash
# Benchmarks: agentshim side by side with its peers in one run, as ratios.
# $1 is the build directory. Never part of `make test` (timings are noisy).
set -euo pipefail
build=${1:-build}
here=$(dirname "$0")
echo "## lifecycle"; /usr/bin/python3 "$here/lifecycle.py" --agentshim "$build/shim/agentshim"
echo "## exec storm"; /usr/bin/python3 "$here/exec_storm.py" --agentshim "$build/shim/agentshim"
echo "## filesystem root"; /usr/bin/python3 "$here/fsroot.py" --agentshim "$build/shim/agentshim"
echo "## verify"; /usr/bin/python3 "$here/verify.py" --build "$build"
echo "## egress proxy"; /usr/bin/python3 "$here/proxy.py" --build "$build"
echo "## docker run"; /usr/bin/python3 "$here/docker.py" --agentshim "$build/shim/agentshim"
