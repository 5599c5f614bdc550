"""Sandbox primitives from config.json, observed from inside the container."""
import array
import json
import os
import signal
import socket
import subprocess
import time

import pytest

from conftest import run
from test_lifecycle import wait_status


def out(r):
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    return r.stdout.decode()


def looser_policy(shim, tmp_path, doc):
    """These tests check a config primitive that agentshim's default policy
    tightens; they run under an explicit, looser policy (docs/POLICY.md)."""
    p = tmp_path / "looser-policy.json"
    p.write_text(json.dumps(doc))
    shim.extra = ["--policy", str(p)] + shim.extra


def test_namespaces_hostname_and_identity(shim, bundle, cid):
    shim.ids.add(cid)
    bundle.config["hostname"] = "agentbox"
    bundle.config["process"]["user"] = {"uid": 1000, "gid": 1000, "additionalGids": [5, 6]}
    bundle.save()
    o = out(shim("run", "--bundle", bundle.sh("hostname; id -u; id -g; id -G; echo $$; ls /proc | grep -c '^[0-9]'").path, cid))
    lines = o.split()
    assert lines[0] == "agentbox"
    assert lines[1:3] == ["1000", "1000"]
    assert "5" in lines[3:6] and "6" in lines[3:6]
    assert "1" in lines  # the shell is pid 1 in its own pid namespace


def test_capabilities_nnp_and_readonly_root(shim, bundle, cid, tmp_path):
    shim.ids.add(cid)
    # The default policy drops CAP_AUDIT_WRITE; this test checks the config's sets are applied as given.
    looser_policy(shim, tmp_path, {"capabilities": {"allowed": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]}})
    bundle.config["root"]["readonly"] = True
    bundle.save()
    o = out(shim("run", "--bundle", bundle.sh(
        "grep -E 'CapEff|CapBnd|NoNewPrivs' /proc/self/status; touch /x 2>&1 || echo ro-ok").path, cid))
    caps = {l.split(":")[0]: l.split(":")[1].strip() for l in o.splitlines() if ":" in l and l.startswith(("Cap", "NoNew"))}
    # runc's default spec: AUDIT_WRITE, KILL, NET_BIND_SERVICE.
    assert int(caps["CapEff"], 16) == (1 << 29) | (1 << 5) | (1 << 10)
    assert int(caps["CapBnd"], 16) == (1 << 29) | (1 << 5) | (1 << 10)
    assert caps["NoNewPrivs"] == "1"
    assert "ro-ok" in o


def test_masked_and_readonly_paths(shim, bundle, cid):
    shim.ids.add(cid)
    # /proc/keys and /proc/timer_list exist on the host and are masked by
    # runc's default spec (bind of /dev/null: empty when read).
    assert os.path.exists("/proc/timer_list")
    o = out(shim("run", "--bundle", bundle.sh(
        "cat /proc/timer_list | wc -c; echo 1 > /proc/sys/kernel/domainname 2>&1 && echo wrote || echo sys-ro").path, cid))
    assert o.split()[0] == "0"
    assert "sys-ro" in o


def test_mounts_tmpfs_bind_and_propagation(shim, bundle, cid, tmp_path):
    shim.ids.add(cid)
    host_dir = tmp_path / "shared"
    host_dir.mkdir()
    (host_dir / "from-host").write_text("hello")
    bundle.config["mounts"] += [
        {"destination": "/data", "type": "bind", "source": str(host_dir), "options": ["rbind", "ro"]},
        {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m", "mode=700"]},
    ]
    bundle.save()
    o = out(shim("run", "--bundle", bundle.sh(
        "cat /data/from-host; echo; touch /data/x 2>/dev/null || echo data-ro; "
        "stat -c %a /scratch; dd if=/dev/zero of=/scratch/f bs=1k count=2000 2>&1 | grep -c 'No space'").path, cid))
    lines = o.split("\n")
    assert lines[0] == "hello"
    assert "data-ro" in o
    assert "700" in o
    assert o.strip().endswith("1")


def test_policy_changes_are_said_on_stderr(shim, bundle, cid):
    """Issue 16 item 3: a decision that changes what the caller asked for
    (a tmpfs size capped by filesystem.tmpfs_max_size) is said on the
    runtime's stderr and in its log, not only in the record; the read-only
    root has writable scratch /tmp sized to the memory limit."""
    shim.ids.add(cid)
    bundle.config["mounts"].append(
        {"destination": "/big", "type": "tmpfs", "source": "tmpfs", "options": ["size=256m"]})
    bundle.config.setdefault("linux", {}).setdefault("resources", {})["memory"] = {"limit": 96 << 20}
    bundle.save()
    r = shim("run", "--bundle", bundle.sh("touch /tmp/x && echo tmp-ok; grep ' /tmp ' /proc/mounts").path, cid)
    out, err = r.stdout.decode(), r.stderr.decode(errors="replace")
    assert r.returncode == 0, err
    assert "tmp-ok" in out and "size=98304k" in out, out
    assert "agentshim: warning: policy capped mounts[" in err and "tmpfs of size=256m at /big" in err, err


def test_seccomp_errno_and_kill(shim, bundle, cid):
    shim.ids.add(cid)
    bundle.config["linux"]["seccomp"] = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
                     {"names": ["no_such_syscall_name"], "action": "SCMP_ACT_ERRNO"}]}
    bundle.save()
    o = out(shim("run", "--bundle", bundle.sh("mkdir /tmp/d 2>&1; grep Seccomp: /proc/self/status").path, cid))
    assert "Permission denied" in o
    assert "Seccomp:\t2" in o


def test_seccomp_bad_action_is_a_clear_error(shim, bundle, cid):
    bundle.config["linux"]["seccomp"] = {"defaultAction": "SCMP_ACT_BOGUS"}
    bundle.save()
    r = shim("run", "--bundle", bundle.args("true").path, cid)
    assert r.returncode == 1
    assert b"SCMP_ACT_BOGUS" in r.stderr
    assert not os.path.exists(os.path.join(shim.root, cid))


def test_rlimits_env_cwd_umask(shim, bundle, cid):
    shim.ids.add(cid)
    bundle.config["process"]["rlimits"] = [{"type": "RLIMIT_NOFILE", "hard": 512, "soft": 256}]
    bundle.config["process"]["env"].append("AGENT=yes")
    bundle.config["process"]["cwd"] = "/tmp"
    bundle.config["process"]["user"]["umask"] = 0o077
    bundle.save()
    o = out(shim("run", "--bundle", bundle.sh("ulimit -n; ulimit -Hn; echo $AGENT; pwd; umask").path, cid))
    assert o.split() == ["256", "512", "yes", "/tmp", "0077"]


def test_devices_cgroup_denies_unlisted_devices(shim, bundle, cid, tmp_path):
    shim.ids.add(cid)
    # The default policy refuses binds from /dev; this test checks the device cgroup behind such a bind.
    looser_policy(shim, tmp_path, {"filesystem": {"forbidden_sources": ["/proc", "/sys"]}})
    # A device node the container may not use, although it exists in /dev.
    bundle.config["linux"]["devices"] = []
    bundle.config["mounts"].append({"destination": "/dev/kmsg", "type": "bind", "source": "/dev/kmsg",
                                    "options": ["bind"]})
    bundle.save()
    o = out(shim("run", "--bundle", bundle.sh("head -c 1 /dev/kmsg >/dev/null 2>&1 && echo open || echo denied; "
                                              "head -c 4 /dev/zero | wc -c").path, cid))
    assert o.split() == ["denied", "4"]


def test_hooks_get_state_and_failures_abort(shim, bundle, cid, tmp_path):
    shim.ids.add(cid)
    log = tmp_path / "hooks.log"
    hook = lambda name: {"path": "/bin/sh", "args": ["sh", "-c", f"cat >> {log}; echo ' {name}' >> {log}"]}
    bundle.config["hooks"] = {"createRuntime": [hook("createRuntime")], "poststart": [hook("poststart")],
                              "poststop": [hook("poststop")]}
    bundle.save()
    out(shim("run", "--bundle", bundle.args("true").path, cid))
    shim("delete", cid)
    shim.ids.discard(cid)
    text = log.read_text()
    assert "createRuntime" in text and "poststart" in text and "poststop" in text
    first = json.loads(text.split(" createRuntime")[0])
    assert first["id"] == cid and first["status"] == "creating" and first["pid"] > 0
    # A failing prestart hook aborts the run with its output in the error.
    bundle.config["hooks"] = {"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", "echo hook-broke >&2; exit 9"]}]}
    bundle.save()
    r = shim("run", "--bundle", bundle.path, cid + "b")
    assert r.returncode == 1
    assert b"hook-broke" in r.stderr


def test_hook_timeout_is_honoured(shim, bundle, cid):
    bundle.config["hooks"] = {"createRuntime": [{"path": "/bin/sleep", "args": ["sleep", "30"], "timeout": 1}]}
    bundle.save()
    t = time.time()
    r = shim("run", "--bundle", bundle.args("true").path, cid)
    assert r.returncode == 1
    assert time.time() - t < 20
    assert b"timed out" in r.stderr or b"timeout" in r.stderr


def test_console_socket_receives_pty_master(shim, bundle, cid, tmp_path):
    shim.ids.add(cid)
    sock_path = str(tmp_path / "console.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(sock_path)
    srv.listen(1)
    bundle.config["process"]["terminal"] = True
    bundle.save()
    bundle.sh("tty; echo on-the-pty; sleep 1")
    shim("create", "--bundle", bundle.path, "--console-socket", sock_path, cid, check=True)
    conn, _ = srv.accept()
    msg, fds, _, _ = socket.recv_fds(conn, 4096, 1)
    assert len(fds) == 1
    master = fds[0]
    shim("start", cid, check=True)
    data = b""
    deadline = time.time() + 10
    while b"on-the-pty" not in data and time.time() < deadline:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        data += chunk
    os.close(master)
    assert b"/dev/pts/0" in data or b"/dev/console" in data
    assert b"on-the-pty" in data


def test_preserve_fds_and_listen_fds(shim, bundle, cid, tmp_path):
    shim.ids.add(cid)
    f = tmp_path / "passed"
    f.write_text("through-fd-3")
    fd = os.open(str(f), os.O_RDONLY)
    try:
        p = subprocess.run([shim.binary, "--root", shim.root, *shim.extra, "run", "--preserve-fds", "1",
                            "--bundle", bundle.sh("cat <&3; ls /proc/self/fd | wc -l").path, cid],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           preexec_fn=lambda: os.dup2(fd, 3), pass_fds=(3,), timeout=60, input=b"")
    finally:
        os.close(fd)
    assert p.returncode == 0, p.stderr
    assert p.stdout.decode().startswith("through-fd-3")


def test_user_namespace_with_mappings(shim, bundle, cid):
    shim.ids.add(cid)
    bundle.config["linux"]["namespaces"].append({"type": "user"})
    bundle.config["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    bundle.config["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    # The mapped root (host uid 100000) must be able to reach the rootfs.
    d = bundle.path
    while d not in ("/", "/tmp"):
        os.chmod(d, os.stat(d).st_mode | 0o055)
        d = os.path.dirname(d)
    bundle.save()
    o = out(shim("run", "--bundle", bundle.sh("cat /proc/self/uid_map; id -u").path, cid))
    assert "100000" in o
    assert o.split()[-1] == "0"


def test_join_existing_network_namespace(shim, bundle, cid, tmp_path):
    shim.ids.add(cid)
    # The default policy (network.mode internal) replaces a prepared netns; passthrough keeps it.
    looser_policy(shim, tmp_path, {"network": {"mode": "passthrough"}})
    ns = "asns" + cid[-6:]
    run(["ip", "netns", "add", ns], check=True)
    try:
        run(["ip", "-n", ns, "link", "add", "dummy0", "type", "veth", "peer", "name", "dummy1"], check=True)
        for n in bundle.config["linux"]["namespaces"]:
            if n["type"] == "network":
                n["path"] = f"/var/run/netns/{ns}"
        bundle.save()
        o = out(shim("run", "--bundle", bundle.sh("ls /sys/class/net").path, cid))
        assert "dummy0" in o
    finally:
        run(["ip", "netns", "del", ns])


def test_supervisor_sigkill_takes_the_container_down(shim, bundle, cid):
    shim.ids.add(cid)
    pidfile = os.path.join(bundle.path, "sup.pid")
    shim("run", "--detach", "--pid-file", pidfile, "--bundle", bundle.args("sleep", "100").path, cid, check=True)
    st = wait_status(shim, cid, "running")
    sup = int(open(pidfile).read())
    assert sup != st["pid"]
    os.kill(sup, signal.SIGKILL)
    deadline = time.time() + 10
    while time.time() < deadline and os.path.exists(f"/proc/{st['pid']}"):
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{st['pid']}"), "init survived its supervisor (PDEATHSIG)"
    assert shim.json("state", cid)["status"] == "stopped"
    shim("delete", cid, check=True)
    shim.ids.discard(cid)


def test_no_pivot_runs(shim, bundle, cid):
    shim.ids.add(cid)
    o = out(shim("run", "--no-pivot", "--bundle", bundle.sh("cat /etc/hostname 2>/dev/null; ls /").path, cid))
    assert "bin" in o
