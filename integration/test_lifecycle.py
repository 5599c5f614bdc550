"""The runc command contract: lifecycle, JSON shapes, exit codes, errors.

Where it makes sense the same scenario runs under runc and agentshim and the
results are compared, so "same as runc" is checked, not assumed.
"""
import json
import os
import signal
import subprocess
import time

import pytest

from conftest import UNIFIED, run


def wait_status(rt, cid, want, timeout=10):
    deadline = time.time() + timeout
    st = None
    while time.time() < deadline:
        r = rt("state", cid)
        if r.returncode == 0:
            st = json.loads(r.stdout)
            if st["status"] == want:
                return st
        time.sleep(0.05)
    raise AssertionError(f"{cid} never reached {want}; last state {st}")


@pytest.mark.parametrize("runtime", ["shim", "runc"])
def test_run_propagates_exit_code(request, runtime, bundle, cid):
    rt = request.getfixturevalue(runtime)
    rt.ids.add(cid)
    r = rt("run", "--bundle", bundle.sh("echo out; echo err >&2; exit 3").path, cid)
    assert r.returncode == 3
    assert r.stdout == b"out\n"
    assert b"err" in r.stderr


@pytest.mark.parametrize("runtime", ["shim", "runc"])
def test_run_killed_by_signal_exits_128_plus_n(request, runtime, bundle, cid):
    rt = request.getfixturevalue(runtime)
    rt.ids.add(cid)
    p = subprocess.Popen([rt.binary, "--root", rt.root, *rt.extra, "run", "--bundle",
                          bundle.args("sleep", "100").path, cid],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_status(rt, cid, "running")
        rt("kill", cid, "KILL", check=True)
        assert p.wait(timeout=30) == 137
    finally:
        p.kill()
        p.wait()


def test_lifecycle_matches_runc(shim, runc, bundle_factory):
    """create → created → start → running → kill → stopped → delete, in both runtimes."""
    seen = {}
    for name, rt in (("runc", runc), ("shim", shim)):
        b = bundle_factory().sh("trap 'exit 0' TERM; while true; do sleep 0.1; done")
        cid = f"life-{name}"
        rt.ids.add(cid)
        pidfile = os.path.join(b.path, "pid")
        rt("create", "--bundle", b.path, "--pid-file", pidfile, cid, check=True)
        st = rt.json("state", cid)
        assert st["status"] == "created"
        assert st["pid"] > 0 and os.path.exists(f"/proc/{st['pid']}")
        assert os.path.exists(pidfile) and int(open(pidfile).read()) > 0
        rt("start", cid, check=True)
        st2 = wait_status(rt, cid, "running")
        assert st2["pid"] == st["pid"]
        listing = rt.json("list", "--format", "json")
        assert [c["id"] for c in listing] == [cid]
        assert listing[0]["status"] == "running"
        rt("kill", cid, "TERM", check=True)
        wait_status(rt, cid, "stopped")
        # kill on a stopped container fails like runc's ("container not running").
        r = rt("kill", cid, "KILL")
        assert r.returncode != 0
        rt("delete", cid, check=True)
        rt.ids.discard(cid)
        r = rt("state", cid)
        assert r.returncode == 1
        seen[name] = (set(st.keys()), set(listing[0].keys()))
    assert seen["shim"][0] >= seen["runc"][0] - {"rootless"}, "state JSON lacks keys runc has"
    assert seen["shim"][1] >= seen["runc"][1], "list JSON lacks keys runc has"


def test_state_survives_cli_and_supervisor_keeps_running(shim, bundle, cid):
    b = bundle.sh("sleep 30")
    shim.ids.add(cid)
    shim("run", "--detach", "--bundle", b.path, cid, check=True)
    st = wait_status(shim, cid, "running")
    # The init is a child of the supervisor, not of the CLI that exited.
    ppid = int(open(f"/proc/{st['pid']}/stat").read().rsplit(")", 1)[1].split()[1])
    comm = open(f"/proc/{ppid}/comm").read().strip()
    assert comm.startswith("agentshim"), comm
    shim("delete", "--force", cid, check=True)
    shim.ids.discard(cid)
    assert not os.path.exists(f"/proc/{st['pid']}") or \
        open(f"/proc/{st['pid']}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"


def test_duplicate_id_and_unknown_id_errors(shim, bundle, cid):
    shim.ids.add(cid)
    shim("create", "--bundle", bundle.args("sleep", "10").path, cid, check=True)
    r = shim("create", "--bundle", bundle.path, cid)
    assert r.returncode == 1
    assert b"exists" in r.stderr
    r = shim("state", "no-such-container")
    assert r.returncode == 1
    assert b"no-such-container" in r.stderr
    r = shim("start", "no-such-container")
    assert r.returncode == 1


def test_malformed_config_names_the_problem(shim, bundle, cid):
    with open(bundle.config_path, "w") as f:
        f.write('{"ociVersion": "1.0.2", "process": {"args": "not-a-list"}, "root": {"path": "rootfs"}}')
    r = shim("run", "--bundle", bundle.path, cid)
    assert r.returncode == 1
    assert b"process.args" in r.stderr
    with open(bundle.config_path, "w") as f:
        f.write('{"ociVersion": ')
    r = shim("run", "--bundle", bundle.path, cid)
    assert r.returncode == 1
    assert b"config.json" in r.stderr
    # Nothing was left behind.
    assert not os.path.exists(os.path.join(shim.root, cid))


def test_missing_rootfs_is_an_error(shim, bundle, cid):
    bundle.config["root"]["path"] = "nope"
    bundle.save()
    r = shim("run", "--bundle", bundle.path, cid)
    assert r.returncode == 1
    assert b"nope" in r.stderr


def test_exec_exit_code_env_cwd_user(shim, bundle, cid):
    shim.ids.add(cid)
    shim("run", "--detach", "--bundle", bundle.args("sleep", "30").path, cid, check=True)
    r = shim("exec", "--env", "FOO=bar", "--cwd", "/tmp", "--user", "1000:1000", cid,
             "sh", "-c", "echo $FOO $(pwd) $(id -u):$(id -g); exit 5")
    assert r.returncode == 5, r.stderr
    assert r.stdout == b"bar /tmp 1000:1000\n"
    proc = {"args": ["sh", "-c", "echo from-process-json"], "cwd": "/", "env": ["PATH=/bin"],
            "user": {"uid": 0, "gid": 0}}
    pf = os.path.join(bundle.path, "process.json")
    with open(pf, "w") as f:
        json.dump(proc, f)
    r = shim("exec", "--process", pf, cid)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"from-process-json\n"
    r = shim("exec", cid, "/no/such/binary")
    assert r.returncode != 0
    assert b"/no/such/binary" in r.stderr


def test_exec_detach_writes_pid_file(shim, bundle, cid):
    shim.ids.add(cid)
    shim("run", "--detach", "--bundle", bundle.args("sleep", "30").path, cid, check=True)
    pidfile = os.path.join(bundle.path, "exec.pid")
    shim("exec", "--detach", "--pid-file", pidfile, cid, "sleep", "20", check=True)
    pid = int(open(pidfile).read())
    assert os.path.exists(f"/proc/{pid}")
    procs = shim.json("ps", "--format", "json", cid)
    assert pid in procs
    assert len(procs) == 2


def test_ps_table_and_json(shim, runc, bundle_factory):
    for rt, name in ((shim, "ps-shim"), (runc, "ps-runc")):
        b = bundle_factory().args("sleep", "30")
        rt.ids.add(name)
        rt("run", "--detach", "--bundle", b.path, name, check=True)
        pids = rt.json("ps", "--format", "json", name)
        assert isinstance(pids, list) and len(pids) == 1
        table = rt("ps", name, check=True).stdout.decode()
        assert table.splitlines()[0].split()[0] == "UID"
        assert "sleep" in table


def test_pause_resume(shim, bundle, cid):
    shim.ids.add(cid)
    shim("run", "--detach", "--bundle", bundle.sh("while true; do sleep 0.05; done").path, cid, check=True)
    wait_status(shim, cid, "running")
    shim("pause", cid, check=True)
    assert shim.json("state", cid)["status"] == "paused"
    st = shim.json("state", cid)
    stat = open(f"/proc/{st['pid']}/status").read()
    # A frozen task shows as stopped/sleeping in the freezer; the state is what counts.
    assert "State:" in stat
    r = shim("pause", cid)
    assert r.returncode == 1  # already paused
    shim("resume", cid, check=True)
    assert shim.json("state", cid)["status"] == "running"
    # delete --force works on a paused container too.
    shim("pause", cid, check=True)
    shim("delete", "--force", cid, check=True)
    shim.ids.discard(cid)


def test_kill_all_reaches_every_process(shim, bundle, cid):
    shim.ids.add(cid)
    b = bundle.sh("trap '' TERM; sleep 100 & sleep 100 & wait")
    b.config["process"]["args"] = ["sh", "-c", "sleep 100 & sleep 100 & wait"]
    # Without a new pid namespace --all must walk the cgroup.
    b.save()
    shim("run", "--detach", "--bundle", b.path, cid, check=True)
    wait_status(shim, cid, "running")
    time.sleep(0.3)
    assert len(shim.json("ps", "--format", "json", cid)) == 3
    shim("kill", "--all", cid, "KILL", check=True)
    wait_status(shim, cid, "stopped")


def test_kill_all_stops_a_forking_container_and_the_record_verifies(shim, bundle, cid):
    """A container that forks without pause: kill --all KILL (cgroup.kill
    where the kernel has it) stops every process at once, and the run's
    record is finished and verifies."""
    shim.ids.add(cid)
    # 900 forks without pause, below the default pids limit (1024): at the
    # limit busybox sh exits on "can't fork" and the container could stop
    # before the test sees it running (seen on a loaded machine).
    bundle.sh("i=0; while [ $i -lt 900 ]; do sleep 100 & i=$((i+1)); done; wait")
    shim("run", "--detach", "--bundle", bundle.path, cid, check=True)
    wait_status(shim, cid, "running")
    time.sleep(0.5)
    shim("kill", "--all", cid, "KILL", check=True)
    wait_status(shim, cid, "stopped")
    r = shim("verify", cid)
    assert r.returncode == 0 and b"VERIFIED" in r.stdout, (r.stdout, r.stderr)


def test_events_stats_shape(shim, runc, bundle_factory):
    shapes = {}
    for rt, name in ((shim, "ev-shim"), (runc, "ev-runc")):
        b = bundle_factory().args("sleep", "30")
        rt.ids.add(name)
        rt("run", "--detach", "--bundle", b.path, name, check=True)
        ev = json.loads(rt("events", "--stats", name, check=True).stdout)
        assert ev["type"] == "stats" and ev["id"] == name
        shapes[name] = ev["data"]
    for key in ("cpu", "memory", "pids"):
        assert key in shapes["ev-shim"], key
    # The init, plus agentshim's sentinel: the single-threaded process whose
    # pid goes to --pid-file and lives in the container's cgroup (so clients
    # reading stats through that pid find the container's cgroup).
    assert shapes["ev-shim"]["pids"]["current"] == 2
    assert shapes["ev-runc"]["pids"]["current"] == 1
    assert shapes["ev-shim"]["cpu"]["usage"]["total"] > 0
    assert shapes["ev-shim"]["memory"]["usage"]["usage"] > 0


def test_update_pids_limit_and_memory(shim, bundle, cid):
    shim.ids.add(cid)
    bundle.config["linux"]["resources"] = {"pids": {"limit": 50}, "memory": {"limit": 64 * 1024 * 1024}}
    bundle.save()
    shim("run", "--detach", "--bundle", bundle.args("sleep", "30").path, cid, check=True)
    ev = json.loads(shim("events", "--stats", cid, check=True).stdout)["data"]
    assert ev["pids"]["limit"] == 50
    assert ev["memory"]["usage"]["limit"] == 64 * 1024 * 1024
    shim("update", "--pids-limit", "7", "--memory", "33554432", cid, check=True)
    ev = json.loads(shim("events", "--stats", cid, check=True).stdout)["data"]
    assert ev["pids"]["limit"] == 7
    assert ev["memory"]["usage"]["limit"] == 33554432
    # The limit is enforced: a fork bomb inside stops at 7 tasks.
    r = shim("exec", cid, "sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 5 & done; wait")
    assert b"fork" in r.stderr.lower() or b"resource" in r.stderr.lower() or r.returncode != 0


def test_update_resources_file_is_a_partial_set(shim, bundle, cid):
    """update --resources: the fields the file gives change, the rest stays; a bad field is named."""
    shim.ids.add(cid)
    bundle.config["linux"]["resources"] = {"pids": {"limit": 50}, "memory": {"limit": 64 * 1024 * 1024}}
    bundle.save()
    shim("run", "--detach", "--bundle", bundle.args("sleep", "30").path, cid, check=True)
    shim("update", "--resources", "-", cid, input=b'{"pids": {"limit": 9}}', check=True)
    ev = json.loads(shim("events", "--stats", cid, check=True).stdout)["data"]
    assert ev["pids"]["limit"] == 9
    assert ev["memory"]["usage"]["limit"] == 64 * 1024 * 1024
    # A flag over the file: the flag wins, the file's other fields apply.
    shim("update", "--resources", "-", "--pids-limit", "11", cid,
         input=b'{"pids": {"limit": 10}, "memory": {"limit": 33554432}}', check=True)
    ev = json.loads(shim("events", "--stats", cid, check=True).stdout)["data"]
    assert ev["pids"]["limit"] == 11
    assert ev["memory"]["usage"]["limit"] == 33554432
    r = shim("update", "--resources", "-", cid, input=b'{"memory": {"limit": "lots"}}')
    assert r.returncode != 0
    assert b"update --resources: linux.resources.memory.limit: expected integer, got string" in r.stderr
    ev = json.loads(shim("events", "--stats", cid, check=True).stdout)["data"]
    assert ev["memory"]["usage"]["limit"] == 33554432


def test_oom_kill_is_reported(shim, bundle, cid):
    shim.ids.add(cid)
    bundle.config["linux"]["resources"] = {"memory": {"limit": 16 * 1024 * 1024, "swap": 16 * 1024 * 1024}}
    bundle.save()
    # tail buffers an endless line until the cgroup's OOM killer stops it.
    r = shim("run", "--bundle", bundle.sh("tail /dev/zero").path, cid, timeout=120)
    assert r.returncode == 137
    # ...and it is on the record.
    acct = json.loads(shim("runs", "show", "--json", cid, check=True).stdout)
    assert acct["exit"]["code"] == 137 and acct["exit"]["oom_kills"] >= 1
    runs = os.path.join(shim.extra[1], "runs")
    events = open(os.path.join(runs, os.listdir(runs)[0], "events.ndjson")).read()
    assert '"type":"oom"' in events


def test_spec_is_hardened_and_valid(shim, tmp_path):
    d = tmp_path / "specdir"
    d.mkdir()
    shim("spec", "--bundle", str(d), check=True)
    cfg = json.load(open(d / "config.json"))
    assert cfg["process"]["noNewPrivileges"] is True
    assert "CAP_SYS_ADMIN" not in cfg["process"]["capabilities"]["bounding"]
    assert cfg["root"]["readonly"] is True
    types = {ns["type"] for ns in cfg["linux"]["namespaces"]}
    assert {"pid", "network", "ipc", "uts", "mount"} <= types
    r = shim("spec", "--bundle", str(d))
    assert r.returncode == 1 and b"exists" in r.stderr


def test_features_and_version(shim, runc):
    f = shim.json("features")
    rf = runc.json("features")
    assert set(rf.keys()) <= set(f.keys())
    assert f["ociVersionMax"].startswith("1.")
    assert "SCMP_ACT_NOTIFY" in f["linux"]["seccomp"]["actions"]
    v = shim("--version", check=True).stdout.decode()
    assert "agentshim" in v and "spec:" in v


def test_delete_removes_cgroups_and_state(shim, bundle, cid):
    shim.ids.add(cid)
    shim("run", "--detach", "--bundle", bundle.args("sleep", "30").path, cid, check=True)
    st = shim.json("state", cid)
    lines = open(f"/proc/{st['pid']}/cgroup").read().splitlines()
    if UNIFIED:  # one line, "0::/path"
        cg_dir = "/sys/fs/cgroup" + lines[0].split(":", 2)[2]
    else:
        cg_line = [l for l in lines if ":memory:" in l][0]
        cg_dir = "/sys/fs/cgroup/memory" + cg_line.split(":", 2)[2]
    assert os.path.isdir(cg_dir)
    shim("delete", "--force", cid, check=True)
    shim.ids.discard(cid)
    assert not os.path.exists(cg_dir)
    assert not os.path.exists(os.path.join(shim.root, cid))


def stat_ids(text):
    """(pid, pgrp, session) from a /proc/<pid>/stat line (comm may hold spaces)."""
    f = text[text.rindex(")") + 2:].split()
    return int(text.split()[0]), int(f[2]), int(f[3])


@pytest.mark.parametrize("runtime", ["shim", "runc"])
def test_init_and_exec_have_their_own_session_and_group(request, runtime, bundle, cid):
    """runc calls setsid() for the init and every exec'd process, terminal or
    not: neither shares the caller's session (its controlling terminal) or
    process group. Read from /proc/self/stat: pgrp and session are the
    process's own pid (0 would mean a leader outside the pid namespace)."""
    rt = request.getfixturevalue(runtime)
    rt.ids.add(cid)
    bundle.config["process"]["terminal"] = False
    # `read` is the shell's builtin: the line is pid 1's own stat.
    b = bundle.args("sh", "-c", "read l < /proc/self/stat; echo \"$l\"; exec sleep 100")
    p = subprocess.Popen([rt.binary, "--root", rt.root, *rt.extra, "run", "--bundle", b.path, cid],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = p.stdout.readline().decode()
        pid, pgrp, sid = stat_ids(line)
        assert (pid, pgrp, sid) == (1, 1, 1), f"{runtime} init: {line!r}"
        wait_status(rt, cid, "running")
        r = rt("exec", cid, "cat", "/proc/self/stat", check=True)
        pid, pgrp, sid = stat_ids(r.stdout.decode())
        assert pid > 1 and pgrp == pid and sid == pid, f"{runtime} exec: {r.stdout!r}"
        # The caller's own group is untouched (the runtime did not move it).
        assert os.getpgrp() == os.getpgid(0)
    finally:
        rt("kill", cid, "KILL")
        p.wait(timeout=30)
