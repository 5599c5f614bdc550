"""Records that survive what a client or the container does to the processes
around the container (issue 15 item 4): the --pid-file process (the
sentinel) killed while the container runs — by a client, or by the
container's own OOM killer, since the sentinel sits in the container's memory
cgroup — takes the container with it, as it always did, and the supervisor
still finishes a record that verifies and says why the container ended."""
import json
import os
import signal
import time

from conftest import wait_records


def start(shim, bundle, cid, tmp_path, script):
    bundle.sh(script)
    pidfile = str(tmp_path / "pid")
    shim.ids.add(cid)
    r = shim("create", "--bundle", bundle.path, "--pid-file", pidfile, cid)
    assert r.returncode == 0, r.stderr
    assert shim("start", cid).returncode == 0
    with open(pidfile) as f:
        return int(f.read())


def run_events(audit, cid):
    for d in os.listdir(os.path.join(audit, "runs")):
        p = os.path.join(audit, "runs", d, "events.ndjson")
        with open(p) as f:
            evs = [json.loads(l) for l in f]
        if evs and evs[0]["data"].get("container_id") == cid:
            return d, evs
    raise AssertionError(f"no record of {cid}")


def test_killed_sentinel_still_leaves_a_verified_record(shim, bundle, cid, tmp_path):
    sentinel = start(shim, bundle, cid, tmp_path, "echo started; exec sleep 600")
    init = shim.json("state", cid)["pid"]
    os.kill(sentinel, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while os.path.exists(f"/proc/{init}") and time.monotonic() < deadline:
        with open(f"/proc/{init}/stat") as f:
            if f.read().split(") ")[1][0] == "Z":
                break
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{init}") or open(f"/proc/{init}/stat").read().split(") ")[1][0] == "Z"
    assert shim.json("state", cid)["status"] == "stopped"
    audit = shim.extra[shim.extra.index("--audit-dir") + 1]
    wait_records(audit)
    run_id, evs = run_events(audit, cid)
    types = [e["type"] for e in evs]
    assert "run.sentinel_lost" in types and types[-1] == "run.finalized", types
    exit_ev = next(e for e in evs if e["type"] == "run.exit")
    assert exit_ev["data"]["reason"] == "sentinel lost" and exit_ev["data"]["signal"] == "SIGKILL", exit_ev
    r = shim("verify", cid)
    assert r.returncode == 0 and b"VERIFIED" in r.stdout, (r.stdout, r.stderr)
    shim("delete", "--force", cid)
    shim.ids.discard(cid)
