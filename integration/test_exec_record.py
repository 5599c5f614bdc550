"""Exec sessions are recorded like the init (issue 15 item 2): every process
`agentshim exec` starts, and everything it spawns, is a process.exec event
with the real binary's SHA-256, tagged with the session id that its
caller.exec event carries."""
import hashlib
import json
import os
from urllib.parse import unquote

import formats_verifier
from test_lifecycle import wait_status
from test_record import run_dir_of, verify


def events_of(rd):
    return [json.loads(l) for l in open(os.path.join(rd, "events.ndjson"))]


def test_exec_sessions_are_recorded(shim, bundle, cid):
    bundle.sh("sleep 60")
    shim.ids.add(cid)
    shim("run", "--detach", "--bundle", bundle.path, cid, check=True)
    wait_status(shim, cid, "running")
    r1 = shim("exec", cid, "sh", "-c", "/bin/true; /bin/date > /dev/null")
    assert r1.returncode == 0, r1.stderr
    # A child of the exec'd process forks and execs: recorded too.
    r2 = shim("exec", cid, "sh", "-c", "/bin/sh -c '/bin/uname > /dev/null' & wait")
    assert r2.returncode == 0, r2.stderr
    shim("kill", cid, "KILL", check=True)
    wait_status(shim, cid, "stopped")
    shim("delete", cid, check=True)
    rd = run_dir_of(shim, cid)
    v = verify(shim, cid)
    assert v.returncode == 0 and v.stdout == b"VERIFIED\n", v.stdout + v.stderr

    busybox = hashlib.sha256(open(os.path.join(bundle.rootfs, "bin", "busybox"), "rb").read()).hexdigest()
    events = events_of(rd)
    callers = [e["data"] for e in events if e["type"] == "caller.exec"]
    assert len(callers) == 2, callers
    s1, s2 = callers[0]["session"], callers[1]["session"]
    assert s1 != s2 and len(s1) == 16 and all(c in "0123456789abcdef" for c in s1 + s2)
    execs = [e["data"] for e in events if e["type"] == "process.exec"]
    # The init's own processes carry no session.
    assert any("session" not in e and e["path"] == "/bin/sh" for e in execs), execs
    by = {s: [e for e in execs if e.get("session") == s] for s in (s1, s2)}
    assert [e["path"] for e in by[s1]] == ["/bin/sh", "/bin/true", "/bin/date"], by[s1]
    assert [unquote(a) for a in by[s1][0]["argv"]] == ["sh", "-c", "/bin/true; /bin/date > /dev/null"]
    assert "/bin/uname" in [e["path"] for e in by[s2]], by[s2]
    assert len([e for e in by[s2] if e["path"] == "/bin/sh"]) == 2, by[s2]
    for e in by[s1] + by[s2]:
        assert e["sha256"] == busybox, e
    assert callers[0]["pid"] == by[s1][0]["pid"]

    audit = shim.extra[1]
    pub = open(os.path.join(audit, "keys", "signing.pem.pub"), "rb").read()
    problems, _, _ = formats_verifier.verify(rd, pub, os.path.join(audit, "ledger.ndjson"))
    assert problems == []
