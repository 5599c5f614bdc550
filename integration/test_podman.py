"""Podman on agentshim: real podman and conmon with private --root/--runroot
(vfs storage, cgroupfs, file events), `podman --runtime <path>` with runc and
with agentshim in the same run, results compared: run, exit codes, exec,
stop, rm -f, and a runtime error reaching podman's output.

Containers use --network none (podman's default network would set up a
bridge and firewall rules on the host); agentshim gives every container its
own internal-only namespace anyway.
"""
import os
import time

import pytest

from clients import (IMAGE, Podman, busybox_tar, cgroups_named, ensure_packages, mounts_matching,
                     processes_mentioning, short_tmpdir, wait_for)

RUNTIMES = ["runc", "agentshim"]


@pytest.fixture(scope="module")
def podman():
    missing = ensure_packages()
    if missing:
        pytest.skip(f"client binaries missing after scripts/deps.sh: {missing}")
    p = Podman(short_tmpdir("pd"))
    try:
        p.out("import", busybox_tar(p.base), IMAGE, timeout=180)
        yield p
    finally:
        p.stop()
    assert not os.path.exists(p.base)


def prun(p, rt, *args, **kw):
    return p("run", "--network", "none", *p.ulimits(), *args, runtime=rt, **kw)


def test_run_output_and_exit_codes(podman):
    res = {}
    for rt in RUNTIMES:
        a = prun(podman, rt, "--rm", IMAGE, "sh", "-c", "echo out; echo err >&2; exit 7")
        b = prun(podman, rt, "--rm", "-e", "FOO=bar", "-w", "/tmp", "--user", "1000:1000", IMAGE, "sh", "-c",
                 'echo "$FOO" $(pwd) $(id -u)')
        c = prun(podman, rt, "--rm", "-i", IMAGE, "cat", input=b"from stdin")
        res[rt] = (a.returncode, a.stdout, a.stderr, b.returncode, b.stdout, c.stdout)
    assert res["runc"] == res["agentshim"], res
    assert res["agentshim"] == (7, b"out\n", b"err\n", 0, b"bar /tmp 1000\n", b"from stdin")


def test_detached_exec_stop_and_wait(podman):
    res = {}
    for rt in RUNTIMES:
        cid = prun(podman, rt, "-d", IMAGE, "sh", "-c",
                   "trap 'echo got-term; exit 5' TERM; echo ready; while true; do sleep 0.1; done").stdout.decode().strip()
        assert cid, rt
        try:
            wait_for(lambda: b"ready" in podman("logs", cid, runtime=rt).stdout, what="ready")
            ex = podman("exec", cid, "sh", "-c", "echo exec-ok; exit 3", runtime=rt)
            ext = podman("exec", "-t", cid, "sh", "-c", "test -t 1 && echo tty", runtime=rt)
            t0 = time.time()
            podman.out("stop", "-t", "10", cid, runtime=rt)
            took = time.time() - t0
            code = podman.out("inspect", "--format", "{{.State.ExitCode}}", cid, runtime=rt).strip()
            logs = podman("logs", cid, runtime=rt).stdout
            res[rt] = (ex.returncode, ex.stdout, ext.stdout.replace(b"\r\n", b"\n"), code, logs)
            assert took < 8, f"{rt}: stop took {took:.1f}s though the container handles TERM"
        finally:
            podman("rm", "-f", cid, runtime=rt)
    assert res["runc"] == res["agentshim"], res
    assert res["agentshim"] == (3, b"exec-ok\n", b"tty\n", "5", b"ready\ngot-term\n")


def test_stop_kills_after_timeout(podman):
    res = {}
    for rt in RUNTIMES:
        cid = prun(podman, rt, "-d", IMAGE, "sleep", "600").stdout.decode().strip()
        try:
            podman.out("stop", "-t", "1", cid, runtime=rt)
            res[rt] = podman.out("inspect", "--format", "{{.State.ExitCode}}", cid, runtime=rt).strip()
        finally:
            podman("rm", "-f", cid, runtime=rt)
    assert res["runc"] == res["agentshim"] == "137"


def test_rm_force_running_leaves_nothing(podman):
    for rt in RUNTIMES:
        cid = prun(podman, rt, "-d", IMAGE, "sh", "-c", "sleep 600 & sleep 600").stdout.decode().strip()
        assert cid
        mnt = podman.out("inspect", "--format", "{{.GraphDriver.Data.MergedDir}}", cid, runtime=rt).strip()
        assert podman.out("inspect", "--format", "{{.State.Running}}", cid, runtime=rt).strip() == "true"
        assert processes_mentioning(cid), "conmon should be running"
        podman.out("rm", "-f", "-t", "1", cid, runtime=rt)
        # conmon exits right after the container; give it a moment.
        wait_for(lambda: processes_mentioning(cid) == [], timeout=10, what=f"{rt}: processes of {cid} to go")
        assert mounts_matching(cid) == [], f"{rt}: mounts left"
        if mnt and mnt != "<no value>":
            assert mounts_matching(mnt) == [], f"{rt}: rootfs mount left"
        wait_for(lambda: cgroups_named(cid) == [], timeout=10, what=f"{rt}: cgroups of {cid} to go")
        assert not os.path.exists(os.path.join(podman.runroot, "overlay-containers", cid, "userdata", "pidfile"))
        # The runtime's own state (podman gives each runtime --root <runroot>/<name>).
        for d in (os.path.join(podman.runroot, "runc", cid), os.path.join(podman.runroot, "agentshim", cid)):
            assert not os.path.exists(d), d


def test_runtime_error_surfaces_in_podman_output(podman):
    res = {}
    for rt in RUNTIMES:
        r = prun(podman, rt, "--rm", IMAGE, "/no/such/binary")
        res[rt] = (r.returncode, r.stderr.decode(errors="replace"))
    assert res["runc"][0] == res["agentshim"][0] != 0, res
    err = res["agentshim"][1]
    assert "agentshim" in err and "/no/such/binary" in err, err


def test_scratch_space_on_the_read_only_root(podman):
    """Issue 16 item 3: the read-only root gets writable scratch space at
    /tmp and /var/tmp (filesystem.scratch), the rest of the root stays
    read-only, and a --rm run's record verifies."""
    before = set(os.listdir(os.path.join(podman.audit, "runs"))) if os.path.isdir(
        os.path.join(podman.audit, "runs")) else set()
    r = prun(podman, "agentshim", "--rm", IMAGE, "sh", "-c",
             "touch /tmp/a /var/tmp/b && echo ok; touch /etc/x 2>/dev/null || echo ro; "
             "grep -c ' /tmp tmpfs\\| /var/tmp tmpfs' /proc/mounts")
    out, err = r.stdout.decode(), r.stderr.decode(errors="replace")
    assert r.returncode == 0 and out == "ok\nro\n2\n", (r.returncode, out, err)
    new_runs_verified(podman.audit, before, 1)


def test_record_written(podman):
    rd = os.path.join(podman.audit, "runs")
    before = set(os.listdir(rd)) if os.path.isdir(rd) else set()
    r = prun(podman, "agentshim", "--rm", IMAGE, "echo", "recorded")
    assert r.returncode == 0 and r.stdout == b"recorded\n", r.stderr
    runs = set(os.listdir(rd)) - before
    assert len(runs) == 1, runs
    from conftest import AGENTSHIM, run
    for d in runs:
        v = run([AGENTSHIM, "--audit-dir", podman.audit, "verify", os.path.join(podman.audit, "runs", d)])
        assert v.returncode == 0 and b"VERIFIED" in v.stdout, (d, v.stdout, v.stderr)


def new_runs_verified(audit, before, expect):
    """The runs under audit not in `before`: exactly `expect` of them, each
    finalized and VERIFIED. Returns {tree: set of changed paths} over them."""
    import json
    from conftest import AGENTSHIM, run, wait_records
    rd = os.path.join(audit, "runs")
    runs = set(os.listdir(rd)) - before
    assert len(runs) == expect, runs
    wait_records(audit)
    changed = {}
    for d in runs:
        v = run([AGENTSHIM, "--audit-dir", audit, "verify", os.path.join(rd, d)])
        assert v.returncode == 0 and b"VERIFIED" in v.stdout, (d, v.stdout, v.stderr)
        with open(os.path.join(rd, d, "changes.ndjson")) as f:
            for line in f:
                c = json.loads(line)
                changed.setdefault(c["tree"], set()).add(c["path"])
    return changed


def test_containers_started_at_once_each_work_and_get_their_own_record(podman):
    """Four `podman run --rm` at once (a script's `&`, podman-compose): each
    its output and exit code, four records, each VERIFIED and holding its
    own container's program only."""
    import json
    from conftest import at_once
    rd = os.path.join(podman.audit, "runs")
    before = set(os.listdir(rd)) if os.path.isdir(rd) else set()
    k = 4
    results = at_once(k, lambda i: prun(podman, "agentshim", "--rm", IMAGE, "sh", "-c", f"echo pm-{i}; exit {20 + i}",
                                        timeout=180))
    for i, r in enumerate(results):
        assert (r.returncode, r.stdout) == (20 + i, f"pm-{i}\n".encode()), (i, r.returncode, r.stdout, r.stderr)
    new_runs_verified(podman.audit, before, k)
    seen = []
    for d in set(os.listdir(rd)) - before:
        with open(os.path.join(rd, d, "events.ndjson")) as f:
            evs = [json.loads(l) for l in f]
        mine = {i for i in range(k) for e in evs
                if e["type"] == "process.exec" and any(f"pm-{i}" in a for a in e["data"].get("argv", []))}
        assert len(mine) == 1, (d, mine)
        seen.append(mine.pop())
    assert sorted(seen) == list(range(k)), seen


def test_records_survive_podmans_cleanup(podman, tmp_path):
    """Podman removes what it set up as soon as the container exits (--rm:
    the shm tmpfs under userdata and the container's storage; `stop` then a
    quick `rm`). Every run still ends with a VERIFIED record, and what the
    container wrote to its shm and to its volume is in the changes (the
    trees are read through copies opened while the container existed, and
    walked before the exit is reported)."""
    rd = os.path.join(podman.audit, "runs")
    before = set(os.listdir(rd)) if os.path.isdir(rd) else set()
    vol = tmp_path / "vol"
    vol.mkdir()
    for i in range(3):
        r = prun(podman, "agentshim", "--rm", "-v", f"{vol}:/vol", IMAGE, "sh", "-c",
                 f"echo {i} > /dev/shm/s{i}; echo {i} > /vol/v{i}")
        assert r.returncode == 0, r.stderr
    cid = prun(podman, "agentshim", "-d", IMAGE, "sh", "-c",
               "echo x > /dev/shm/stopped; exec sleep 600").stdout.decode().strip()
    assert cid
    wait_for(lambda: podman("exec", cid, "cat", "/dev/shm/stopped", runtime="agentshim").stdout == b"x\n",
             timeout=20, what="the detached container's write")
    podman.out("stop", "-t", "0", cid, runtime="agentshim")
    podman.out("rm", cid, runtime="agentshim")
    changed = new_runs_verified(podman.audit, before, 4)
    assert {"s0", "s1", "s2", "stopped"} <= changed.get("/dev/shm", set()), changed
    assert {"v0", "v1", "v2"} <= changed.get("/vol", set()), changed


def test_runtime_flag_root_is_cleaned_up(podman, tmp_path):
    """`--runtime-flag root=DIR` reaches create/start, but podman's cleanup
    (conmon's exit command) and `rm` call `delete --force` without it, with
    podman's own --root: agentshim finds DIR through /run/agentshim.ids and
    leaves no stale state (issue 14 item 6)."""
    root = str(tmp_path / "flag-root")
    os.makedirs(root)
    # --rm: the container exits and podman's cleanup removes it.
    r = podman(
        "--runtime-flag", f"root={root}", "run", "--rm", "--network", "none", *podman.ulimits(), IMAGE, "true",
        runtime="agentshim")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: [d for d in os.listdir(root) if not d.startswith(".")] == [], timeout=20,
             what=f"state under {root} to go: {os.listdir(root)}")
    # -d, then rm -f without the flag.
    cid = podman("--runtime-flag", f"root={root}", "run", "-d", "--network", "none", *podman.ulimits(), IMAGE,
                 "sleep", "600", runtime="agentshim").stdout.decode().strip()
    assert cid and os.path.isdir(os.path.join(root, cid)), os.listdir(root)
    assert os.readlink(f"/run/agentshim.ids/{cid}") == os.path.realpath(root)
    podman.out("rm", "-f", "-t", "1", cid, runtime="agentshim")
    wait_for(lambda: not os.path.exists(os.path.join(root, cid)), timeout=20, what=f"{root}/{cid} to go")
    assert not os.path.lexists(f"/run/agentshim.ids/{cid}")
    wait_for(lambda: processes_mentioning(cid) == [], timeout=10, what=f"processes of {cid} to go")
    wait_for(lambda: cgroups_named(cid) == [], timeout=10, what=f"cgroups of {cid} to go")


def test_top_lists_the_containers_processes_only(podman):
    """`podman top` reads the container's processes through the pid conmon
    got from --pid-file (it enters that pid's mount namespace and reads the
    /proc there): the container's sleep, nothing of the host's."""
    for rt in RUNTIMES:
        cid = prun(podman, rt, "-d", IMAGE, "sh", "-c", "exec sleep 3601").stdout.decode().strip()
        try:
            top = wait_for(lambda: podman.out("top", cid, "args", runtime=rt), what=f"{rt}: podman top")
            lines = [l.strip() for l in top.splitlines()[1:] if l.strip()]
            assert lines == ["sleep 3601"], (rt, top)
        finally:
            podman("rm", "-f", "-t", "0", cid, runtime=rt)


def test_pod_containers_talk_over_localhost(podman):
    """`podman pod create` with an infra container (the local image, so no
    registry is needed): two containers of the pod share its network (one
    reaches the other's server on 127.0.0.1) and its ipc namespace; removing
    the pod leaves nothing."""
    for rt in RUNTIMES:
        name = f"pod-{rt}"
        r = podman("pod", "create", "--name", name, "--network", "none", "--infra-image", IMAGE,
                   "--infra-command", "sleep 100000", runtime=rt)
        assert r.returncode == 0, (rt, r.stderr.decode(errors="replace"))
        pod = r.stdout.decode().strip()
        try:
            a = podman.out("run", "-d", "--pod", name, *podman.ulimits(), IMAGE, "sh", "-c",
                           "while true; do echo from-a | nc -l -p 8088; done", runtime=rt).strip()
            b = podman("run", "--rm", "--pod", name, *podman.ulimits(), IMAGE, "sh", "-c",
                       "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 1 | nc -w 3 127.0.0.1 8088 && break; sleep 0.3; "
                       "done; readlink /proc/self/ns/net", runtime=rt)
            assert b.returncode == 0, (rt, b.stderr.decode(errors="replace"))
            out = b.stdout.decode().split()
            a_net = podman.out("exec", a, "readlink", "/proc/self/ns/net", runtime=rt).strip()
            assert out == ["from-a", a_net], (rt, out, a_net)
        finally:
            podman("pod", "rm", "-f", "-t", "0", name, runtime=rt)
        assert processes_mentioning(pod) == [] and processes_mentioning(a) == [], rt
        # (the pod's own parent cgroup is podman's to remove; the containers' must be gone)
        wait_for(lambda: cgroups_named(a) == [], timeout=10, what=f"{rt}: the container's cgroups to go")


def test_podman_exec_is_recorded(podman):
    """`podman exec` is an exec session (issue 15 item 2)."""
    from exec_sessions import assert_session_ran, sessions
    cid = prun(podman, "agentshim", "-d", IMAGE, "sleep", "600").stdout.decode().strip()
    assert cid
    try:
        ex = podman("exec", cid, "sh", "-c", "/bin/true; exit 3", runtime="agentshim")
        assert ex.returncode == 3, ex.stderr
    finally:
        podman("rm", "-f", cid, runtime="agentshim")
    got, init, v = sessions(podman.audit, cid)
    assert v.returncode == 0 and v.stdout == b"VERIFIED\n", v.stdout + v.stderr
    assert len(got) == 1, got
    assert_session_ran(got[0], ["sh", "-c", "/bin/true; exit 3"], ["/bin/true"], sha256=init[0]["sha256"])


def test_names_made_and_removed_on_a_volume_are_recorded(podman, tmp_path):
    """Names created and removed within a `podman run --rm` on a bind-mounted
    host directory (issue 15 item 3): no walk sees them; each is a
    file.created / file.removed event with the container's path, and the
    record verifies although podman removed the container at once."""
    from exec_sessions import verified_entry_events
    host = tmp_path / "h"
    host.mkdir()
    cidfile = tmp_path / "cid"
    r = prun(podman, "agentshim", "--rm", "--cidfile", str(cidfile), "-v", f"{host}:/data", IMAGE, "sh", "-c",
             "mkdir /data/d; touch /data/d/f; ln -s f /data/d/s; rm -r /data/d")
    assert r.returncode == 0, r.stderr
    assert os.listdir(host) == []
    got = verified_entry_events(podman.audit, cidfile.read_text().strip())
    for p in ("/data/d", "/data/d/f", "/data/d/s"):
        for t in ("file.created", "file.removed"):
            assert (t, "/data", p) in got, (t, p, sorted(got))
