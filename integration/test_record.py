"""The record of a run: real containers, then `agentshim verify`, an
independent verifier written from docs/FORMATS.md, a tamper matrix, a
supervisor killed with SIGKILL and a full disk."""
import base64
import glob
import hashlib
import json
import os
import signal
import subprocess
import time

import pytest

import formats_verifier
from conftest import run
from test_lifecycle import wait_status

WORKLOAD = r"""
set -e
echo new > /workspace/added.txt
echo more >> /workspace/modify.txt
rm /workspace/delete.txt
mkdir /workspace/newdir
printf '#!/bin/sh\necho from-script\n' > /workspace/newdir/tool.sh
chmod +x /workspace/newdir/tool.sh
/workspace/newdir/tool.sh
/bin/true
/bin/date > /dev/null
/bin/sleep 0
"""


@pytest.fixture
def workspace(tmp_path):
    ws = tmp_path / "workspace"
    ws.mkdir()
    (ws / "keep.txt").write_text("keep\n")
    (ws / "modify.txt").write_text("modify\n")
    (ws / "delete.txt").write_text("delete\n")
    return ws


def with_workspace(bundle, ws, script):
    bundle.config["mounts"].append({"destination": "/workspace", "type": "bind", "source": str(ws),
                                    "options": ["rbind", "rw"]})
    return bundle.sh(script)


def run_dir_of(shim, cid):
    dirs = [d for d in glob.glob(os.path.join(shim.extra[1], "runs", "*"))
            if json.loads(open(os.path.join(d, "events.ndjson")).readline())["data"]["container_id"] == cid]
    assert len(dirs) == 1, dirs
    return dirs[0]


def first_event(run_dir, type_):
    for line in open(os.path.join(run_dir, "events.ndjson")):
        e = json.loads(line)
        if e["type"] == type_:
            return e
    raise AssertionError(f"no {type_} event in {run_dir}")


def verify(shim, target, *extra):
    return shim("verify", *extra, target)


@pytest.fixture
def finished_run(shim, bundle, cid, workspace):
    with_workspace(bundle, workspace, WORKLOAD)
    r = shim("run", "--bundle", bundle.path, cid)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"from-script\n"
    return run_dir_of(shim, cid)


def test_record_matches_what_the_workload_did(shim, bundle, finished_run, cid):
    rd = finished_run
    r = verify(shim, cid)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout == b"VERIFIED\n"
    # The change set is exactly what the script did to the workspace.
    changes = [json.loads(l) for l in open(os.path.join(rd, "changes.ndjson"))]
    got = {(c["tree"], c["path"], c["change"]) for c in changes}
    # Content hashes before and after, where a regular file was.
    by_path = {c["path"]: c for c in changes}
    sha = lambda b: hashlib.sha256(b).hexdigest()  # noqa: E731
    assert by_path["modify.txt"]["old_sha256"] == sha(b"modify\n")
    assert by_path["modify.txt"]["new_sha256"] == sha(b"modify\nmore\n")
    assert by_path["delete.txt"]["old_sha256"] == sha(b"delete\n") and "new_sha256" not in by_path["delete.txt"]
    assert by_path["added.txt"]["new_sha256"] == sha(b"new\n") and "old_sha256" not in by_path["added.txt"]
    assert "new_sha256" not in by_path["newdir"]
    assert got == {("/workspace", "added.txt", "added"), ("/workspace", "modify.txt", "modified"),
                   ("/workspace", "delete.txt", "removed"), ("/workspace", "newdir", "added"),
                   ("/workspace", "newdir/tool.sh", "added")}, got
    # Every binary it executed is there, with the binary's real hash.
    busybox = hashlib.sha256(open(os.path.join(bundle.rootfs, "bin", "busybox"), "rb").read()).hexdigest()
    events = [json.loads(l) for l in open(os.path.join(rd, "events.ndjson"))]
    execs = [e["data"] for e in events if e["type"] == "process.exec"]
    paths = [e["path"] for e in execs]
    for p in ("/workspace/newdir/tool.sh", "/bin/true", "/bin/date", "/bin/sleep"):
        assert p in paths, paths
    for e in execs:
        if e["path"] in ("/bin/true", "/bin/date", "/bin/sleep", "/bin/sh"):
            assert e["sha256"] == busybox
    script = [e for e in execs if e["path"] == "/workspace/newdir/tool.sh"][0]
    assert script["sha256"] == hashlib.sha256(b"#!/bin/sh\necho from-script\n").hexdigest()
    # The interpreter is the file the kernel opened for `#!/bin/sh` (a symlink to busybox).
    assert script["interpreter"]["path"] == "/bin/busybox"
    assert script["interpreter"]["sha256"] == busybox
    assert [f["sha256"] for f in script["files"]] == [script["sha256"], busybox], script
    types = [e["type"] for e in events]
    assert types[0] == "run.created" and types[-1] == "run.finalized"
    for t in ("fs.root", "run.started", "run.exit", "fs.changes"):
        assert t in types
    exit_ev = [e for e in events if e["type"] == "run.exit"][0]["data"]
    assert exit_ev["code"] == 0
    # runs show tells a person the same story.
    show = shim("runs", "show", cid, check=True).stdout.decode()
    assert "+ /workspace:added.txt" in show and "- /workspace:delete.txt" in show
    assert "/bin/date" in show and "VERIFIED" in show
    acct = json.loads(shim("runs", "show", "--json", cid, check=True).stdout)
    assert acct["verified"] is True
    assert len(acct["processes"]) == len(execs)
    lst = json.loads(shim("runs", "list", "--json", check=True).stdout)
    assert [x["container_id"] for x in lst] == [cid]


def test_independent_verifier_and_signature(shim, finished_run):
    audit = shim.extra[1]
    pub = open(os.path.join(audit, "keys", "signing.pem.pub"), "rb").read()
    problems, events, pred = formats_verifier.verify(finished_run, pub, os.path.join(audit, "ledger.ndjson"))
    assert problems == []
    assert pred["signer"]["keyid"] == formats_verifier.keyid(pub)
    assert pred["exit"]["code"] == 0
    assert len(events) == pred["event_log"]["event_count"]
    # v2: the subjects are the record files, with their plain SHA-256.
    st = json.loads(base64.b64decode(json.load(open(os.path.join(finished_run, "attestation.intoto.json")))["payload"]))
    assert st["predicateType"] == "https://agentshim.dev/attestation/run/v2"
    assert {s["name"]: s["digest"]["sha256"] for s in st["subject"]} == {
        f: hashlib.sha256(open(os.path.join(finished_run, f), "rb").read()).hexdigest()
        for f in ("events.ndjson", "changes.ndjson", "session.json")}
    import jsonschema
    from conftest import REPO
    jsonschema.validate(st, json.load(open(os.path.join(REPO, "configs", "attestation", "predicate-v2.schema.json"))))
    # And the same verifier rejects a signature from another key.
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.hazmat.primitives import serialization
    other = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    problems, _, _ = formats_verifier.verify(finished_run, other)
    assert any("signature" in p for p in problems)


def test_verify_json_pinning_and_usage_errors(shim, finished_run, cid, tmp_path):
    audit = shim.extra[1]
    r = verify(shim, cid, "--json", "--public-key", os.path.join(audit, "keys", "signing.pem.pub"))
    assert r.returncode == 0
    j = json.loads(r.stdout)
    assert j["verified"] is True and j["mismatches"] == []
    shim("keygen", "--out", str(tmp_path / "other"), check=True)
    r = verify(shim, cid, "--public-key", str(tmp_path / "other" / "signing.pem.pub"))
    assert r.returncode == 1
    assert b"MISMATCH" in r.stdout
    r = verify(shim, "no-such-run")
    assert r.returncode == 2
    r = verify(shim, cid, "--public-key", "/no/such/key.pub")
    assert r.returncode == 2
    # --check-path: the workspace as it is now equals the recorded post-run root...
    r = verify(shim, cid, "--check-path", first_event(finished_run, "fs.root")["data"]["trees"][1]["path"])
    assert r.returncode == 0, r.stdout
    # ...until someone changes it after the run.
    ws = [t for t in first_event(finished_run, "fs.root")["data"]["trees"]
          if t["name"] == "/workspace"][0]["path"]
    with open(os.path.join(ws, "added.txt"), "a") as f:
        f.write("tampered later\n")
    r = verify(shim, cid, "--check-path", ws)
    assert r.returncode == 1
    assert b"--check-path" in r.stdout


def test_tamper_matrix(shim, finished_run, cid):
    """Every mutation of every file of the record must make verify fail."""
    audit = shim.extra[1]
    files = [os.path.join(finished_run, f) for f in
             ("events.ndjson", "session.json", "changes.ndjson", "attestation.intoto.json",
              "attestation.sigstore.json")]
    files.append(os.path.join(audit, "ledger.ndjson"))
    assert verify(shim, finished_run).returncode == 0
    tried = detected = 0
    missed = []

    def attempt(path, data, what):
        nonlocal tried, detected
        orig = open(path, "rb").read()
        with open(path, "wb") as f:
            f.write(data)
        try:
            r = verify(shim, finished_run)
        finally:
            with open(path, "wb") as f:
                f.write(orig)
        tried += 1
        if r.returncode == 1 and b"MISMATCH" in r.stdout:
            detected += 1
        else:
            missed.append(f"{os.path.basename(path)}: {what} (exit {r.returncode})")

    for path in files:
        orig = open(path, "rb").read()
        step = max(1, len(orig) // 120)
        for i in range(0, len(orig), step):
            b = bytearray(orig)
            b[i] ^= 0x01
            attempt(path, bytes(b), f"flip byte {i}")
        lines = orig.split(b"\n")[:-1]
        if len(lines) >= 2:
            attempt(path, b"\n".join(lines[1:]) + b"\n", "delete first line")
            attempt(path, b"\n".join(lines[:-1]) + b"\n", "delete last line")
            sw = list(lines)
            sw[0], sw[1] = sw[1], sw[0]
            attempt(path, b"\n".join(sw) + b"\n", "swap lines 1 and 2")
        attempt(path, orig[: len(orig) // 2], "truncate to half")
        attempt(path, b"", "empty")
    # Replace the embedded public key with an attacker's, re-signed by that key.
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.hazmat.primitives import serialization
    att = os.path.join(finished_run, "attestation.intoto.json")
    env = json.loads(open(att, "rb").read())
    st = json.loads(base64.b64decode(env["payload"]))
    evil = ed25519.Ed25519PrivateKey.generate()
    evil_pub = evil.public_key().public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)
    st["predicate"]["signer"]["public_key"] = evil_pub.decode()
    st["predicate"]["signer"]["keyid"] = formats_verifier.keyid(evil_pub)
    payload = formats_verifier.canonical(st).encode()
    env["payload"] = base64.b64encode(payload).decode()
    env["signatures"] = [{"keyid": formats_verifier.keyid(evil_pub),
                          "sig": base64.b64encode(evil.sign(formats_verifier.pae(env["payloadType"], payload))).decode()}]
    attempt(att, json.dumps(env, indent=2).encode() + b"\n", "embedded key replaced and re-signed")
    print(f"tamper matrix: {detected}/{tried} mutations detected")
    assert missed == [], missed
    assert verify(shim, finished_run).returncode == 0


def test_supervisor_sigkill_leaves_a_verifiable_prefix(shim, bundle, cid, workspace):
    with_workspace(bundle, workspace, "echo x > /workspace/a; /bin/true; sleep 100")
    pidfile = os.path.join(bundle.path, "sup.pid")
    shim.ids.add(cid)
    shim("run", "--detach", "--pid-file", pidfile, "--bundle", bundle.path, cid, check=True)
    wait_status(shim, cid, "running")
    rd = run_dir_of(shim, cid)
    deadline = time.time() + 10
    while time.time() < deadline and b"/bin/sleep" not in open(os.path.join(rd, "events.ndjson"), "rb").read():
        time.sleep(0.05)
    # The supervisor itself (the sentinel's only child) dies; killing the
    # sentinel instead ends the run with a complete record
    # (test_record_survives.py).
    sentinel = int(open(pidfile).read())
    with open(f"/proc/{sentinel}/task/{sentinel}/children") as f:
        supervisor = int(f.read().split()[0])
    os.kill(supervisor, signal.SIGKILL)
    wait_status(shim, cid, "stopped")
    r = verify(shim, cid)
    assert r.returncode == 1
    out = r.stdout.decode()
    assert "incomplete run" in out and "verifies up to seq" in out, out
    # What was written is intact: the independent checker agrees line by line.
    problems, events, _, _ = formats_verifier.check_events(os.path.join(rd, "events.ndjson"))
    assert problems == []
    assert any(e["type"] == "process.exec" and e["data"]["path"] == "/bin/true" for e in events)


@pytest.fixture
def small_disk(tmp_path):
    """A 96 KiB tmpfs: a real ENOSPC for the audit directory."""
    audit = tmp_path / "small-audit"
    audit.mkdir()
    if run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(audit)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs to simulate a full disk (needs root)")
    yield str(audit)
    run(["umount", "-l", str(audit)])


def test_disk_full_stops_the_container_and_is_on_the_record(shim, bundle, cid, small_disk):
    shim.extra[1] = small_disk
    shim.ids.add(cid)
    # Every /bin/true is an event; the log outgrows 96 KiB quickly.
    r = shim("run", "--bundle", bundle.sh("i=0; while [ $i -lt 3000 ]; do /bin/true; i=$((i+1)); done").path, cid,
             timeout=120)
    assert r.returncode == 137, (r.returncode, r.stderr)  # policy: stop the container
    r = verify(shim, cid)
    assert r.returncode == 1
    assert b"MISMATCH" in r.stdout
    assert b"incomplete" in r.stdout or b"could not be written" in r.stdout, r.stdout


def write_policy(tmp_path, audit):
    p = tmp_path / "policy.json"
    p.write_text(json.dumps({"audit": audit}))
    return str(p)


def test_policy_ecdsa_key_and_strict_mode(shim, bundle_factory, tmp_path):
    pol = write_policy(tmp_path, {"key_type": "ecdsa-p256", "strict": True})
    shim.extra = ["--policy", pol] + shim.extra
    for cid in ("strict1", "strict2"):
        shim.ids.add(cid)
        r = shim("run", "--bundle", bundle_factory().args("/bin/true").path, cid)
        assert r.returncode == 0, r.stderr
    audit = shim.extra[3]
    pub = open(os.path.join(audit, "keys", "signing.pem.pub"), "rb").read()
    assert b"BEGIN PUBLIC KEY" in pub
    for cid in ("strict1", "strict2"):
        rd = run_dir_of_audit(audit, cid)
        problems, events, pred = formats_verifier.verify(rd, pub, os.path.join(audit, "ledger.ndjson"))
        assert problems == []
        assert pred["signer"]["algorithm"] == "ecdsa-p256-sha256"
        roots = [e for e in events if e["type"] == "fs.root"]
        # strict: no hash cache, every file hashed every time
        assert all(t["cache_hits"] == 0 for e in roots for t in e["data"]["trees"])
        assert shim("verify", cid).returncode == 0


def run_dir_of_audit(audit, cid):
    for d in glob.glob(os.path.join(audit, "runs", "*")):
        if json.loads(open(os.path.join(d, "events.ndjson")).readline())["data"]["container_id"] == cid:
            return d
    raise AssertionError(f"no run for {cid}")


def test_bad_policy_is_a_clear_error(shim, bundle, cid, tmp_path):
    pol = write_policy(tmp_path, {"on_log_failure": "shrug"})
    r = shim("--policy", pol, "run", "--bundle", bundle.args("true").path, cid)
    assert r.returncode == 1
    assert b"audit.on_log_failure" in r.stderr and pol.encode() in r.stderr


def test_log_failure_policy_continue(shim, bundle, cid, tmp_path, small_disk):
    pol = write_policy(tmp_path, {"on_log_failure": "continue"})
    shim.extra = ["--policy", pol, "--audit-dir", small_disk]
    shim.ids.add(cid)
    r = shim("run", "--bundle", bundle.sh("i=0; while [ $i -lt 3000 ]; do /bin/true; i=$((i+1)); done; echo finished")
             .path, cid, timeout=180)
    assert r.returncode == 0 and r.stdout == b"finished\n"  # the container was not stopped
    r = shim("verify", cid)
    assert r.returncode == 1 and b"incomplete" in r.stdout


def fs_roots(run_dir):
    """{phase: {tree name: tree}} from the fs.root events."""
    out = {}
    for line in open(os.path.join(run_dir, "events.ndjson")):
        e = json.loads(line)
        if e["type"] == "fs.root":
            out.setdefault(e["data"]["phase"], {}).update({t["name"]: t for t in e["data"]["trees"]})
    return out


def test_readonly_root_is_not_walked_after_the_run(shim, bundle, cid, workspace):
    """A read-only root (the default policy forces one) cannot be changed by
    the container: its after root is its before root without a walk, the
    reason is in the record, and a writable volume is still walked. The
    container really cannot write it (nor remount it writable)."""
    with_workspace(bundle, workspace, "echo new > /workspace/added.txt\n"
                   "touch /rootfile 2>/dev/null && echo WROTE-ROOT\n"
                   "mount -o remount,rw / 2>/dev/null && echo REMOUNTED\n"
                   "touch /rootfile 2>/dev/null && echo WROTE-ROOT\n"
                   "true\n")
    r = shim("run", "--bundle", bundle.path, cid)
    assert r.returncode == 0, r.stderr
    assert b"WROTE-ROOT" not in r.stdout and b"REMOUNTED" not in r.stdout, r.stdout
    assert not os.path.exists(os.path.join(bundle.rootfs, "rootfile"))
    rd = run_dir_of(shim, cid)
    assert verify(shim, cid).stdout == b"VERIFIED\n"
    roots = fs_roots(rd)
    before, after = roots["before"]["rootfs"], roots["after"]["rootfs"]
    assert after["walk"] == "skipped" and "read-only" in after["reason"], after
    assert after["root"] == before["root"] and after["bytes_hashed"] == 0
    assert before["walk"] == "concurrent" and before["entries"] > 10
    # The root is the one a walk of the tree gives now.
    assert verify(shim, cid, "--check-path", bundle.rootfs).returncode == 0
    # The writable volume: walked both times, its change recorded.
    assert "walk" not in roots["after"]["/workspace"]
    assert roots["after"]["/workspace"]["root"] != roots["before"]["/workspace"]["root"]
    changes = [json.loads(l) for l in open(os.path.join(rd, "changes.ndjson"))]
    assert {(c["tree"], c["path"], c["change"]) for c in changes} == {("/workspace", "added.txt", "added")}


def test_writable_root_is_walked_both_times(shim, bundle, cid, tmp_path):
    pol = tmp_path / "policy.json"
    pol.write_text(json.dumps({"filesystem": {"readonly_root": False}}))
    shim.extra = ["--policy", str(pol)] + shim.extra
    bundle.config["root"]["readonly"] = False
    bundle.sh("echo x > /rootfile")
    r = shim("run", "--bundle", bundle.path, cid)
    assert r.returncode == 0, r.stderr
    audit = shim.extra[3]
    rd = run_dir_of_audit(audit, cid)
    assert shim("verify", cid).stdout == b"VERIFIED\n"
    roots = fs_roots(rd)
    assert "walk" not in roots["before"]["rootfs"] and "walk" not in roots["after"]["rootfs"]
    assert roots["after"]["rootfs"]["root"] != roots["before"]["rootfs"]["root"]
    changes = [json.loads(l) for l in open(os.path.join(rd, "changes.ndjson"))]
    assert ("rootfs", "rootfile", "added") in {(c["tree"], c["path"], c["change"]) for c in changes}


def test_readonly_root_with_a_writable_mount_into_it_is_walked(shim, bundle, cid):
    """A writable bind mount whose source is inside the root writes the root:
    no skip, and the write is in the change set."""
    src = os.path.join(bundle.rootfs, "var", "scratch")
    os.makedirs(src, exist_ok=True)
    bundle.config["mounts"].append({"destination": "/scratch", "type": "bind", "source": src,
                                    "options": ["rbind", "rw"]})
    bundle.sh("echo x > /scratch/written")
    r = shim("run", "--bundle", bundle.path, cid)
    assert r.returncode == 0, r.stderr
    rd = run_dir_of(shim, cid)
    assert verify(shim, cid).stdout == b"VERIFIED\n"
    roots = fs_roots(rd)
    assert "walk" not in roots["after"]["rootfs"], roots["after"]["rootfs"]
    changes = [json.loads(l) for l in open(os.path.join(rd, "changes.ndjson"))]
    got = {(c["tree"], c["path"], c["change"]) for c in changes}
    assert ("rootfs", "var/scratch/written", "added") in got, got
