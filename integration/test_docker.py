"""Docker on agentshim: a real dockerd (private config file, data root, exec
root, socket; started in a network namespace of the test's own with
--iptables=false, so its default bridge and port publishing are real but the
host's network is not touched) with agentshim registered from configs/docker/daemon.json. Every
scenario runs under --runtime=runc and --runtime=agentshim in the same run
and the results are compared.

Where agentshim differs from runc by design (its policy), the test says so:
- network: agentshim keeps the namespace Docker prepared (bridge: `eth0`
  on docker0, `-p` works) and confines it: new outbound connections leave
  only through its egress proxy (network mode "confined", docs/NETWORK.md);
- host namespaces (--network host, --pid host) and --privileged are refused
  by agentshim with a message naming the reason; runc runs them (or, for
  --privileged on this VM, fails on CAP_SYS_RESOURCE);
- the root filesystem is read-only under agentshim: scenarios write only to
  volumes, bind mounts and tmpfs;
- NET_RAW, MKNOD, SETFCAP and AUDIT_WRITE are dropped.
"""
import json
import os
import time

import pytest

from conftest import AGENTSHIM, at_once, run, wait_records
from clients import (Dockerd, busybox_tar, cgroups_named, ensure_packages, mounts_matching, processes_mentioning,
                     short_tmpdir, wait_for)

RUNTIMES = ["runc", "agentshim"]
IMG = "busybox:agentshim"


@pytest.fixture(scope="module")
def docker():
    missing = ensure_packages()
    if missing:
        pytest.skip(f"client binaries missing after scripts/deps.sh: {missing}")
    d = Dockerd(short_tmpdir("dk"))
    try:
        d.start()
        tar = busybox_tar(d.base)
        with open(tar, "rb") as f:
            d("import", "-", IMG, input=f.read(), check=True, timeout=120)
        yield d
    finally:
        d.stop()
    assert not os.path.exists(d.base)


def dr(docker, rt, *args, **kw):
    """docker run --rm --runtime=rt ... with the busybox image."""
    return docker("run", "--rm", f"--runtime={rt}", *args, **kw)


def text(r):
    return r.stdout.decode(errors="replace")


def assert_gone(docker, cid, merged=None):
    """No process, mount, cgroup or runtime state of the container remains."""
    procs = [p for p in processes_mentioning(cid)]
    assert procs == [], f"processes left for {cid}: {procs}"
    assert mounts_matching(cid) == [], f"mounts left for {cid}"
    if merged:
        assert mounts_matching(merged) == [], f"rootfs mount left for {cid}: {merged}"
    wait_for(lambda: cgroups_named(cid) == [], timeout=10, what=f"cgroups of {cid} to go")
    assert not os.path.exists(os.path.join(docker.runtime_root(), cid)), "runtime state dir left"


def start_detached(docker, rt, *args):
    r = docker("run", "-d", f"--runtime={rt}", *args)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    return text(r).strip()


def inspect(docker, cid):
    return json.loads(docker.out("inspect", cid))[0]


# ----------------------------------------------------------------- features


def test_runtimes_registered_and_features(docker):
    info = json.loads(docker.out("info", "--format", "{{json .Runtimes}}"))
    assert {"runc", "agentshim", "agentshim-strict"} <= set(info)
    # dockerd passes runtimeArgs (through its wrapper script) and the path.
    assert docker.config["runtimes"]["agentshim"]["runtimeArgs"][:1] == ["--policy"]


def test_features_with_runtime_args(docker):
    """Newer dockerd runs `<runtime> [runtimeArgs] features` when it loads the
    configuration; that works with the registered arguments and prints the
    JSON shape runc prints."""
    from conftest import run
    for name in ("agentshim", "agentshim-strict"):
        rt = docker.config["runtimes"][name]
        r = run([rt["path"], *rt["runtimeArgs"], "features"], check=True)
        f = json.loads(r.stdout)
        assert {"ociVersionMin", "ociVersionMax", "hooks", "mountOptions", "linux"} <= set(f), f.keys()
        assert "namespaces" in f["linux"] and "seccomp" in f["linux"]


def test_strict_runtime_runs(docker):
    r = dr(docker, "agentshim-strict", IMG, "echo", "strict-ok")
    assert r.returncode == 0, r.stderr
    assert text(r) == "strict-ok\n"


# ---------------------------------------------------------- run, exit code


def test_foreground_output_and_exit_code(docker):
    res = {}
    for rt in RUNTIMES:
        r = dr(docker, rt, IMG, "sh", "-c", "echo out; echo err >&2; exit 7")
        res[rt] = (r.returncode, r.stdout, r.stderr)
    assert res["runc"] == res["agentshim"]
    assert res["agentshim"] == (7, b"out\n", b"err\n")


def test_killed_by_signal_exit_code(docker):
    res = {}
    for rt in RUNTIMES:
        cid = start_detached(docker, rt, IMG, "sleep", "600")
        docker.out("kill", cid)  # SIGKILL
        res[rt] = (docker.out("wait", cid).strip(), inspect(docker, cid)["State"]["ExitCode"])
        docker.out("rm", cid)
    assert res["runc"] == res["agentshim"] == ("137", 137)


def test_rm_removes_container(docker):
    for rt in RUNTIMES:
        name = f"rm-{rt}"
        r = dr(docker, rt, "--name", name, IMG, "true")
        assert r.returncode == 0, r.stderr
        assert docker("inspect", name).returncode != 0


def test_capped_tmpfs_is_said_in_the_containers_stderr(docker):
    """Issue 16 item 3: `--tmpfs /big:size=256m` is capped by the policy's
    filesystem.tmpfs_max_size (64m): Docker shows the runtime's warning at
    the start of the container's stderr, so the user who then sees `No space
    left on device` knows why; a plain run's stderr is runc's (compared in
    test_foreground_output_and_exit_code)."""
    r = dr(docker, "agentshim", "--tmpfs", "/big:size=256m", IMG, "sh", "-c",
           "grep ' /big ' /proc/mounts; touch /tmp/scratch && echo tmp-writable")
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 0, err
    assert "size=65536k" in text(r) and "tmp-writable" in text(r), text(r)
    assert "agentshim: warning: policy capped" in err and "tmpfs of size=256m at /big" in err, err


def test_detached_logs_wait(docker):
    res = {}
    for rt in RUNTIMES:
        cid = start_detached(docker, rt, IMG, "sh", "-c", "echo out; echo err >&2; sleep 0.3; exit 3")
        code = docker.out("wait", cid).strip()
        logs = docker("logs", cid)
        res[rt] = (code, logs.stdout, logs.stderr, inspect(docker, cid)["State"]["ExitCode"])
        docker.out("rm", cid)
    assert res["runc"] == res["agentshim"]
    assert res["agentshim"] == ("3", b"out\n", b"err\n", 3)


def test_stdin_and_tty(docker):
    res = {}
    for rt in RUNTIMES:
        i = dr(docker, rt, "-i", IMG, "sh", "-c", "cat; echo; test -t 0 && echo tty0 || echo notty0",
               input=b"hello from stdin")
        t = dr(docker, rt, "-t", IMG, "sh", "-c", "tty; test -t 1 && echo tty1; stty size")
        res[rt] = (i.returncode, i.stdout, t.returncode, t.stdout.replace(b"\r\n", b"\n"))
    assert res["runc"] == res["agentshim"]
    assert res["agentshim"][:2] == (0, b"hello from stdin\nnotty0\n")
    assert res["agentshim"][3].startswith(b"/dev/pts/0\ntty1\n")


# ------------------------------------------------------------------- exec


def test_exec_with_and_without_tty(docker):
    res = {}
    for rt in RUNTIMES:
        cid = start_detached(docker, rt, IMG, "sleep", "60")
        try:
            plain = docker("exec", cid, "sh", "-c", "echo in-$HOSTNAME; test -t 1 || echo notty; exit 5")
            tty = docker("exec", "-t", cid, "sh", "-c", "tty; test -t 1 && echo tty")
            env = docker("exec", "-e", "X=1", "-w", "/tmp", "-u", "1000", cid, "sh", "-c", 'echo $X $(pwd) $(id -u)')
            stdin = docker("exec", "-i", cid, "cat", input=b"piped")
            res[rt] = (plain.returncode, plain.stdout.replace(cid[:12].encode(), b"ID"), tty.returncode,
                       tty.stdout.replace(b"\r\n", b"\n"), env.stdout, stdin.stdout)
        finally:
            docker("rm", "-f", cid)
    assert res["runc"] == res["agentshim"], res
    assert res["agentshim"][0] == 5
    assert res["agentshim"][1] == b"in-ID\nnotty\n"
    assert res["agentshim"][3].startswith(b"/dev/pts/") and res["agentshim"][3].endswith(b"tty\n")
    assert res["agentshim"][4:] == (b"1 /tmp 1000\n", b"piped")


# ----------------------------------------------- stop, kill, restart, pause


def test_stop_sigterm_handled(docker):
    res = {}
    for rt in RUNTIMES:
        cid = start_detached(docker, rt, IMG, "sh", "-c",
                             "trap 'echo got-term; exit 0' TERM; echo ready; while true; do sleep 0.1; done")
        wait_for(lambda: b"ready" in docker("logs", cid).stdout, what="ready")
        t0 = time.time()
        docker.out("stop", "-t", "10", cid)
        took = time.time() - t0
        st = inspect(docker, cid)["State"]
        res[rt] = (st["ExitCode"], st["Running"], docker("logs", cid).stdout)
        assert took < 8, f"{rt}: stop took {took:.1f}s although the container handles SIGTERM"
        docker("rm", "-f", cid)
    assert res["runc"] == res["agentshim"]
    assert res["agentshim"] == (0, False, b"ready\ngot-term\n")


def test_stop_sigkill_after_timeout(docker):
    res = {}
    for rt in RUNTIMES:
        # pid 1 without a TERM handler ignores SIGTERM: stop must SIGKILL after -t.
        cid = start_detached(docker, rt, IMG, "sleep", "600")
        t0 = time.time()
        docker.out("stop", "-t", "1", cid)
        took = time.time() - t0
        st = inspect(docker, cid)["State"]
        res[rt] = (st["ExitCode"], st["Running"])
        assert 0.9 < took < 15, f"{rt}: stop took {took:.1f}s"
        merged = inspect(docker, cid)["GraphDriver"]["Data"].get("MergedDir")
        docker.out("rm", cid)
        assert_gone(docker, cid, merged)
    assert res["runc"] == res["agentshim"] == (137, False)


def test_kill_with_signal(docker):
    res = {}
    for rt in RUNTIMES:
        cid = start_detached(docker, rt, IMG, "sh", "-c",
                             "trap 'echo got-usr1' USR1; trap 'echo got-term; exit 4' TERM; echo ready; "
                             "while true; do sleep 0.1; done")
        wait_for(lambda: b"ready" in docker("logs", cid).stdout, what="ready")
        docker.out("kill", "-s", "USR1", cid)
        wait_for(lambda: b"got-usr1" in docker("logs", cid).stdout, what="USR1 delivered")
        docker.out("kill", "-s", "TERM", cid)
        code = docker.out("wait", cid).strip()
        res[rt] = (code, docker("logs", cid).stdout)
        docker("rm", "-f", cid)
    assert res["runc"] == res["agentshim"]
    assert res["agentshim"] == ("4", b"ready\ngot-usr1\ngot-term\n")


def test_restart(docker):
    for rt in RUNTIMES:
        cid = start_detached(docker, rt, IMG, "sh", "-c", "echo start; trap 'exit 0' TERM; while true; do sleep 0.1; done")
        first = inspect(docker, cid)["State"]
        docker.out("restart", "-t", "5", cid)
        second = inspect(docker, cid)["State"]
        assert second["Running"], (rt, second)
        assert second["Pid"] != first["Pid"] and second["StartedAt"] != first["StartedAt"], rt
        wait_for(lambda: docker("logs", cid).stdout == b"start\nstart\n", what=f"{rt}: two starts in the logs")
        docker.out("exec", cid, "true")
        docker.out("rm", "-f", cid)


def test_top_and_stats(docker):
    res = {}
    for rt in RUNTIMES:
        cid = start_detached(docker, rt, "--memory", "64m", IMG, "sh", "-c", "sleep 600 & wait")
        try:
            top = docker.out("top", cid)
            lines = top.strip().splitlines()
            cmds = sorted(l.split(None, 7)[-1] for l in lines[1:])
            stats = json.loads(docker.out("stats", "--no-stream", "--format", "{{json .}}", cid))
            # Docker 20.10 on this hybrid-cgroup host reports "0B / 0B" even for
            # runc, so the numbers are compared with runc's, not with fixed values
            # (the cgroup placement that the stats depend on is checked in
            # test_memory_pids_cpus_limits).
            res[rt] = (cmds, {k: stats[k] for k in ("MemUsage", "PIDs", "BlockIO", "NetIO")})
        finally:
            docker("rm", "-f", cid)
    # `ps` shows the container's processes only: not agentshim's supervisor.
    # Where Docker can read the cgroup's pids (a host whose cgroup layout its
    # stats code understands), agentshim's count has one more: the sentinel,
    # the --pid-file process, lives in the container's cgroup by design (see
    # docs/ARCHITECTURE.md); on this hybrid host Docker reports 0 for both.
    pr, pa = int(res["runc"][1]["PIDs"]), int(res["agentshim"][1]["PIDs"])
    assert pa == (pr + 1 if pr else 0), (pr, pa)
    res["agentshim"][1]["PIDs"] = res["runc"][1]["PIDs"]
    if pr:
        # Memory differs by the sentinel's pages; network: runc's container
        # has Docker's eth0, agentshim's only lo (its internal network), so
        # Docker counts no traffic for it.
        assert res["agentshim"][1]["NetIO"] == "0B / 0B", res
        for k in ("MemUsage", "NetIO"):
            res["agentshim"][1][k] = res["runc"][1][k]
    assert res["runc"] == res["agentshim"]
    assert res["agentshim"][0] == ["sh -c sleep 600 & wait", "sleep 600"]


def test_pause_unpause(docker):
    for rt in RUNTIMES:
        cid = start_detached(docker, rt, IMG, "sh", "-c", "while true; do date +%s%N > /dev/shm/t; sleep 0.05; done")
        try:
            docker.out("pause", cid)
            assert inspect(docker, cid)["State"]["Status"] == "paused", rt
            with open(f"/sys/fs/cgroup/freezer/docker/{cid}/freezer.state") as f:
                assert f.read().strip() == "FROZEN", rt
            r = docker("exec", cid, "true")
            assert r.returncode != 0 and b"paused" in r.stderr, (rt, r.stderr)
            docker.out("unpause", cid)
            assert inspect(docker, cid)["State"]["Status"] == "running", rt
            docker.out("exec", cid, "true")
        finally:
            docker("rm", "-f", cid)


def test_rm_force_running_leaves_nothing(docker):
    for rt in RUNTIMES:
        cid = start_detached(docker, rt, "--tmpfs", "/scratch", IMG, "sh", "-c", "sleep 600 & sleep 600")
        info = inspect(docker, cid)
        merged = info["GraphDriver"]["Data"].get("MergedDir")
        assert info["State"]["Running"]
        assert processes_mentioning(cid), "the container's shim should be running"
        docker.out("rm", "-f", cid)
        assert_gone(docker, cid, merged)


# ------------------------------------------------------- filesystem, mounts


def test_read_only_rootfs(docker):
    for rt in RUNTIMES:
        r = dr(docker, rt, "--read-only", IMG, "sh", "-c", "touch /x 2>&1; echo rc=$?")
        assert r.returncode == 0 and b"Read-only file system" in r.stdout and b"rc=1" in r.stdout, (rt, r.stdout)


def test_bind_mount_and_named_volume(docker, tmp_path):
    res = {}
    for rt in RUNTIMES:
        host = tmp_path / rt
        host.mkdir()
        (host / "in.txt").write_text("from host\n")
        vol = f"vol-{rt}"
        docker.out("volume", "create", vol)
        a = dr(docker, rt, "-v", f"{host}:/data", "-v", f"{vol}:/vol", IMG, "sh", "-c",
               "cat /data/in.txt; echo from-container > /data/out.txt; echo persisted > /vol/f")
        b = dr(docker, rt, "-v", f"{vol}:/vol:ro", IMG, "sh", "-c", "cat /vol/f; echo x > /vol/g 2>/dev/null || echo ro")
        res[rt] = (a.returncode, a.stdout, (host / "out.txt").read_text(), b.returncode, b.stdout)
        docker.out("volume", "rm", vol)
    assert res["runc"] == res["agentshim"]
    assert res["agentshim"] == (0, b"from host\n", "from-container\n", 0, b"persisted\nro\n")


def test_tmpfs(docker):
    res = {}
    for rt in RUNTIMES:
        r = dr(docker, rt, "--tmpfs", "/scratch:size=8m", IMG, "sh", "-c",
               "grep ' /scratch ' /proc/mounts | cut -d' ' -f1,3; echo hi > /scratch/f && cat /scratch/f; "
               "df -k /scratch | tail -1 | awk '{print $2}'")
        res[rt] = (r.returncode, r.stdout)
    assert res["runc"] == res["agentshim"]
    assert res["agentshim"] == (0, b"tmpfs tmpfs\nhi\n8192\n")


# ---------------------------------------------------------------- resources


def test_memory_pids_cpus_limits(docker):
    res = {}
    for rt in RUNTIMES:
        cid = start_detached(docker, rt, "--memory", "48m", "--pids-limit", "33", "--cpus", "0.5", IMG, "sleep", "600")
        try:
            cg = lambda ctrl, f: open(f"/sys/fs/cgroup/{ctrl}/docker/{cid}/{f}").read().strip()
            inside = docker.out("exec", cid, "sh", "-c",
                                "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max "
                                "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us 2>/dev/null || "
                                "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us")
            res[rt] = (cg("memory", "memory.limit_in_bytes"), cg("pids", "pids.max"), cg("cpu", "cpu.cfs_quota_us"),
                       cg("cpu", "cpu.cfs_period_us"), inside.split())
            # The pid containerd and Docker track (runc: the init; agentshim: its
            # supervisor) is in that cgroup: the shim reads stats and OOM events there.
            pid = inspect(docker, cid)["State"]["Pid"]
            assert f"/docker/{cid}" in open(f"/proc/{pid}/cgroup").read(), rt
        finally:
            docker("rm", "-f", cid)
    assert res["runc"] == res["agentshim"]
    assert res["agentshim"][:4] == (str(48 << 20), "33", "50000", "100000")


def test_pids_limit_enforced(docker):
    for rt in RUNTIMES:
        r = dr(docker, rt, "--pids-limit", "8", IMG, "sh", "-c", "for i in $(seq 1 20); do sleep 30 & done")
        # fork fails past the limit and the shell gives up.
        assert r.returncode == 2, (rt, r.returncode, r.stderr)
        assert b"can't fork: Resource temporarily unavailable" in r.stderr, (rt, r.stderr)


def test_user_workdir_env(docker):
    res = {}
    for rt in RUNTIMES:
        r = dr(docker, rt, "--user", "1000:1000", "-w", "/tmp", "-e", "FOO=bar baz", IMG, "sh", "-c",
               'id -u; id -g; pwd; echo "$FOO"')
        res[rt] = (r.returncode, r.stdout)
    assert res["runc"] == res["agentshim"]
    assert res["agentshim"] == (0, b"1000\n1000\n/tmp\nbar baz\n")


def test_cap_drop_and_no_new_privileges(docker):
    res = {}
    for rt in RUNTIMES:
        r = dr(docker, rt, "--cap-drop", "CHOWN", "--cap-drop", "KILL", "--security-opt", "no-new-privileges", IMG,
               "sh", "-c", "grep -E '^(CapEff|NoNewPrivs)' /proc/self/status")
        assert r.returncode == 0, (rt, r.stderr)
        f = dict(l.split(":\t") for l in r.stdout.decode().splitlines())
        res[rt] = (int(f["CapEff"], 16), f["NoNewPrivs"])
    for rt in RUNTIMES:
        eff, nnp = res[rt]
        assert nnp == "1", rt
        assert not eff & (1 << 0), f"{rt}: CHOWN still effective"
        assert not eff & (1 << 5), f"{rt}: KILL still effective"
    # agentshim grants a subset of runc's set (it also drops NET_RAW, MKNOD,
    # SETFCAP, AUDIT_WRITE by policy), never more.
    assert res["agentshim"][0] & ~res["runc"][0] == 0


# ------------------------------------------------------------------ network


def test_network_none(docker):
    res = {}
    for rt in RUNTIMES:
        r = dr(docker, rt, "--network", "none", IMG, "sh", "-c", "ls /sys/class/net; cat /sys/class/net/lo/operstate")
        assert r.returncode == 0, (rt, r.stderr)
        res[rt] = r.stdout.split()
    # Only loopback, and it is up (operstate "unknown" is how an up `lo` reads).
    assert res["runc"] == res["agentshim"] == [b"lo", b"unknown"], res


def test_default_bridge_network_kept_and_confined(docker):
    """Both runtimes join Docker's bridge (eth0 with a 172.17/16 address:
    agentshim's default network mode "confined" keeps the caller's network);
    under agentshim a direct connection out of the container is refused at
    once, while runc's gets through (a listener on the bridge's gateway, in
    dockerd's network namespace)."""
    listener = docker.popen_in_netns("/bin/busybox", "nc", "-l", "-p", "19999")
    res, direct = {}, {}
    try:
        for rt in RUNTIMES:
            r = dr(docker, rt, IMG, "sh", "-c", "ls /sys/class/net | tr '\\n' ' '; echo; "
                   "ip -4 addr show eth0 | grep -c 'inet 172.17.'; "
                   "echo hi | nc -w 3 172.17.0.1 19999; echo rc=$?")
            assert r.returncode == 0, (rt, r.stderr)
            res[rt] = r.stdout.decode().split("\n")
    finally:
        listener.kill()
        listener.wait()
    assert res["runc"][0].split() == ["eth0", "lo"], res
    assert res["agentshim"][0].split() == ["eth0", "lo"], f"agentshim replaced Docker's network namespace: {res}"
    assert res["runc"][1] == res["agentshim"][1] == "1", res
    assert "rc=0" in res["runc"][2], res
    assert "rc=0" not in res["agentshim"][2], f"a direct connection left the confined network: {res}"


def test_published_port(docker):
    """-p: Docker's docker-proxy forwards to the container's bridge address;
    the server answers under both runtimes (the confined network lets inbound
    connections and their replies through)."""
    res = {}
    for i, rt in enumerate(RUNTIMES):
        port = 18080 + i
        cid = start_detached(docker, rt, "-p", f"127.0.0.1:{port}:80", IMG, "sh", "-c",
                             "while true; do echo hello-from-$HOSTNAME | nc -l -p 80; done")
        try:
            res[rt] = wait_for(lambda: docker.in_netns("/bin/busybox", "nc", "-w", "2", "127.0.0.1", str(port),
                                                       timeout=10).stdout, what=f"{rt} answers on -p")
        finally:
            docker("rm", "-f", cid)
    assert res["runc"].startswith(b"hello-from-"), res
    assert res["agentshim"].startswith(b"hello-from-"), res


def test_container_network_ipc_and_pid_modes(docker):
    """`--network/--ipc/--pid container:X`: Docker derives the namespaces
    from X's State.Pid (the pid-file pid). The second container shares X's
    loopback (reaches X's server on 127.0.0.1), its ipc and network
    namespaces (same namespace ids) and sees X's processes; runc and
    agentshim alike."""
    for rt in RUNTIMES:
        a = start_detached(docker, rt, "--ipc", "shareable", IMG, "sh", "-c",
                           "while true; do echo from-a | nc -l -p 8088; done")
        try:
            wait_for(lambda: "nc -l" in docker.out("top", a), timeout=10, what=f"{rt}: a listening")
            a_ns = docker.out("exec", a, "sh", "-c", "readlink /proc/self/ns/net; readlink /proc/self/ns/ipc").split()
            r = dr(docker, rt, "--network", f"container:{a}", "--ipc", f"container:{a}", "--pid", f"container:{a}",
                   IMG, "sh", "-c", "readlink /proc/self/ns/net; readlink /proc/self/ns/ipc; sleep 1 | nc -w 3 127.0.0.1 8088; "
                   "ps -o args")
            assert r.returncode == 0, (rt, r.stderr.decode(errors="replace"))
            lines = r.stdout.decode().splitlines()
            assert lines[:2] == a_ns, (rt, lines, a_ns)
            assert lines[2] == "from-a", (rt, lines)
            assert any("nc -l -p 8088" in l for l in lines[3:]), (rt, lines)
            # The pid-file pid is the container, as far as namespaces go.
            pid = inspect(docker, a)["State"]["Pid"]
            assert os.readlink(f"/proc/{pid}/ns/net") == a_ns[0], rt
            got = run(["nsenter", "-t", str(pid), "-n", "cat", "/proc/net/dev"], check=True).stdout.decode()
            ifaces = sorted(l.split(":")[0].strip() for l in got.splitlines() if ":" in l)
            assert ifaces == ["eth0", "lo"], (rt, got)
        finally:
            docker("rm", "-f", a)


def test_joined_network_decisions_are_recorded_by_who_made_them(docker):
    """Issue 14 item 2 with Docker: B runs with `--network container:A`, so
    A's supervisor serves the shared namespace's proxy. B's request (denied:
    the default allowlist names nothing) is in A's record with origin B (the
    kernel's socket owner), and in B's own record with served_by A; both
    records verify."""
    from exec_sessions import run_dir
    a = start_detached(docker, "agentshim", IMG, "sleep", "60")
    b = None
    try:
        b = start_detached(docker, "agentshim", "--network", f"container:{a}", IMG, "sh", "-c",
                           "wget -qO- http://example.invalid:81/from-b; echo rc=$?; sleep 60")
        wait_for(lambda: "rc=" in docker.out("logs", b), timeout=30, what="b's request")
        assert "rc=0" not in docker.out("logs", b)
    finally:
        docker("rm", "-f", *([b] if b else []), a)
    recs = {}
    for cid in (a, b):
        rd = run_dir(docker.audit, cid)
        recs[cid] = [json.loads(l) for l in open(os.path.join(rd, "events.ndjson"))]
        v = run([AGENTSHIM, "--audit-dir", docker.audit, "verify", rd])
        assert v.stdout == b"VERIFIED\n", (cid, v.stdout, v.stderr)
    def conns(cid):
        return [e["data"] for e in recs[cid] if e["type"] == "net.connection" and e["data"]["port"] == 81]
    in_a, in_b = conns(a), conns(b)
    assert len(in_a) == 1 and in_a[0]["decision"] == "denied", in_a
    assert [o["container"] for o in in_a[0]["origin"]] == [b], in_a
    assert len(in_b) == 1 and in_b[0]["served_by"] == a and in_b[0]["decision"] == "denied", in_b
    assert [o["container"] for o in in_b[0]["origin"]] == [b], in_b


# ------------------------------------------------------------ policy errors


@pytest.mark.parametrize("flags,what", [
    (["--privileged"], "privileged"),
    (["--network", "host"], "network"),
    (["--pid", "host"], "pid"),
])
def test_refused_by_policy_surfaces_agentshim_error(docker, flags, what):
    r = dr(docker, "agentshim", *flags, IMG, "true")
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 125, f"agentshim ran {flags}: rc={r.returncode} {err}"
    # Docker's error names the OCI runtime failure and carries agentshim's
    # text (from its log.json), which names what was refused and why.
    assert "OCI runtime create failed" in err and what in err.lower(), err
    assert "agentshim" in err.lower() or "policy" in err.lower(), err


def test_privileged_is_refused_by_the_privileged_rule(docker):
    """`--privileged` is recognised by what Docker asks for (every capability,
    no seccomp, every device, writable sysfs, no masked paths) and refused
    with the rule's message; `--cap-add ALL` keeps Docker's seccomp profile
    and masked paths, so it is not refused as privileged."""
    r = dr(docker, "agentshim", "--privileged", IMG, "true")
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 125, err
    assert "the config asks for a privileged container" in err and "policy rule privileged" in err, err
    r = dr(docker, "agentshim", "--cap-add", "ALL", IMG, "true")
    assert "privileged container" not in r.stderr.decode(errors="replace")


def test_runtime_error_text_reaches_docker(docker):
    """A plain runtime failure (an entrypoint that does not exist) comes back
    with the runtime's own message, as with runc."""
    res = {}
    for rt in RUNTIMES:
        r = dr(docker, rt, IMG, "/no/such/binary")
        res[rt] = (r.returncode, r.stderr.decode(errors="replace"))
    assert res["runc"][0] == res["agentshim"][0] == 127, res
    assert "/no/such/binary" in res["agentshim"][1] and "no such file" in res["agentshim"][1].lower(), res


def test_record_written_for_docker_runs(docker):
    before = set(os.listdir(os.path.join(docker.audit, "runs"))) if os.path.isdir(
        os.path.join(docker.audit, "runs")) else set()
    r = dr(docker, "agentshim", IMG, "sh", "-c", "echo recorded")
    assert r.returncode == 0
    runs = set(os.listdir(os.path.join(docker.audit, "runs"))) - before
    assert len(runs) == 1, runs
    run_dir = os.path.join(docker.audit, "runs", runs.pop())
    # The container's exit is reported as soon as it is recorded; the record
    # is finalized right after (readers such as verify wait for it).
    wait_records(docker.audit, timeout=30)
    assert os.path.exists(os.path.join(run_dir, "attestation.intoto.json"))
    # The record of a Docker run verifies.
    from conftest import AGENTSHIM, run
    v = run([AGENTSHIM, "--audit-dir", docker.audit, "verify", run_dir])
    assert v.returncode == 0 and b"VERIFIED" in v.stdout, (v.stdout, v.stderr)


def test_containers_started_at_once_each_work_and_get_their_own_record(docker):
    """`docker compose up` starts a project's services at once: five
    `docker run --rm` side by side under agentshim, each on Docker's bridge
    (confined), each gets its output and exit code, and each record
    verifies and holds that container's program and no other's."""
    rd = os.path.join(docker.audit, "runs")
    before = set(os.listdir(rd)) if os.path.isdir(rd) else set()
    k = 5
    results = at_once(k, lambda i: dr(docker, "agentshim", IMG, "sh", "-c", f"echo svc-{i}; exit {10 + i}",
                                      timeout=180))
    for i, r in enumerate(results):
        assert r.returncode == 10 + i, (i, r.returncode, r.stderr)
        assert text(r) == f"svc-{i}\n", (i, text(r), r.stderr)
    runs = set(os.listdir(rd)) - before
    assert len(runs) == k, runs
    wait_records(docker.audit, timeout=60)
    seen = []
    for d in runs:
        v = run([AGENTSHIM, "--audit-dir", docker.audit, "verify", os.path.join(rd, d)])
        assert v.returncode == 0 and b"VERIFIED" in v.stdout, (d, v.stdout, v.stderr)
        with open(os.path.join(rd, d, "events.ndjson")) as f:
            evs = [json.loads(l) for l in f]
        mine = {i for i in range(k) for e in evs
                if e["type"] == "process.exec" and any(f"svc-{i}" in a for a in e["data"].get("argv", []))}
        assert len(mine) == 1, (d, mine)
        code = [e["data"]["code"] for e in evs if e["type"] == "run.exit"]
        assert code == [10 + next(iter(mine))], (d, code)
        seen.append(mine.pop())
    assert sorted(seen) == list(range(k)), seen


def test_records_survive_dockers_cleanup(docker):
    """`docker run --rm` removes the container's anonymous volume as soon as
    the exit is reported, and `docker rm -f` removes everything at once:
    each run still ends with a VERIFIED record that lists what the container
    wrote to the volume (the after walk of what the container could change
    precedes the exit; the trees are read through copies opened while the
    container existed)."""
    rd = os.path.join(docker.audit, "runs")
    before = set(os.listdir(rd)) if os.path.isdir(rd) else set()
    # A named volume with a big new file is walked (hashed) first: were the
    # exit reported before the after walk, Docker would remove the anonymous
    # /z volume while /a is still being hashed.
    vol = f"big{os.getpid()}"
    try:
        r = dr(docker, "agentshim", "-v", f"{vol}:/a", "-v", "/z", IMG, "sh", "-c",
               "dd if=/dev/zero of=/a/big bs=1M count=400 2>/dev/null; echo z > /z/f0")
        assert r.returncode == 0, r.stderr
    finally:
        docker("volume", "rm", "-f", vol)
    cid = start_detached(docker, "agentshim", "-v", "/z", IMG, "sh", "-c", "echo x > /z/forced; exec sleep 600")
    wait_for(lambda: docker("exec", cid, "cat", "/z/forced").stdout == b"x\n", what="the write")
    docker.out("rm", "-f", cid)
    runs = set(os.listdir(rd)) - before
    assert len(runs) == 2, runs
    wait_records(docker.audit, timeout=60)
    changed = set()
    for d in runs:
        v = run([AGENTSHIM, "--audit-dir", docker.audit, "verify", os.path.join(rd, d)])
        assert v.returncode == 0 and b"VERIFIED" in v.stdout, (d, v.stdout, v.stderr)
        with open(os.path.join(rd, d, "changes.ndjson")) as f:
            changed |= {(c["tree"], c["path"]) for c in map(json.loads, f)}
    assert {("/a", "big"), ("/z", "f0"), ("/z", "forced")} <= changed, sorted(changed)[:10]


def test_names_made_and_removed_on_volumes_are_recorded(docker, tmp_path):
    """Names created and removed within the run on a bind-mounted host
    directory and on a named volume (issue 15 item 3), by the container's
    program and by a `docker exec` session: no walk sees them; each is a
    file.created / file.removed event with the container's path."""
    host = tmp_path / "h"
    host.mkdir()
    vol = f"names{os.getpid()}"
    docker.out("volume", "create", vol)
    try:
        cid = start_detached(docker, "agentshim", "-v", f"{host}:/data", "-v", f"{vol}:/vol", IMG, "sh", "-c",
                             "mkdir /data/d; touch /data/d/f; rm -r /data/d; exec sleep 600")
        wait_for(lambda: docker("exec", cid, "test", "-e", "/data/d").returncode == 1, what="the first rm")
        r = docker("exec", cid, "sh", "-c", "mkdir /vol/e; ln -s x /vol/e/s; rm -r /vol/e")
        assert r.returncode == 0, r.stderr
        docker.out("rm", "-f", cid)
    finally:
        docker("volume", "rm", "-f", vol)
    from exec_sessions import verified_entry_events
    got = verified_entry_events(docker.audit, cid)
    for tree, paths in (("/data", ["/data/d", "/data/d/f"]), ("/vol", ["/vol/e", "/vol/e/s"])):
        for p in paths:
            for t in ("file.created", "file.removed"):
                assert (t, tree, p) in got, (t, tree, p, sorted(got))


def test_docker_exec_is_recorded(docker):
    """`docker exec` is an exec session (issue 15 item 2): the processes it
    runs are process.exec events with the binary's hash, tagged with the
    session its caller.exec names; the record verifies."""
    cid = start_detached(docker, "agentshim", IMG, "sleep", "60")
    try:
        r = docker("exec", cid, "sh", "-c", "/bin/true; /bin/sh -c '/bin/uname > /dev/null'")
        assert r.returncode == 0, r.stderr
    finally:
        docker("rm", "-f", cid)
    from exec_sessions import assert_session_ran, sessions
    got, init, v = sessions(docker.audit, cid)
    assert v.returncode == 0 and v.stdout == b"VERIFIED\n", (v.stdout, v.stderr)
    assert len(got) == 1, got
    # Docker's busybox image: every one of them is the busybox binary.
    assert_session_ran(got[0], ["sh", "-c", "/bin/true; /bin/sh -c '/bin/uname > /dev/null'"], ["/bin/true"],
                       ["/bin/sh", "-c", "/bin/uname > /dev/null"], ["/bin/uname"], sha256=init[0]["sha256"])


# ----------------------------------------------------------------- userns auto

def test_userns_auto_under_docker(docker):
    """policy userns "auto" with Docker: the container's root is an
    unprivileged host uid range. Docker's rootfs is overlayfs, which cannot be
    idmapped as a whole, so (the root being read-only) it is used as it is and
    the record says so; Docker's /etc/hosts (under a root-only directory) is
    reachable because the supervisor opens bind sources for the container;
    Docker's ping_group_range is narrowed to the mapped gids."""
    pol = os.path.join(docker.base, "policy.json")
    orig = open(pol).read()
    doc = json.loads(orig)
    doc["userns"] = "auto"
    with open(pol, "w") as f:
        json.dump(doc, f)
    try:
        r = dr(docker, "agentshim", IMG, "sh", "-c",
               "id -u; cat /proc/self/uid_map; stat -c %u /bin/busybox; grep -c localhost /etc/hosts; "
               "cat /proc/sys/net/ipv4/ping_group_range")
        assert r.returncode == 0, r.stderr.decode(errors="replace")
        out = text(r).split("\n")
        assert out[0] == "0", out
        f = out[1].split()
        assert f[0] == "0" and int(f[1]) >= 65536 and f[2] == "65536", out
        assert out[2] == "65534", out  # overlayfs: not idmapped, host root's files show as nobody
        assert int(out[3]) >= 1, out
        assert out[4].split() == ["0", "65535"], out
        # A detached one: its processes run as the host range, not as root.
        cid = start_detached(docker, "agentshim", IMG, "sleep", "30")
        try:
            sleepers = []
            for p in os.listdir("/proc"):
                try:
                    if (p.isdigit() and cid in open(f"/proc/{p}/cgroup").read()
                            and open(f"/proc/{p}/comm").read().strip() == "sleep"):
                        sleepers.append(next(int(l.split()[1]) for l in open(f"/proc/{p}/status")
                                             if l.startswith("Uid:")))
                except OSError:
                    pass
            assert len(sleepers) == 1 and sleepers[0] >= 65536, sleepers
        finally:
            docker("rm", "-f", cid)
    finally:
        with open(pol, "w") as f:
            f.write(orig)
