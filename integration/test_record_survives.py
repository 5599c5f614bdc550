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

import pytest

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


def host_can_lower_oom_score_adj():
    for line in open("/proc/self/status"):
        if line.startswith("CapBnd:"):
            return bool(int(line.split()[1], 16) & (1 << 24))  # CAP_SYS_RESOURCE
    return False


def oom_score_adj(pid):
    with open(f"/proc/{pid}/oom_score_adj") as f:
        return int(f.read())


def memory_events_oom_kill(cgroup_file_text):
    """oom_kill from the container's memory.events (v2) or memory.oom_control (v1)."""
    for line in cgroup_file_text.splitlines():
        hid, ctrls, path = line.split(":", 2)
        if ctrls == "" and os.path.exists(f"/sys/fs/cgroup{path}/memory.events"):
            f = f"/sys/fs/cgroup{path}/memory.events"
        elif "memory" in ctrls.split(","):
            f = f"/sys/fs/cgroup/memory{path}/memory.oom_control"
        else:
            continue
        if os.path.exists(f):
            for l in open(f):
                k, v = l.split()
                if k == "oom_kill":
                    return int(v)
    return 0


@pytest.mark.parametrize("can_lower", [True, False], ids=["root", "no-cap-sys-resource"])
def test_the_containers_own_oom_never_loses_the_record(shim, bundle, cid, tmp_path, can_lower):
    """The attack: fill the memory limit with tmpfs pages (charged to the
    container's cgroup, owned by no process) so every process of the
    container is smaller than the sentinel, and let the OOM killer choose.
    The recorder (the supervisor) is never in the container's cgroup. As
    root the sentinel is OOM_SCORE_ADJ_MIN: the killer takes the container's
    writers and the sentinel lives. Where lowering is refused (no
    CAP_SYS_RESOURCE in the bounding set, as on this lab's machines), the
    sentinel may be chosen: the container goes with it and the record still
    finalizes and verifies, saying "sentinel lost" and counting the OOM
    kills."""
    if can_lower and not host_can_lower_oom_score_adj():
        pytest.skip("this host's capability bounding set lacks CAP_SYS_RESOURCE, so no process here may lower "
                    "oom_score_adj (the no-cap-sys-resource case covers what then happens)")
    bundle.config["linux"].setdefault("resources", {})["memory"] = {"limit": 32 << 20, "swap": 32 << 20}
    bundle.config["mounts"].append({"destination": "/fill", "type": "tmpfs", "source": "tmpfs",
                                    "options": ["nosuid", "nodev", "size=64m"]})
    script = ("i=0; while dd if=/dev/zero of=/fill/f$i bs=1M count=1 2>/dev/null; do i=$((i+1)); done; "
              "exec sleep 600")
    if not can_lower:
        wrapper = tmp_path / "agentshim-no-sys-resource"
        wrapper.write_text("#!/bin/sh\nexec /usr/bin/setpriv --inh-caps=-sys_resource --bounding-set=-sys_resource "
                           f'"{shim.binary}" "$@"\n')
        wrapper.chmod(0o755)
        shim.binary = str(wrapper)
    sentinel = start(shim, bundle, cid, tmp_path, script)
    assert (oom_score_adj(sentinel) == -1000) == can_lower
    cg = open(f"/proc/{sentinel}/cgroup").read()
    supervisors = [int(p) for p in open(f"/proc/{sentinel}/task/{sentinel}/children").read().split()]
    assert len(supervisors) == 1 and open(f"/proc/{supervisors[0]}/cgroup").read() != cg
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if shim.json("state", cid)["status"] == "stopped" or memory_events_oom_kill(cg) > 0:
            break
        time.sleep(0.2)
    if can_lower:
        time.sleep(1)  # let the killer go on: it must still not choose the sentinel
        assert os.path.exists(f"/proc/{sentinel}") and shim.json("state", cid)["status"] == "running"
        shim("kill", cid, "KILL")
    audit = str(tmp_path / "audit")
    wait_records(audit)
    run_id, evs = run_events(audit, cid)
    types = [e["type"] for e in evs]
    assert types[-1] == "run.finalized", types
    exit_ev = next(e for e in evs if e["type"] == "run.exit")
    assert exit_ev["data"]["oom_kills"] > 0, exit_ev
    if "run.sentinel_lost" in types:
        assert exit_ev["data"]["reason"] == "sentinel lost", exit_ev
    r = shim("verify", cid)
    assert r.returncode == 0 and b"VERIFIED" in r.stdout, (r.stdout, r.stderr)


def test_an_exec_storm_cannot_grow_the_record_without_bound(shim, bundle, cid, tmp_path):
    """The attack: exec as fast as possible with 64 KiB of argv each (the
    event log grew ~50 MB/s without a cap). With audit.max_event_log_bytes the
    log stays near the quota, the dropped events are counted where they were
    dropped (log.gap, with the reason), the run's own events are all there,
    and the record verifies as far as it goes and says it is incomplete
    and why."""
    pol = tmp_path / "policy.json"
    pol.write_text(json.dumps({"audit": {"max_event_log_bytes": 256 << 10}}))
    bundle.sh('a=$(head -c 65536 /dev/zero | tr "\\0" A); i=0; '
              'while [ $i -lt 200 ]; do /bin/true "$a"; i=$((i+1)); done; echo done')
    shim.ids.add(cid)
    r = shim("--policy", str(pol), "run", "--bundle", bundle.path, cid, timeout=120)
    assert r.returncode == 0 and r.stdout == b"done\n", r.stderr
    audit = str(tmp_path / "audit")
    wait_records(audit)
    run_id, evs = run_events(audit, cid)
    size = os.path.getsize(os.path.join(audit, "runs", run_id, "events.ndjson"))
    assert size < (256 << 10) + (128 << 10), size
    types = [e["type"] for e in evs]
    gaps = [e for e in evs if e["type"] == "log.gap"]
    assert gaps and "audit.max_event_log_bytes" in gaps[0]["data"]["reason"], gaps
    for t in ("run.created", "run.started", "run.exit", "fs.changes", "run.finalized"):
        assert t in types, (t, types)
    session = json.load(open(os.path.join(audit, "runs", run_id, "session.json")))
    assert session["complete"] is False and session["events_lost"] == sum(g["data"]["lost"] for g in gaps)
    assert any("max_event_log_bytes" in r for r in session["incomplete_reasons"]), session
    v = shim("verify", cid)
    assert v.returncode == 1 and b"incomplete run" in v.stdout and b"max_event_log_bytes" in v.stdout, v.stdout


def test_a_huge_sparse_program_is_named_not_read(shim, bundle, cid, tmp_path):
    """The attack: exec a program padded to 1 TiB with a hole (a sparse
    file costs nothing to make). Its hash would pin a supervisor CPU for
    hours and hold the exec; past audit.max_file_bytes it is recorded with
    its size and an `error` saying why it was not hashed, and the run ends
    at once."""
    import shutil
    os.mkdir(os.path.join(bundle.rootfs, "huge"))
    big = os.path.join(bundle.rootfs, "huge", "echo")  # busybox runs the applet its name says
    shutil.copy(os.path.join(bundle.rootfs, "bin", "busybox"), big)
    os.truncate(big, 1 << 40)
    pol = tmp_path / "policy.json"
    pol.write_text(json.dumps({"audit": {"max_file_bytes": 64 << 20}}))
    bundle.sh("/huge/echo ran-big")
    shim.ids.add(cid)
    t0 = time.monotonic()
    r = shim("--policy", str(pol), "run", "--bundle", bundle.path, cid, timeout=120)
    assert r.returncode == 0 and r.stdout == b"ran-big\n", r.stderr
    audit = str(tmp_path / "audit")
    wait_records(audit, timeout=60)
    assert time.monotonic() - t0 < 60
    run_id, evs = run_events(audit, cid)
    execs = [e["data"] for e in evs if e["type"] == "process.exec" and "huge" in e["data"].get("path", "")]
    assert execs, [e["data"].get("path") for e in evs if e["type"] == "process.exec"]
    assert "sha256" not in execs[0] and "max_file_bytes" in json.dumps(execs[0]), execs[0]
    v = shim("verify", cid)
    assert v.returncode == 0 and b"VERIFIED" in v.stdout, v.stdout
