"""Reading exec sessions out of a finished run's record (issue 15 item 2),
shared by the client suites: every `docker exec`, `podman exec`, `ctr task
exec` and CRI ExecSync is a caller.exec with a `session`, and the processes
it ran are process.exec events tagged with that session."""
import json
import os
from urllib.parse import unquote

from conftest import AGENTSHIM, run, wait_records


def container_of(rd):
    """The container id of a run directory ("" when its log has no first
    event: a create that failed early)."""
    try:
        return json.loads(open(os.path.join(rd, "events.ndjson")).readline())["data"]["container_id"]
    except (OSError, ValueError, KeyError):
        return ""


def run_dir(audit, cid, timeout=60):
    wait_records(audit, timeout=timeout)
    runs = os.path.join(audit, "runs")
    rd = [os.path.join(runs, d) for d in os.listdir(runs) if container_of(os.path.join(runs, d)) == cid]
    assert len(rd) == 1, (cid, rd)
    return rd[0]


def sessions(audit, cid):
    """[(caller.exec data, [process.exec data of its session]), ...] in
    order, the init's process.exec events, and the verify result."""
    rd = run_dir(audit, cid)
    events = [json.loads(l) for l in open(os.path.join(rd, "events.ndjson"))]
    callers = [e["data"] for e in events if e["type"] == "caller.exec"]
    execs = [e["data"] for e in events if e["type"] == "process.exec"]
    out = [(c, [e for e in execs if e.get("session") == c["session"]]) for c in callers]
    init = [e for e in execs if "session" not in e]
    v = run([AGENTSHIM, "--audit-dir", audit, "verify", rd])
    return out, init, v


def argv(e):
    return [unquote(a) for a in e["argv"]]


def assert_session_ran(session, *argvs, sha256=None):
    """The session's process.exec events start with these argvs, each with a
    hash (equal to `sha256` when given)."""
    caller, execs = session
    assert len(caller["session"]) == 16, caller
    got = [argv(e) for e in execs[:len(argvs)]]
    assert got == [list(a) for a in argvs], [argv(e) for e in execs]
    for e in execs:
        assert e.get("sha256"), e
        if sha256:
            assert e["sha256"] == sha256, e


def verified_entry_events(audit, cid):
    """The run of container `cid`: checked to verify, and its
    file.created / file.removed events as {(type, tree, path)} (the client
    suites' names-on-volumes tests, issue 15 item 3)."""
    rd = run_dir(audit, cid)
    v = run([AGENTSHIM, "--audit-dir", audit, "verify", rd])
    assert v.returncode == 0 and v.stdout == b"VERIFIED\n", (v.stdout, v.stderr)
    with open(os.path.join(rd, "events.ndjson")) as f:
        evs = [json.loads(line) for line in f]
    return {(e["type"], e["data"].get("tree"), e["data"].get("path")) for e in evs
            if e["type"] in ("file.created", "file.removed")}
