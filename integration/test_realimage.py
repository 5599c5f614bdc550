"""A real Debian image (issue 16) under Docker and Podman: the record of an
overlay root is assembled from the image's layers, and a content-addressed
image layer is reused across runs ("proven") without being walked, with the
same root a whole walk of the mount gives (docs/FORMATS.md "Overlay roots").

The image: `mmdebstrap --variant=apt --include=python3,git,gcc,nodejs,npm
bookworm` (bench/realimage.py's, cached in /var/cache/agentshim-bench; built
once, a few minutes). Skipped, with the reason, only when mmdebstrap cannot
build it.
"""
import glob
import json
import os
import subprocess
import sys
import time

import pytest

from conftest import REPO, run, wait_records
import clients
from clients import Dockerd, agentshim_policy, ensure_packages, short_tmpdir

sys.path.insert(0, os.path.join(REPO, "bench"))
from realimage import TARBALL, ensure_tarball, overlay_podman  # noqa: E402

IMG = "debian-agent:agentshim"
# The tree store keeps no entry changed within 2 s of a walk (WalkOptions::
# racy_ns): a layer imported just before its first run is stored by the
# second. Real images are pulled long before they run.
RACY_S = 2.5


@pytest.fixture(scope="module")
def image_tar():
    try:
        return ensure_tarball(TARBALL)
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"mmdebstrap could not build the Debian image ({e})")


def records(audit):
    """{run dir: [events]} of every finalized run under audit."""
    wait_records(audit, timeout=120)
    out = {}
    for rd in glob.glob(os.path.join(audit, "runs", "*")):
        with open(os.path.join(rd, "events.ndjson")) as f:
            out[rd] = [json.loads(line) for line in f]
    return out


def rootfs_before(events):
    for e in events:
        if e["type"] == "fs.root" and e["data"]["phase"] == "before":
            for t in e["data"]["trees"]:
                if t["name"] == "rootfs":
                    return t
    fin = [e["data"] for e in events if e["type"] == "run.finalized"]
    raise AssertionError(f"no fs.root before for rootfs: {[e['type'] for e in events]} {fin}")


def new_record(audit, seen):
    recs = records(audit)
    fresh = [rd for rd in recs if rd not in seen]
    assert len(fresh) == 1, fresh
    seen.add(fresh[0])
    return rootfs_before(recs[fresh[0]])


def check_layer_reuse(runs):
    """runs: [strict, first, second] fs.root "before" entries of the rootfs."""
    strict, first, second = runs
    assert "layers" not in strict, strict  # strict: no cache, the mount walked whole
    assert strict["entries"] > 30000, strict
    for t in (first, second):
        assert t["root"] == strict["root"], (t, strict)  # the same tree, entry for entry
        assert t["entries"] == strict["entries"]
        assert t["layers"][0]["role"] == "upper" and t["layers"][0]["walk"] == "walked"
    image = [l for l in second["layers"] if l.get("identity")]
    assert image, second["layers"]
    assert all(l["walk"] == "proven" for l in image), json.dumps(second["layers"])
    assert sum(l["entries"] for l in image) >= strict["entries"] - 100
    assert second["bytes_hashed"] == 0, second
    # The first run stored its layer stack (the same image layers, the same
    # upper and per-container layers' leaves): the second takes the root
    # and counts from it without reading an entry.
    assert first["assembled"] == "merge", first
    assert second["assembled"] == "stack", second


def test_docker_reuses_image_layers(image_tar):
    missing = ensure_packages()
    if missing:
        pytest.skip(f"client binaries missing after scripts/deps.sh: {missing}")
    d = Dockerd(short_tmpdir("dk"))
    try:
        d.start()
        with open(image_tar, "rb") as f:
            d("import", "-", IMG, input=f.read(), check=True, timeout=600)
        time.sleep(RACY_S)
        seen, runs = set(), []
        for rt in ("agentshim-strict", "agentshim", "agentshim"):
            # Not --rm: the container (and its overlay) stays until its
            # record is final (see the lead's note on --rm in the report).
            r = d("run", "--network", "none", f"--runtime={rt}", IMG, "true", timeout=300)
            assert r.returncode == 0, r.stderr.decode(errors="replace")
            cid = d.out("ps", "-lq").strip()
            runs.append(new_record(d.audit, seen))
            d("rm", cid, check=True)
        check_layer_reuse(runs)
    finally:
        d("rmi", "-f", IMG, timeout=300)  # dockerd deletes the 40k-file layer itself (stop's rm is bounded)
        d.stop()


def test_podman_reuses_image_layers(image_tar):
    missing = ensure_packages()
    if missing:
        pytest.skip(f"client binaries missing after scripts/deps.sh: {missing}")
    p = overlay_podman(clients)(short_tmpdir("pd"))
    try:
        p.out("import", image_tar, IMG, timeout=600)
        time.sleep(RACY_S)
        strict = agentshim_policy(p.base, strict=True)
        seen, runs = set(), []
        for pol in (strict, None, None):
            r = p("run", "--rm", "--network", "none", *p.ulimits(), IMG, "true", runtime="agentshim", policy=pol,
                  timeout=300)
            assert r.returncode == 0, r.stderr.decode(errors="replace")
            runs.append(new_record(p.audit, seen))
        check_layer_reuse(runs)
    finally:
        p("rmi", "-f", IMG, timeout=300)
        p.stop()


# Issue 16 item 4: what an agent does with a real image. Python writes a
# program and its Makefile, git commits them, make runs gcc, the program
# runs; with NPM=1 npm installs a package from the public registry through
# the egress allowlist and node uses it. The last lines are sha256sum of the
# files that ran, as the container sees them, to check the record against.
SCENARIO = r"""
set -e
cd /work
python3 - <<'PY'
import pathlib
pathlib.Path("hello.c").write_text('#include <stdio.h>\nint main(void){puts("built");return 0;}\n')
pathlib.Path("Makefile").write_text("hello: hello.c\n\tgcc -O1 -o hello hello.c\n")
PY
git init -q . && git add -A
git -c user.email=agent@example.com -c user.name=agent commit -qm init
make -s
./hello
if [ "$NPM" = 1 ]; then
  npm install --no-audit --no-fund --silent --cache /tmp/npm-cache left-pad@1.3.0
  node -e 'console.log(require("left-pad")("x", 3, "-"))'
fi
echo ---
sha256sum $(readlink -f /usr/bin/python3 /usr/bin/git /usr/bin/make /usr/bin/gcc /usr/bin/node) /work/hello
"""


def check_scenario(out, events, changes, npm):
    """The run's output is what the scenario prints, and the record names
    each program that ran with the hash sha256sum gave inside the container,
    and the files it wrote."""
    head, _, sums = out.partition("---\n")
    assert "built\n" in head, out
    if npm:
        assert "--x\n" in head, out
    want = {}
    for line in sums.splitlines():
        h, path = line.split()
        want[path] = h
    ran = {}
    for e in events:
        if e["type"] == "process.exec":
            for f in e["data"].get("files", []):
                if f.get("sha256"):
                    ran.setdefault(f["path"], set()).add(f["sha256"])
    for path, h in want.items():
        if not npm and (path.endswith("/node") or "nodejs" in path):
            continue  # node did not run
        # The kernel names the file it executed: symlinks (python3, gcc) resolved.
        assert path in ran and ran[path] == {h}, (path, h, ran.get(path), sorted(ran))
    # gcc's own programs ran too: the compiler proper, the assembler, the linker.
    for prog in ("/cc1", "/collect2", "-as"):
        assert any(p.endswith(prog) for p in ran), (prog, sorted(ran))
    changed = {c["path"] for c in changes}
    for p in ("hello", "hello.c", "Makefile", ".git/HEAD"):
        assert any(c == p or c.endswith("/" + p) for c in changed), (p, sorted(changed)[:40])
    if npm:
        assert any("node_modules/left-pad" in c for c in changed), sorted(changed)[:40]


def run_record(audit, seen):
    recs = records(audit)
    fresh = [rd for rd in recs if rd not in seen]
    assert len(fresh) == 1, fresh
    seen.add(fresh[0])
    v = run([os.environ.get("AGENTSHIM_BIN", os.path.join(REPO, "build", "shim", "agentshim")), "--audit-dir",
             audit, "verify", fresh[0]])
    assert v.stdout == b"VERIFIED\n", (v.stdout, v.stderr)
    changes = [json.loads(line) for line in open(os.path.join(fresh[0], "changes.ndjson"))]
    return recs[fresh[0]], changes


def test_agent_scenario_under_podman(image_tar, tmp_path):
    """Podman (host network namespace, so the registry is reachable through
    the proxy): the whole scenario including npm, the registry allowed by the
    policy, the host's CA bundle given to node (this machine's outbound TLS
    passes an intercepting proxy, MACHINE.md)."""
    missing = ensure_packages()
    if missing:
        pytest.skip(f"client binaries missing after scripts/deps.sh: {missing}")
    p = overlay_podman(clients)(short_tmpdir("pd"))
    try:
        p.out("import", image_tar, IMG, timeout=600)
        time.sleep(RACY_S)
        pol = os.path.join(p.base, "policy-npm.json")
        with open(pol, "w") as f:
            json.dump({"audit": {"dir": p.audit}, "network": {"allow": ["registry.npmjs.org:443"]}}, f)
        work = tmp_path / "work"
        work.mkdir()
        ca = "/etc/ssl/certs/ca-certificates.crt"
        r = p("run", "--rm", *p.ulimits(), "-v", f"{work}:/work", "-v", f"{ca}:/host-ca.crt:ro",
              "-e", "NODE_EXTRA_CA_CERTS=/host-ca.crt", "-e", "NPM=1", IMG, "bash", "-c", SCENARIO,
              runtime="agentshim", policy=pol, timeout=600)
        out = r.stdout.decode(errors="replace")
        assert r.returncode == 0, out + r.stderr.decode(errors="replace")
        events, changes = run_record(p.audit, set())
        check_scenario(out, events, changes, npm=True)
        conns = [e["data"] for e in events if e["type"] == "net.connection"]
        assert any(c["host"] == "registry.npmjs.org" and c["decision"] == "allowed" for c in conns), conns
    finally:
        p("rmi", "-f", IMG, timeout=300)
        p.stop()


def test_agent_scenario_under_agentshim_run(image_tar, tmp_path, rootfs_template):
    """`agentshim run` of the unpacked image (read-only root, a bind-mounted
    work directory), the whole scenario including npm through the egress
    allowlist, as under Podman: the record verifies and names every program
    with the hash sha256sum gave inside the container."""
    import uuid
    from conftest import AGENTSHIM, Bundle
    rootfs = str(tmp_path / "debian")
    os.makedirs(rootfs)
    run(["tar", "-xf", image_tar, "-C", rootfs, "--exclude=./dev/*"], check=True, timeout=600)
    work = tmp_path / "work"
    work.mkdir()
    audit, root = str(tmp_path / "audit"), str(tmp_path / "state")
    pol = str(tmp_path / "policy.json")
    with open(pol, "w") as f:
        json.dump({"audit": {"dir": audit}, "network": {"allow": ["registry.npmjs.org:443"]}}, f)
    b = Bundle(str(tmp_path / "bundle"), rootfs_template)
    b.config["root"] = {"path": rootfs, "readonly": True}
    b.config["process"]["env"] += ["NPM=1", "NODE_EXTRA_CA_CERTS=/host-ca.crt", "HOME=/root"]
    b.config["mounts"] += [
        {"destination": "/work", "type": "bind", "source": str(work), "options": ["rbind", "rw"]},
        {"destination": "/host-ca.crt", "type": "bind", "source": "/etc/ssl/certs/ca-certificates.crt",
         "options": ["rbind", "ro"]}]
    b.args("bash", "-c", SCENARIO)
    cid = "real" + uuid.uuid4().hex[:8]
    cli = [AGENTSHIM, "--root", root, "--policy", pol, "--audit-dir", audit]
    try:
        r = run(cli + ["run", "--bundle", b.path, cid], timeout=600)
    finally:
        run(cli + ["delete", "--force", cid])
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0, out + r.stderr.decode(errors="replace")
    events, changes = run_record(audit, set())
    check_scenario(out, events, changes, npm=True)
    conns = [e["data"] for e in events if e["type"] == "net.connection"]
    assert any(c["host"] == "registry.npmjs.org" and c["decision"] == "allowed" for c in conns), conns


def test_agent_scenario_under_docker(image_tar, tmp_path):
    """Docker (its daemon runs in a network namespace of the test's, with no
    way out: no npm here): python, git, make, gcc and the program they built,
    each recorded with the hash of the file that ran."""
    missing = ensure_packages()
    if missing:
        pytest.skip(f"client binaries missing after scripts/deps.sh: {missing}")
    d = Dockerd(short_tmpdir("dk"))
    try:
        d.start()
        with open(image_tar, "rb") as f:
            d("import", "-", IMG, input=f.read(), check=True, timeout=600)
        time.sleep(RACY_S)
        work = tmp_path / "work"
        work.mkdir()
        r = d("run", "--network", "none", "--runtime=agentshim", "-v", f"{work}:/work", IMG, "bash", "-c",
              SCENARIO, timeout=600)
        out = r.stdout.decode(errors="replace")
        assert r.returncode == 0, out + r.stderr.decode(errors="replace")
        cid = d.out("ps", "-lq").strip()
        events, changes = run_record(d.audit, set())
        d("rm", cid, check=True)
        check_scenario(out, events, changes, npm=False)
    finally:
        d("rmi", "-f", IMG, timeout=300)
        d.stop()


def test_bench_smoke():
    """bench/realimage.py --smoke (busybox root, two iterations, the CLI
    only) runs and prints every ratio it is for: a check that the benchmark
    works, not a timing assertion."""
    r = run([sys.executable, os.path.join(REPO, "bench", "realimage.py"), "--smoke", "--no-clients",
             "--agentshim", os.environ.get("AGENTSHIM_BIN", os.path.join(REPO, "build", "shim", "agentshim"))],
            timeout=300)
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0, out + r.stderr.decode(errors="replace")
    result = json.loads(out.strip().splitlines()[-1])
    for k in ("lifecycle_agentshim_vs_runc", "run_agentshim_vs_runc", "run_cold_ms", "image_entries"):
        assert k in result, (k, out)
    assert "record phases" in out and "fs.root" in out, out
