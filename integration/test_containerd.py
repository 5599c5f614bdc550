"""containerd on agentshim: a real containerd (own config, root, state and
socket) whose config is a minimal one plus the shipped
configs/containerd/config.toml snippet, driven with `ctr run --runtime
io.containerd.runc.v2 --runc-binary ...` -- the containerd-shim-runc-v2 path
that a Kubernetes RuntimeClass uses. Each scenario runs with runc and with
agentshim in the same run and the results are compared.

containerd passes no runtime arguments besides --root/--log/--log-format, so
the agentshim run uses a two-line wrapper that only adds --audit-dir (the
test's records stay in its temporary directory instead of
/var/lib/agentshim); everything else is the real binary with the real shim.
"""
import json
import os
import time
import uuid

import pytest

from clients import (CONTAINERD, Containerd, cgroups_named, ensure_packages, mounts_matching, oci_image_tar,
                     processes_mentioning, short_tmpdir, wait_for)
from conftest import AGENTSHIM, REPO, RUNC, run, wait_records

IMG = "localhost/busybox:agentshim"
RUNC_ROOT = "/run/containerd/runc"  # containerd-shim-runc-v2's default runtime root


@pytest.fixture(scope="module")
def ctrd():
    missing = ensure_packages()
    if missing:
        pytest.skip(f"client binaries missing after scripts/deps.sh: {missing}")
    c = Containerd(short_tmpdir("ct"))
    try:
        c.start()
        c.wrapper = os.path.join(c.base, "agentshim")
        with open(c.wrapper, "w") as f:
            f.write(f'#!/bin/sh\nexec "{AGENTSHIM}" --audit-dir "{c.audit}" "$@"\n')
        os.chmod(c.wrapper, 0o755)
        c.out("images", "import", oci_image_tar(c.base, IMG), timeout=120)
        yield c
    finally:
        c.stop()
    assert not os.path.exists(c.base)


def binary(c, rt):
    return RUNC if rt == "runc" else c.wrapper


def new_id(rt):
    return f"c{rt[:2]}{uuid.uuid4().hex[:10]}"


def ctr_run(c, rt, cid, *args, rm=True, detach=False, extra=(), **kw):
    cmd = ["run"]
    if rm:
        cmd.append("--rm")
    if detach:
        cmd.append("-d")
    cmd += ["--runtime", "io.containerd.runc.v2", "--runc-binary", binary(c, rt), *extra, IMG, cid, *args]
    return c(*cmd, **kw)


def assert_gone(c, cid):
    # agentshim's supervisor signs the record after the exit is reported
    # (docs/ARCHITECTURE.md): it may outlive `delete` by a moment.
    wait_for(lambda: processes_mentioning(cid) == [], timeout=10, what=f"processes of {cid} to go")
    assert mounts_matching(cid) == [], f"mounts left for {cid}"
    wait_for(lambda: cgroups_named(cid) == [], timeout=10, what=f"cgroups of {cid} to go")
    assert not os.path.exists(os.path.join(RUNC_ROOT, c.namespace, cid)), "runtime state dir left"
    assert not os.path.exists(os.path.join(c.state, "io.containerd.runtime.v2.task", c.namespace, cid)), \
        "task bundle left"


def remove(c, cid):
    c("tasks", "kill", "-s", "KILL", cid)
    wait_for(lambda: b"STOPPED" in c("tasks", "ls").stdout or cid.encode() not in c("tasks", "ls").stdout,
             what=f"{cid} stopped")
    c("tasks", "delete", cid)
    c.out("containers", "rm", cid)


def test_snippet_loads_in_real_containerd(ctrd):
    """The shipped snippet is valid config for this containerd: it parses, and
    the CRI plugin holds the agentshim handler exactly as written."""
    dump = run([CONTAINERD, "--config", ctrd.config, "config", "dump"], check=True).stdout.decode()
    sect = dump[dump.index('[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.agentshim]'):]
    sect = sect[:sect.index("untrusted_workload_runtime")]
    assert 'runtime_type = "io.containerd.runc.v2"' in sect
    assert 'pod_annotations = ["dev.agentshim.*"]' in sect
    assert f'BinaryName = "{AGENTSHIM}"' in sect
    # And the running daemon loaded its CRI plugin with that config.
    plugins = ctrd.out("plugins", "ls")
    assert any("io.containerd.grpc.v1" in l and "cri" in l for l in plugins.splitlines())


def test_run_output_and_exit_code(ctrd):
    res = {}
    for rt in ("runc", "agentshim"):
        r = ctr_run(ctrd, rt, new_id(rt), "sh", "-c", "echo out; echo err >&2; exit 7")
        res[rt] = (r.returncode, r.stdout, r.stderr)
    assert res["runc"] == res["agentshim"]
    assert res["agentshim"] == (7, b"out\n", b"err\n")


def test_env_cwd(ctrd):
    res = {}
    for rt in ("runc", "agentshim"):
        r = ctr_run(ctrd, rt, new_id(rt), "sh", "-c", 'echo "$FOO"; pwd; id -u; test -t 0 || echo notty',
                    extra=("--env", "FOO=bar", "--cwd", "/tmp"))
        res[rt] = (r.returncode, r.stdout)
    assert res["runc"] == res["agentshim"]
    assert res["agentshim"] == (0, b"bar\n/tmp\n0\nnotty\n")


def test_detached_exec_kill_delete_leaves_nothing(ctrd):
    res = {}
    for rt in ("runc", "agentshim"):
        cid = new_id(rt)
        ctr_run(ctrd, rt, cid, "sh", "-c", "trap 'exit 9' TERM; while true; do sleep 0.1; done", rm=False,
                detach=True, check=True)
        try:
            wait_for(lambda: b"RUNNING" in ctrd("tasks", "ls").stdout, what="running")
            # (The sleep: `ctr tasks exec` cancels its output copy as soon as
            # the exit status arrives, so a process that exits right after
            # writing loses its output under load with runc as with us.)
            ex = ctrd("tasks", "exec", "--exec-id", "e1", cid, "sh", "-c", "echo exec-$((40+2)); sleep 0.3; exit 3")
            ps = ctrd.out("tasks", "ps", cid)
            nproc = len(ps.strip().splitlines()) - 1
            ctrd.out("tasks", "kill", "-s", "TERM", cid)
            wait_for(lambda: f"{cid}".encode() in ctrd("tasks", "ls").stdout and b"STOPPED" in ctrd("tasks", "ls").stdout,
                     what=f"{rt} stopped after TERM")
            d = ctrd("tasks", "delete", cid)
            res[rt] = (ex.returncode, ex.stdout, nproc, d.returncode)
            ctrd.out("containers", "rm", cid)
        except Exception:
            remove(ctrd, cid)
            raise
        assert_gone(ctrd, cid)
    assert res["runc"] == res["agentshim"], res
    assert res["agentshim"][:2] == (3, b"exec-42\n")


def test_task_kill_sigkill_and_container_rm(ctrd):
    ids = {}
    for rt in ("runc", "agentshim"):
        cid = ids[rt] = new_id(rt)
        ctr_run(ctrd, rt, cid, "sleep", "600", rm=False, detach=True, check=True)
        wait_for(lambda: b"RUNNING" in ctrd("tasks", "ls").stdout, what="running")
        assert processes_mentioning(cid)
        ctrd.out("tasks", "kill", "-s", "KILL", cid)
        wait_for(lambda: b"STOPPED" in ctrd("tasks", "ls").stdout, what="stopped")
        d = ctrd("tasks", "delete", cid)
        assert d.returncode == 0, d.stderr
        ctrd.out("containers", "rm", cid)
        assert_gone(ctrd, cid)
    # ctr task kill + delete + container rm right after: the record of the
    # agentshim run still verifies (issue 15 item 5).
    wait_records(ctrd.audit)
    v = run([AGENTSHIM, "--audit-dir", ctrd.audit, "runs", "show", "--json", ids["agentshim"]])
    assert v.returncode == 0 and json.loads(v.stdout)["verified"] is True, (v.stdout, v.stderr)


def test_memory_limit_in_container_cgroup(ctrd):
    res = {}
    for rt in ("runc", "agentshim"):
        cid = new_id(rt)
        ctr_run(ctrd, rt, cid, "sleep", "600", rm=False, detach=True, check=True,
                extra=("--memory-limit", str(40 << 20)))
        try:
            cg = f"/sys/fs/cgroup/memory/{ctrd.namespace}/{cid}"
            with open(os.path.join(cg, "memory.limit_in_bytes")) as f:
                limit = f.read().strip()
            with open(os.path.join(cg, "cgroup.procs")) as f:
                procs = [int(x) for x in f.read().split()]
            # The pid the shim tracks (it reads stats and OOM events from its
            # cgroup): runc's init, agentshim's supervisor.
            task_pid = int(ctrd.out("tasks", "ls").split(cid)[1].split()[0])
            res[rt] = (limit, task_pid in procs)
        finally:
            remove(ctrd, cid)
    assert res["runc"] == res["agentshim"], res
    assert res["agentshim"] == (str(40 << 20), True)


def test_runtime_error_reaches_ctr_via_log_json(ctrd):
    """containerd reads the runtime's error from the last "level":"error" line
    of --log <bundle>/log.json --log-format json: agentshim's text reaches ctr."""
    res = {}
    for rt in ("runc", "agentshim"):
        cid = new_id(rt)
        r = ctr_run(ctrd, rt, cid, "/no/such/binary")
        res[rt] = (r.returncode, r.stderr.decode(errors="replace"))
        ctrd("containers", "rm", cid)
    for rt in ("runc", "agentshim"):
        code, err = res[rt]
        assert code != 0, rt
        assert "OCI runtime create failed" in err and "/no/such/binary" in err and "no such file" in err.lower(), \
            (rt, err)


def test_agentshim_writes_json_error_log(tmp_path, bundle):
    """The log format containerd parses: one JSON object per line with level,
    msg and time, the error last."""
    log = tmp_path / "log.json"
    bundle.args("/no/such/binary")
    r = run([AGENTSHIM, "--root", str(tmp_path / "root"), "--audit-dir", str(tmp_path / "audit"), "--log", str(log),
             "--log-format", "json", "create", "--bundle", bundle.path, "t" + uuid.uuid4().hex[:12]])
    assert r.returncode != 0
    lines = [json.loads(l) for l in log.read_text().splitlines() if l.strip()]
    errors = [l for l in lines if l.get("level") == "error"]
    assert errors and set(errors[-1]) >= {"level", "msg", "time"}
    assert "/no/such/binary" in errors[-1]["msg"]
    assert "/no/such/binary" in r.stderr.decode()


def test_annotations_reach_the_runtime(ctrd):
    """dev.agentshim.* annotations (the path Kubernetes pod annotations take
    through pod_annotations) reach the runtime: both runtimes report them in
    `state`, as runc does."""
    res = {}
    for rt in ("runc", "agentshim"):
        cid = new_id(rt)
        ctr_run(ctrd, rt, cid, "sleep", "600", rm=False, detach=True, check=True,
                extra=("--annotation", "dev.agentshim.egress.allow=api.example.com:443"))
        try:
            st = run([RUNC if rt == "runc" else AGENTSHIM, "--root", os.path.join(RUNC_ROOT, ctrd.namespace), "state",
                      cid], check=True)
            res[rt] = json.loads(st.stdout).get("annotations", {}).get("dev.agentshim.egress.allow")
        finally:
            remove(ctrd, cid)
    assert res["runc"] == res["agentshim"] == "api.example.com:443"


def test_long_root_and_64_char_id(tmp_path, bundle):
    """Clients use roots whose <root>/<64-hex id>/supervisor.sock exceeds a unix
    socket path (108 bytes): Docker's /run/docker/runtime-runc/moby (110),
    Kubernetes' /run/containerd/runc/k8s.io (108). The whole lifecycle works
    there, through agentshim's short alias of the root."""
    from conftest import Runtime
    from test_lifecycle import wait_status

    root = str(tmp_path / "run" / "containerd" / "runc" / "k8s.io")
    cid = uuid.uuid4().hex + uuid.uuid4().hex
    assert len(f"{root}/{cid}/supervisor.sock") >= 108
    rt = Runtime(AGENTSHIM, root, extra=["--audit-dir", str(tmp_path / "audit")])
    rt.ids.add(cid)
    os.makedirs("/run/agentshim.r", exist_ok=True)
    dangling = "/run/agentshim.r/zz" + uuid.uuid4().hex[:6]
    os.symlink(str(tmp_path / "gone"), dangling)
    try:
        bundle.sh("trap 'exit 0' TERM; while true; do sleep 0.1; done")
        rt("create", "--bundle", bundle.path, cid, check=True)
        # Making this root's alias pruned the aliases of roots that are gone.
        assert not os.path.lexists(dangling)
        rt("start", cid, check=True)
        wait_status(rt, cid, "running")
        assert rt("exec", cid, "echo", "exec-ok", check=True).stdout == b"exec-ok\n"
        assert [c["id"] for c in rt.json("list", "--format", "json")] == [cid]
        assert os.path.isdir(os.path.join(root, cid)), "state lives under the --root given"
        aliases = [os.path.join("/run/agentshim.r", a) for a in os.listdir("/run/agentshim.r")]
        assert any(os.readlink(a) == os.path.realpath(root) for a in aliases)
        rt("kill", cid, "TERM", check=True)
        wait_status(rt, cid, "stopped")
        rt("delete", cid, check=True)
        assert not os.path.exists(os.path.join(root, cid))
    finally:
        if os.path.lexists(dangling):
            os.unlink(dangling)
        rt.cleanup()
        for a in os.listdir("/run/agentshim.r"):
            p = os.path.join("/run/agentshim.r", a)
            if os.readlink(p) == os.path.realpath(root):
                os.unlink(p)


def test_ctr_task_exec_is_recorded(ctrd):
    """`ctr task exec` is an exec session (issue 15 item 2): what it ran is in
    the record, tagged with its session, hashed like the init's programs."""
    from exec_sessions import assert_session_ran, sessions
    cid = new_id("agentshim")
    ctr_run(ctrd, "agentshim", cid, "sleep", "600", rm=False, detach=True, check=True)
    try:
        wait_for(lambda: b"RUNNING" in ctrd("tasks", "ls").stdout, what="running")
        ex = ctrd("tasks", "exec", "--exec-id", "rec1", cid, "sh", "-c", "/bin/true; exit 4")
        assert ex.returncode == 4, ex.stderr
        ex = ctrd("tasks", "exec", "--exec-id", "rec2", cid, "/bin/uname")
        assert ex.returncode == 0, ex.stderr
    finally:
        remove(ctrd, cid)
    got, init, v = sessions(ctrd.audit, cid)
    assert v.returncode == 0 and v.stdout == b"VERIFIED\n", v.stdout + v.stderr
    assert len(got) == 2 and got[0][0]["session"] != got[1][0]["session"], got
    busybox = init[0]["sha256"]
    assert_session_ran(got[0], ["sh", "-c", "/bin/true; exit 4"], ["/bin/true"], sha256=busybox)
    assert_session_ran(got[1], ["/bin/uname"], sha256=busybox)
