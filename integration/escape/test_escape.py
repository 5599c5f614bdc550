"""The escape battery: each attack is one test per runtime column.

agentshim (default policy) must report BLOCKED for every attack; runc with a
Docker-like config is the comparison column: its tests only require that the
attack ran to a verdict. Every attempt is harmless if it succeeds (see
attack.c). Run one column with `-k agentshim` or `-k runc`.
"""
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from urllib.parse import unquote

import pytest

from conftest import wait_records

from escape_lib import (Verdict, attack_bin, check, esc, escape_rootfs, parse_verdict,  # noqa: F401 (fixtures)
                        run, write_results)

NS = ["user", "mnt", "pid", "net", "uts", "ipc", "cgroup", "time"]
CAPS = [(21, "CAP_SYS_ADMIN"), (25, "CAP_SYS_TIME"), (22, "CAP_SYS_BOOT"), (16, "CAP_SYS_MODULE"),
        (17, "CAP_SYS_RAWIO"), (12, "CAP_NET_ADMIN"), (2, "CAP_DAC_READ_SEARCH"), (19, "CAP_SYS_PTRACE"),
        (13, "CAP_NET_RAW"), (27, "CAP_MKNOD")]


# The host's namespaces (inode numbers): attacks that would be harmful in a
# host namespace check they are not in one before acting.
HOST_NS = {t: os.stat(f"/proc/self/ns/{t}").st_ino for t in ("net", "pid", "uts")}


class A:
    def __init__(self, name, title, argv, user=None):
        self.name, self.title, self.argv, self.user = name, title, argv, user


ATTACKS = [
    A("rootfs_write", "create and write a file on the root filesystem", ["rootfs_write"]),
    A("rootfs_overwrite_binary", "open an image binary (/bin/busybox) for writing", ["rootfs_overwrite_binary"]),
    A("remount_root_rw", "remount / (read-write)", ["remount_root_rw"]),
    A("mount_tmpfs", "mount a tmpfs", ["mount_tmpfs"]),
    A("mount_proc", "mount a new proc", ["mount_proc"]),
    A("mount_bind", "bind-mount / elsewhere", ["mount_bind"]),
    A("mount_fsopen", "fsopen(\"tmpfs\") (new mount API)", ["mount_fsopen"]),
    A("mount_open_tree", "open_tree(OPEN_TREE_CLONE) of /", ["open_tree"]),
] + [A(f"unshare_{t}", f"unshare(CLONE_NEW{'NS' if t == 'mnt' else t.upper()})", ["unshare", t]) for t in NS] + [
    A("clone_newuser", "clone(CLONE_NEWUSER)", ["clone_newuser"]),
    A("clone3_newuser", "clone3(CLONE_NEWUSER)", ["clone3_newuser"]),
] + [A(f"setns_{t}", f"setns into a sibling's {t} namespace (/proc/<pid>/ns/{t})", ["setns", t]) for t in NS] + [
    A(f"cap_{n[4:].lower()}", f"{n} in the effective set", ["cap_bit", str(b), n]) for b, n in CAPS] + [
    A("ptrace_sibling", "PTRACE_ATTACH to a sibling the attacker forked", ["ptrace_sibling"]),
    A("process_vm_readv", "process_vm_readv of a sibling's memory", ["process_vm_readv"]),
    A("ptrace_traceme_setuid", "PTRACE_TRACEME, then exec a setuid-root binary (as uid 1000)",
      ["ptrace_traceme_setuid", "/bin/attack-suid"], user=1000),
    A("finit_module", "finit_module on an empty memfd", ["finit_module"]),
    A("init_module", "init_module with garbage", ["init_module"]),
    A("delete_module", "delete_module of a nonexistent module", ["delete_module"]),
    A("raw_socket", "raw IPv4 socket", ["raw_socket"]),
    A("packet_socket", "AF_PACKET socket", ["packet_socket"]),
    A("metadata_endpoint", "connect to 169.254.169.254:80 (1 s timeout)", ["metadata", str(HOST_NS["net"])]),
    A("proc_kcore", "read /proc/kcore", ["read_file", "/proc/kcore"]),
    A("proc_keys", "read /proc/keys", ["read_file", "/proc/keys"]),
    A("proc_timer_list", "read /proc/timer_list", ["read_file", "/proc/timer_list"]),
    A("proc_sys_hostname", "write /proc/sys/kernel/hostname (same value)",
      ["write_back", "/proc/sys/kernel/hostname"]),
    A("proc_sys_overcommit", "write /proc/sys/vm/overcommit_memory (same value)",
      ["write_back", "/proc/sys/vm/overcommit_memory"]),
    A("proc_sys_core_pattern", "write /proc/sys/kernel/core_pattern (same value)",
      ["write_back", "/proc/sys/kernel/core_pattern"]),
    A("proc_sysrq_trigger", "open /proc/sysrq-trigger for writing (never written)",
      ["open_write", "/proc/sysrq-trigger"]),
    A("sys_uevent_helper", "open /sys/kernel/uevent_helper for writing (never written)",
      ["open_write", "/sys/kernel/uevent_helper"]),
    A("sys_firmware", "list /sys/firmware", ["list_dir", "/sys/firmware"]),
    A("cgroup_mkdir", "create a directory in the container's own cgroups", ["cgroup_mkdir"]),
    A("cgroup_write", "write a control file of the container's own cgroup (same value)", ["cgroup_write"]),
    A("cgroup_release_agent", "open a cgroup v1 release_agent for writing (never written)", ["release_agent"]),
    A("mknod_block", "mknod of a block device (7:0)", ["mknod", "b", "7", "0"]),
    A("mknod_char", "mknod of a non-default char device (1:11, kmsg)", ["mknod", "c", "1", "11"]),
    A("dev_mem", "open /dev/mem (or mknod c 1:1 and open)", ["dev_open", "/dev/mem", "1", "1"]),
    A("dev_kmsg", "open /dev/kmsg (or mknod c 1:11 and open)", ["dev_open", "/dev/kmsg", "1", "11"]),
    A("keyctl_add_key", "add_key to the session keyring", ["keyctl"]),
    A("bpf_prog_load", "bpf(BPF_PROG_LOAD) of a trivial socket filter", ["bpf_prog"]),
    A("bpf_map_create", "bpf(BPF_MAP_CREATE)", ["bpf_map"]),
    A("bpf_host_maps", "the host's BPF maps (exec-argv announcements, ring buffers): pins, ids", ["bpf_host_maps"]),
    A("perf_event_open", "perf_event_open (software counter on self)", ["perf_event_open"]),
    A("userfaultfd", "userfaultfd", ["userfaultfd"]),
    A("io_uring_setup", "io_uring_setup", ["io_uring"]),
    A("personality_read_implies_exec", "personality(READ_IMPLIES_EXEC)", ["personality"]),
    A("modify_ldt", "modify_ldt (read)", ["modify_ldt"]),
    A("syslog_read", "syslog(SYSLOG_ACTION_READ_ALL)", ["syslog"]),
    A("sysctl_syscall", "_sysctl(2)", ["sysctl_syscall"]),
    A("swapon", "swapon of a nonexistent path (EPERM vs ENOENT)", ["swapon"]),
    A("acct", "acct of a nonexistent path (EPERM vs ENOENT)", ["acct"]),
    A("kexec_file_load", "kexec_file_load with bad fds (EPERM vs EBADF)", ["kexec_file_load"]),
    A("ioperm", "ioperm(0x80) / iopl(0)", ["ioperm"]),
    A("open_by_handle_at", "open_by_handle_at (the shocker shape)", ["open_by_handle_at"]),
] + [A(f"i386_{w}", f"int $0x80 (i386 ABI) {w}", ["i386", w]) for w in
     ["unshare_user", "unshare_mnt", "mount", "io_uring_setup", "userfaultfd", "add_key", "personality"]] + [
    A(f"x32_{w}", f"x32 ABI (__X32_SYSCALL_BIT) {w}", ["x32", w]) for w in ["unshare_user", "io_uring_setup", "mount"]] + [
    A("setuid_nnp", "exec a setuid-root binary as uid 1000", ["setuid_exec", "/bin/attack-suid"], user=1000),
    A("file_capability", "exec a cap_net_raw+ep file-capability binary as uid 1000, open a raw socket",
      ["fcap_exec", "/bin/attack-fcap"], user=1000),
    A("chroot_escape", "classic chroot breakout (chroot subdir, fchdir to a kept fd, chdir ..)", ["chroot_escape"]),
    A("proc_self_exe_write", "open /proc/self/exe for writing", ["self_exe_write"]),
]

assert len({a.name for a in ATTACKS}) == len(ATTACKS)


@pytest.mark.parametrize("a", ATTACKS, ids=[a.name for a in ATTACKS])
def test_attack(esc, a):
    b = esc.bundle()
    if a.user is not None:
        b.config["process"]["user"] = {"uid": a.user, "gid": a.user}
    v = esc.attack(b, *a.argv)
    check(a.name, a.title, esc, v)


# ---------------------------------------------------------------- network: the host's services


class TokenServer:
    """A TCP listener on the host's 127.0.0.1 that sends a token to anyone who connects."""

    def __init__(self, addr="127.0.0.1"):
        self.token = uuid.uuid4().hex
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((addr, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stop = False
        self.connections = 0
        self.t = threading.Thread(target=self.serve, daemon=True)
        self.t.start()

    def serve(self):
        while not self.stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            try:
                c.sendall(self.token.encode() + b"\n")
            finally:
                c.close()

    def close(self):
        self.stop = True
        self.t.join()
        self.sock.close()


@pytest.fixture
def token_server():
    s = TokenServer()
    yield s
    s.close()


def host_addresses():
    out = run(["ip", "-o", "-4", "addr", "show"], check=True).stdout.decode()
    addrs = []
    for line in out.splitlines():
        f = line.split()
        ip = f[3].split("/")[0]
        if not ip.startswith("127."):
            addrs.append(ip)
    return addrs


def test_host_loopback_service(esc, token_server):
    v = esc.attack(esc.bundle(), "host_tcp", str(token_server.port), token_server.token, "127.0.0.1")
    check("host_loopback_service", "connect to a service on the host's 127.0.0.1", esc, v)


def test_host_address_service(esc, token_server):
    addrs = host_addresses()
    if not addrs:
        pytest.skip("the host has no non-loopback IPv4 address to try")
    v = esc.attack(esc.bundle(), "host_tcp", str(token_server.port), token_server.token, *addrs)
    check("host_address_service", "connect to the host's own non-loopback addresses", esc, v)


def test_host_network_requested(esc, token_server):
    """The caller asks for the host's network namespace (docker run --network
    host). runc gives it; agentshim must refuse or replace it. Only the host's
    own addresses are contacted (never anything off the machine)."""
    b = esc.bundle()
    b.config["linux"]["namespaces"] = [n for n in b.config["linux"]["namespaces"] if n["type"] != "network"]
    v = esc.attack(b, "host_tcp", str(token_server.port), token_server.token, "127.0.0.1", *host_addresses())
    check("host_network_requested", "config asks for the host network namespace; reach the host's 127.0.0.1 service",
          esc, v, allow_refusal=True)


@pytest.fixture
def pod_link():
    """A network namespace as a CNI bridge plugin or Docker leaves it: eth0
    with an address and a default route to the node (the host end of a veth
    pair, 10.231.7.1)."""
    name = "aesc" + uuid.uuid4().hex[:8]
    host_if = "ve" + name[4:12]
    run(["ip", "netns", "add", name], check=True)
    try:
        run(["ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", name], check=True)
        run(["ip", "addr", "add", "10.231.7.1/30", "dev", host_if], check=True)
        run(["ip", "link", "set", host_if, "up"], check=True)
        for cmd in (["ip", "link", "set", "lo", "up"], ["ip", "link", "set", "eth0", "up"],
                    ["ip", "addr", "add", "10.231.7.2/30", "dev", "eth0"],
                    ["ip", "route", "add", "default", "via", "10.231.7.1"]):
            run(["ip", "netns", "exec", name, *cmd], check=True)
        yield f"/var/run/netns/{name}"
    finally:
        run(["ip", "link", "del", host_if])
        run(["ip", "netns", "delete", name])


def test_pod_network_direct_egress(esc, pod_link):
    """The caller hands the container a prepared network namespace (a pod's,
    Docker's bridge) with a route to the node. runc joins it and the attack
    reaches a service on the node's end of the link; agentshim keeps the
    namespace (network.mode confined) but its outbound rules refuse the
    direct connection (only the egress proxy and DNS stub on loopback)."""
    srv = TokenServer("10.231.7.1")
    try:
        b = esc.bundle()
        for n in b.config["linux"]["namespaces"]:
            if n["type"] == "network":
                n["path"] = pod_link
        v = esc.attack(b, "host_tcp", str(srv.port), srv.token, "10.231.7.1")
    finally:
        srv.close()
    check("pod_network_direct_egress",
          "in a caller-prepared (pod, Docker bridge) network namespace: connect directly to a service on the node",
          esc, v)


# ---------------------------------------------------------------- identity of the host


def test_sethostname(esc):
    before = socket.gethostname()
    v = esc.attack(esc.bundle(), "sethostname", str(HOST_NS["uts"]))
    assert socket.gethostname() == before
    check("sethostname", "sethostname (allowed only in a private UTS namespace: contained)", esc, v)


def secret_paths(esc):
    paths = [esc.audit_dir, os.path.join(esc.audit_dir, "keys"), os.path.join(esc.audit_dir, "ledger.ndjson"),
             "/var/lib/agentshim", "/etc/agentshim"]
    keys = os.path.join(esc.audit_dir, "keys")
    if os.path.isdir(keys):
        paths += [os.path.join(keys, k) for k in sorted(os.listdir(keys))]
    return paths


def test_audit_dir_and_signing_key(esc):
    # A first run makes agentshim create its audit dir and host key; the
    # runc column gets a directory of the same shape to look for.
    b = esc.bundle()
    esc.attack(b, "hello")
    os.makedirs(os.path.join(esc.audit_dir, "keys"), exist_ok=True)
    v = esc.attack(esc.bundle(), "find_paths", *secret_paths(esc))
    check("audit_dir_and_key", "find the audit dir / signing key, directly or via /proc/*/root", esc, v)


def test_tls_interception_key_and_secret(esc, tmp_path, monkeypatch):
    """A container whose egress proxy intercepts TLS (it asked for a
    credential) hunts for the run CA's private key (any PEM private key) and
    the credential's secret in every file it can see (the mounted CA bundle
    included) and in every visible process's environment and command line.
    The key lives only in the supervisor's memory, the secret only in the
    proxy's (docs/CREDENTIALS.md). The needles are passed reversed, so the
    attack's own command line never holds them. runc (no proxy, no CA) runs
    the same search for comparison."""
    secret = "sk-escape-battery-SECRET-" + uuid.uuid4().hex
    monkeypatch.setenv("AGENTSHIM_ESC_SECRET", secret)
    if esc.name == "agentshim":
        pol = os.path.join(str(tmp_path), "cred-policy.json")
        with open(pol, "w") as f:
            json.dump({"credentials": {"api": {
                "source": {"env": "AGENTSHIM_ESC_SECRET"},
                "placeholder_env": "API_TOKEN",
                "destinations": [{"host": "api.example.test", "port": 443}],
                "apply": {"header": "Authorization", "format": "Bearer {}"}}},
                "network": {"allow": ["api.example.test:443"]}}, f)
        esc.rt.extra += ["--policy", pol]
    b = esc.bundle()
    b.config.setdefault("annotations", {})["dev.agentshim.credentials"] = "api"
    b.save()
    v = esc.attack(b, "find_bytes", "/", "YEK ETAVIRP", secret[::-1])
    if esc.name == "agentshim":
        # The container did get interception: the bundle is there, certificates only.
        r = esc.attack(b, "find_paths", "/etc/agentshim-ca.pem")
        assert r.kind == "ESCAPED", r
    check("tls_interception_key_and_secret",
          "TLS interception: find the run CA's private key or the credential's secret in any visible file, "
          "environment or command line", esc, v)


# ---------------------------------------------------------------- the runtime and the supervisor


def newest_run(esc):
    wait_records(esc.audit_dir)
    runs = os.path.join(esc.audit_dir, "runs")
    assert os.path.isdir(runs) and os.listdir(runs), "no run record written"
    return max((os.path.join(runs, r) for r in os.listdir(runs)), key=os.path.getmtime)


def test_kill_everything_visible(esc):
    """SIGKILL every pid visible except self and 1, and kill(-1). The supervisor
    must not be visible, and (agentshim) must still write a complete record."""
    b = esc.bundle()
    v = esc.attack(b, "kill_all", str(HOST_NS["pid"]))
    check("kill_supervisor", "SIGKILL every visible pid and kill(-1): the supervisor must not be visible", esc, v)
    if esc.name == "agentshim":
        r = esc.rt("verify", newest_run(esc))
        assert r.returncode == 0 and b"VERIFIED" in r.stdout, r.stdout + r.stderr


def runtime_exe_attack(esc, exec_binary):
    st = os.stat(os.path.realpath(exec_binary))
    mtime = st.st_mtime_ns
    b = esc.bundle()
    cid, p, out, err = esc.start_background(b, "runtime_exe", str(st.st_dev), str(st.st_ino), "6")
    esc.wait_running(cid)
    t = time.time()
    while time.time() - t < 4:  # stop well before the attacker does: never race the container's exit
        run([exec_binary, "--root", esc.rt.root, *esc.rt.extra, "exec", cid, "/bin/attack", "hello"], timeout=30)
        time.sleep(0.1)
    p.wait(timeout=30)
    out.seek(0)
    err.seek(0)
    v = parse_verdict(subprocess.CompletedProcess([], p.returncode, out.read(), err.read()))
    assert os.stat(os.path.realpath(exec_binary)).st_mtime_ns == mtime, "the runtime binary changed!"
    return v


def test_runtime_exe_via_exec(esc):
    """CVE-2019-5736 shape: while `exec` enters the container, the attacker
    grabs /proc/<pid>/exe of the runtime's process and tries to reopen the
    host's runtime binary for writing (never writes)."""
    v = runtime_exe_attack(esc, esc.binary)
    check("runtime_exe_overwrite", "reopen the host runtime binary via /proc/<pid>/exe during exec (CVE-2019-5736)",
          esc, v)


def test_runtime_exe_after_upgrade(esc, tmp_path):
    """The same, after the runtime binary was replaced on the host (a package
    upgrade: a new inode) while the container runs: `exec` now runs a file
    no long-lived process keeps busy. The new binary is a private copy the
    test made, so nothing real is at risk (and nothing is ever written)."""
    copy = str(tmp_path / ("upgraded-" + os.path.basename(esc.binary)))
    shutil.copy2(os.path.realpath(esc.binary), copy)
    v = runtime_exe_attack(esc, copy)
    check("runtime_exe_overwrite_upgraded", "the same with the runtime binary replaced (upgrade) while the container runs",
          esc, v)


def test_symlink_mount_target(esc, tmp_path):
    """A mount destination that is a symlink pointing outside the rootfs: the
    runtime must resolve it inside the rootfs, never create anything on the host."""
    target = tmp_path / "host-target"
    target.mkdir()
    src = tmp_path / "bind-src"
    src.write_text("bind source\n")
    b = esc.bundle()
    up = "/.." * 24
    os.symlink(up + str(target), os.path.join(b.rootfs, "tmp", "x"))
    os.symlink(up + str(target), os.path.join(b.rootfs, "tmp", "y"))
    b.config["mounts"] += [
        {"destination": "/tmp/x/newdir", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m"]},
        {"destination": "/tmp/y/file", "type": "bind", "source": str(src), "options": ["bind", "ro"]},
    ]
    b.save()
    v = esc.attack(b, "hello")
    created = sorted(os.listdir(target))
    if created:
        v = Verdict("ESCAPED", f"the runtime created {created} in the host directory the symlink points to")
    elif v.kind == "START_FAILED":
        v = Verdict("BLOCKED", "runtime refused the symlinked mount destination: " + v.detail)
    elif v.kind == "BLOCKED":
        v = Verdict("BLOCKED", "mounts resolved inside the rootfs; the host target is untouched")
    check("symlink_mount_target", "mount destination is a symlink pointing outside the rootfs", esc, v)


# ---------------------------------------------------------------- resources


def test_fork_bomb_pids_limit(esc):
    b = esc.bundle()
    b.config["linux"]["resources"]["pids"] = {"limit": 64}
    v = esc.attack(b, "fork_bomb", "1024", timeout=90)
    check("fork_bomb_pids_limit", "fork bomb in a container with pids.limit 64", esc, v)
    if esc.name == "agentshim" or v.kind == "BLOCKED":
        assert "after" in v.detail and int(v.detail.split("after ")[1].split()[0]) <= 64
    run(["true"], check=True)  # the host still forks


def test_fork_bomb_no_limit_in_config(esc):
    b = esc.bundle()
    v = esc.attack(b, "fork_bomb", "1024", timeout=90)
    check("fork_bomb_no_config_limit", "fork bomb, config sets no pids limit (stopped at the test's cap of 1024)",
          esc, v)


def test_memory_hog_limit(esc):
    b = esc.bundle()
    b.config["linux"]["resources"]["memory"] = {"limit": 64 << 20, "swap": 64 << 20}
    v = esc.attack(b, "memory_hog", "256", timeout=90)
    check("memory_limit_64m", "allocate 256 MiB under a 64 MiB memory limit (OOM-killed in its cgroup)", esc, v)
    if esc.name == "agentshim":
        # The record says so: an `oom` event or run.exit's oom_kills (docs/FORMATS.md).
        events = [json.loads(l) for l in open(os.path.join(newest_run(esc), "events.ndjson"))]
        ooms = [e for e in events if e.get("type") == "oom" or
                (e.get("type") == "run.exit" and int(e.get("data", e).get("oom_kills", 0) or 0) > 0)]
        assert ooms, f"no OOM in the record: {[e.get('type') for e in events]}"


def test_memory_hog_no_limit_in_config(esc):
    b = esc.bundle()
    v = esc.attack(b, "memory_hog", "256", timeout=90)
    check("memory_no_config_limit", "allocate 256 MiB, config sets no memory limit", esc, v)


def default_tmpfs_mib():
    """A tmpfs without size= gets half of RAM."""
    with open("/proc/meminfo") as f:
        kib = int(next(l for l in f if l.startswith("MemTotal:")).split()[1])
    return kib // 2 // 1024


def test_tmpfs_exhaustion_sized(esc):
    b = esc.bundle()
    b.config["mounts"].append({"destination": "/scratch", "type": "tmpfs", "source": "tmpfs",
                               "options": ["nosuid", "nodev", "size=8m"]})
    v = esc.attack(b, "tmpfs_fill", "/scratch", "64")
    check("tmpfs_exhaustion_sized", "fill a size=8m tmpfs (write until ENOSPC, cap 64 MiB)", esc, v)


def test_tmpfs_exhaustion_unsized(esc):
    b = esc.bundle()
    b.config["mounts"].append({"destination": "/scratch", "type": "tmpfs", "source": "tmpfs",
                               "options": ["nosuid", "nodev"]})
    v = esc.attack(b, "tmpfs_fill", "/scratch", "96", str(default_tmpfs_mib()))
    check("tmpfs_exhaustion_unsized", "fill a tmpfs mounted without a size (cap 96 MiB)", esc, v)


# ---------------------------------------------------------------- the operator's terminal and process group


def run_on_pty(esc, argv, timeout=60):
    """Run a runtime command as an operator's interactive shell would: in a
    new session whose controlling terminal is a real pty (python pty +
    setsid + TIOCSCTTY in the child that execs the runtime), with that pty
    as stdin. A canary process waits in the same process group for a
    SIGWINCH. Returns (verdict of the attack's stdout, the bytes found in the
    terminal's input queue afterwards, whether the canary got the signal)."""
    import fcntl
    import signal
    import termios
    import tty
    master, slave = os.openpty()
    tty.setraw(slave)  # the input queue reads back byte by byte, no line editing
    canary = os.path.join(str(esc.tmp), f"canary-{uuid.uuid4().hex[:8]}")
    out = os.path.join(str(esc.tmp), "pty-out")
    err = os.path.join(str(esc.tmp), "pty-err")
    pid = os.fork()
    if pid == 0:  # pragma: no cover (child)
        try:
            os.setsid()
            fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
            signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGWINCH])
            if os.fork() == 0:
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
                got = signal.sigtimedwait([signal.SIGWINCH], timeout)
                with open(canary, "w") as f:
                    f.write("got" if got else "none")
                os._exit(0)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGWINCH])
            os.dup2(slave, 0)
            os.dup2(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 1)
            os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 2)
            os.closerange(3, 4096)
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    try:
        end = time.time() + timeout
        while True:
            wpid, st = os.waitpid(pid, os.WNOHANG)
            if wpid:
                break
            if time.time() > end:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                st = -1
                break
            time.sleep(0.05)
        os.set_blocking(slave, False)
        queued = b""
        try:
            while True:
                chunk = os.read(slave, 4096)
                if not chunk:
                    break
                queued += chunk
        except BlockingIOError:
            pass
        # The canary: it reports within its timeout; after the runtime is
        # gone it only waits for the signal that did not come.
        for _ in range(200):
            if os.path.exists(canary) and os.path.getsize(canary):
                break
            time.sleep(0.05)
        got = open(canary).read() == "got" if os.path.exists(canary) else False
    finally:
        os.close(master)
        os.close(slave)
    with open(out, "rb") as f, open(err, "rb") as e:
        r = subprocess.CompletedProcess(argv, os.waitstatus_to_exitcode(st) if st != -1 else -1, f.read(), e.read())
    return parse_verdict(r), queued, got


def runtime_argv(esc, *args):
    return [esc.binary, "--root", esc.rt.root, *esc.rt.extra, *args]


def judge_terminal(v, queued, marker):
    if marker.encode() in queued:
        return Verdict("ESCAPED", f"{queued!r} is in the operator's terminal input queue (its shell would run it)")
    return v


def test_tiocsti_operator_terminal(esc):
    """`run` from an interactive shell, terminal false: TIOCSTI into the
    operator's terminal (through /dev/tty or an inherited stdio tty)."""
    b = esc.bundle()
    b.args("/bin/attack", "tty_inject", "echo pwned")
    cid = esc.cid()
    v, queued, _ = run_on_pty(esc, runtime_argv(esc, "run", "--bundle", b.path, cid))
    esc.rt("delete", "--force", cid)
    check("tiocsti_operator_terminal", "TIOCSTI into the operator's terminal (`run` from a shell, terminal false)", esc,
          judge_terminal(v, queued, "echo pwned"))


def start_paused(esc, secs="30"):
    b = esc.bundle()
    cid, p, out, err = esc.start_background(b, "pause", secs)
    esc.wait_running(cid)
    return cid, p


def test_tiocsti_operator_terminal_exec(esc):
    cid, p = start_paused(esc)
    v, queued, _ = run_on_pty(esc, runtime_argv(esc, "exec", cid, "/bin/attack", "tty_inject", "echo pwned"))
    esc.rt("kill", cid, "KILL")
    p.wait(timeout=30)
    check("tiocsti_operator_terminal_exec", "TIOCSTI into the operator's terminal through `exec` (terminal false)", esc,
          judge_terminal(v, queued, "echo pwned"))


def test_tioclinux_operator_terminal(esc):
    b = esc.bundle()
    b.args("/bin/attack", "tty_linux")
    cid = esc.cid()
    v, _, _ = run_on_pty(esc, runtime_argv(esc, "run", "--bundle", b.path, cid))
    esc.rt("delete", "--force", cid)
    check("tioclinux_operator_terminal", "TIOCLINUX on the operator's terminal", esc, v)


def judge_group(v, got):
    if got:
        return Verdict("ESCAPED", "a process in the caller's process group received the container's SIGWINCH")
    return v


def test_kill_caller_process_group(esc):
    """kill(0, SIGWINCH) / kill(-pgrp) from the init must not reach a canary
    in the process group of the caller of `run`."""
    b = esc.bundle()
    b.args("/bin/attack", "kill_group")
    cid = esc.cid()
    v, _, got = run_on_pty(esc, runtime_argv(esc, "run", "--bundle", b.path, cid), timeout=20)
    esc.rt("delete", "--force", cid)
    check("kill_caller_process_group", "kill(0, sig) from the init reaches the caller's process group", esc,
          judge_group(v, got))


def test_kill_caller_process_group_exec(esc):
    cid, p = start_paused(esc)
    v, _, got = run_on_pty(esc, runtime_argv(esc, "exec", cid, "/bin/attack", "kill_group"), timeout=20)
    esc.rt("kill", cid, "KILL")
    p.wait(timeout=30)
    check("kill_caller_process_group_exec", "kill(0, sig) from an exec'd process reaches the caller's process group",
          esc, judge_group(v, got))


# ---------------------------------------------------------------- the supervisor's exec observer and records


def inotify_opens(path):
    """An inotify watch for IN_OPEN on path; returns (fd, read_events)."""
    import ctypes
    import ctypes.util
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    assert fd >= 0
    IN_OPEN, IN_ACCESS = 0x20, 0x01
    assert libc.inotify_add_watch(fd, path.encode(), IN_OPEN | IN_ACCESS) >= 0

    def events():
        try:
            return os.read(fd, 65536)
        except BlockingIOError:
            return b""
    return fd, events


def test_observer_opens_non_regular_file(esc, tmp_path):
    """execve of a FIFO on a writable volume (directly and through a
    symlink), of a symlink to /proc/kmsg and of /dev/null: the kernel refuses
    every one (EACCES), but a supervisor that inspects the path first must
    not open any of them. The FIFO is a canary: an inotify watch sees any
    open of it from the host."""
    vol = tmp_path / "vol"
    vol.mkdir()
    fifo = str(vol / "canary")
    os.mkfifo(fifo, 0o777)
    os.symlink("/vol/canary", str(vol / "to-canary"))
    os.symlink("/proc/kmsg", str(vol / "to-kmsg"))
    b = esc.bundle()
    b.config["mounts"].append({"destination": "/vol", "type": "bind", "source": str(vol), "options": ["rbind", "rw"]})
    b.save()
    ifd, events = inotify_opens(fifo)
    try:
        v = esc.attack(b, "exec_nonregular", "/vol/canary", "/vol/to-canary", "/vol/to-kmsg", "/dev/null")
        ev = events()
    finally:
        os.close(ifd)
    if ev:
        v = Verdict("ESCAPED", f"the FIFO canary was opened ({len(ev) // 16} inotify events) during the container's exec")
    elif v.kind == "BLOCKED" and esc.name == "agentshim":
        execs = [json.loads(l) for l in open(os.path.join(newest_run(esc), "events.ndjson"))]
        execs = [e.get("data", e) for e in execs if e.get("type") in ("process.exec", "process.exec_failed")]
        kmsg = [e for e in execs if "to-kmsg" in e.get("path", "")]
        assert kmsg, f"the observer did not report the exec of /vol/to-kmsg: {execs}"
        if "sha256" in json.dumps(kmsg[0]):
            v = Verdict("ESCAPED", "the supervisor opened and read /proc/kmsg (a destructive read) to hash it")
    check("observer_non_regular_file", "exec of a FIFO / symlink to /proc/kmsg / device: the supervisor must not open it",
          esc, v)


def test_exec_session_recorded_identity(esc):
    """Record evasion through `exec` (what an agent platform's tool calls
    are): a program started by `exec`, and one its shell starts in the
    background, must be in the record with the session of their caller.exec
    and the SHA-256 of the real binary (sha256 of the file in the bundle);
    a PATH lookup's misses must not pass for programs that ran. runc keeps
    no record: nothing an exec runs is written anywhere."""
    import hashlib
    cid, p = start_paused(esc)
    real = hashlib.sha256(open(os.path.join(esc.bundles[-1], "rootfs", "bin", "attack"), "rb").read()).hexdigest()
    r1 = esc.rt("exec", cid, "/bin/attack", "pause", "0", timeout=30)
    r2 = esc.rt("exec", cid, "sh", "-c", "/bin/attack pause 0 & wait; env no-such-tool-xyz; true", timeout=30)
    esc.rt("kill", cid, "KILL")
    p.wait(timeout=30)
    v = parse_verdict(r1)
    assert v.kind == "BLOCKED" and r2.returncode == 0, (r1, r2)
    if esc.name != "agentshim":
        v = Verdict("ESCAPED", "runc keeps no record: what an exec ran is written nowhere")
    else:
        rd = newest_run(esc)
        events = [json.loads(l) for l in open(os.path.join(rd, "events.ndjson"))]
        sessions = [e["data"]["session"] for e in events if e["type"] == "caller.exec"]
        execs = [e["data"] for e in events if e["type"] == "process.exec"]
        ran = [[e for e in execs if e.get("session") == s and e.get("path") == "/bin/attack"] for s in sessions]
        faked = [e for e in execs if "no-such-tool-xyz" in e.get("path", "")]
        if len(sessions) != 2 or any(len(r) != 1 for r in ran):
            v = Verdict("ESCAPED", f"an exec'd /bin/attack is missing from its session's record: {execs}")
        elif any(r[0].get("sha256") != real for r in ran):
            v = Verdict("ESCAPED", f"recorded identity {[r[0].get('sha256') for r in ran]} is not the real {real}")
        elif faked:
            v = Verdict("ESCAPED", f"a PATH miss is recorded as a program that ran: {faked[0]}")
        else:
            r = esc.rt("verify", rd)
            assert r.returncode == 0 and r.stdout == b"VERIFIED\n", r.stdout + r.stderr
            v = Verdict("BLOCKED", "both exec'd programs recorded with their session and real SHA-256")
    check("exec_session_identity", "programs started by `exec` recorded with their session and real SHA-256",
          esc, v)


def test_runs_show_escape_codes(esc):
    """argv with terminal escape codes (erase line, cursor up, set title, the
    8-bit CSI): `runs show` must print them escaped. runc keeps no record:
    its column is the plain fact that nothing is shown."""
    b = esc.bundle()
    v = esc.attack(b, "exec_escape_argv")
    if esc.name == "agentshim":
        r = esc.rt("runs", "show", newest_run(esc))
        assert r.returncode == 0, r.stderr
        raw = [c for c in r.stdout if c < 0x20 and c != 0x0a or c == 0x7f]
        if raw or b"\xc2\x9b" in r.stdout:
            v = Verdict("ESCAPED", f"`runs show` printed {len(raw)} raw control bytes from the container")
        else:
            assert b"\\x1b[2K" in r.stdout, r.stdout
            assert json.loads(esc.rt("runs", "show", "--json", newest_run(esc)).stdout)  # JSON stays exact
    elif v.kind == "BLOCKED":
        v = Verdict("BLOCKED", "runc keeps no run record to show")
    check("runs_show_escape_codes", "terminal escape codes in argv printed by `runs show`", esc, v)


# ---------------------------------------------------------------- record evasion: what ran is what is recorded


def rec_attack(esc, tmp_path, *argv, tmpfs=False, vol_tmpfs=False, prefill=None):
    """Run a record-evasion attack with a writable volume at /vol (and a
    tmpfs at /scratch). Returns (verdict, events or None for runc, rec.log
    lines as [idx, arg, size], the real /bin/attack bytes). vol_tmpfs: the
    volume's host directory is a tmpfs (unmounted by the caller, see
    unmount_vol); prefill: {name: bytes} written into it first."""
    vol = tmp_path / "vol"
    vol.mkdir()
    if vol_tmpfs:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(vol)], check=True)
    os.chmod(str(vol), 0o777)
    for name, data in (prefill or {}).items():
        (vol / name).write_bytes(data)
        os.chmod(str(vol / name), 0o666)
    b = esc.bundle()
    b.config["mounts"].append({"destination": "/vol", "type": "bind", "source": str(vol), "options": ["rbind", "rw"]})
    if tmpfs:
        b.config["mounts"].append({"destination": "/scratch", "type": "tmpfs", "source": "tmpfs",
                                   "options": ["size=64m", "mode=1777"]})
    b.save()
    v = esc.attack(b, *argv)
    attack = open(os.path.join(b.path, "rootfs", "bin", "attack"), "rb").read()
    log = []
    if os.path.exists(str(vol / "rec.log")):
        log = [line.split(" ") for line in open(str(vol / "rec.log")).read().splitlines()]
    if esc.name != "agentshim":
        return v, None, log, attack
    events = [json.loads(line) for line in open(os.path.join(newest_run(esc), "events.ndjson"))]
    return v, events, log, attack


def unmount_vol(tmp_path):
    subprocess.run(["umount", "-l", str(tmp_path / "vol")], check=False)


def run_changes(esc):
    with open(os.path.join(newest_run(esc), "changes.ndjson")) as f:
        return [json.loads(line) for line in f]


def sha(b):
    import hashlib
    return hashlib.sha256(b).hexdigest()


def execs_of(events, kind="process.exec"):
    return [e["data"] for e in events if e["type"] == kind]


def no_record(esc):
    return Verdict("ESCAPED", "runc keeps no record: what ran is written nowhere")


def argv_race_verdict(events, tag, real, received):
    """The verdict on execs tagged `tag` (argv [/bin/attack, tag, idx, arg])
    whose argument another thread rewrote: `real` {idx: what the program
    reported}, received(arg, report): the recorded arg is what it got. With
    the exec observer's BPF program (exec.watch argv "bpf") every argv must
    be its copy; without it an argv may be the caller's only if it says so
    (argv_source "caller": the program was gone before its image was read)."""
    bpf = any(e["type"] == "exec.watch" and e["data"].get("argv") == "bpf" for e in events)
    ran = [e for e in execs_of(events) if e.get("argv", [None])[1:2] == [tag]]
    kernel = [e for e in ran if e.get("argv_source") in ("bpf", "image")]
    wrong = [e for e in kernel if not received(unquote(e["argv"][3]), real.get(e["argv"][2]))]
    if len(ran) != len(real) or not real:
        return Verdict("ESCAPED", f"{len(real)} programs ran, {len(ran)} recorded")
    if wrong:
        return Verdict("ESCAPED", f"recorded argv {wrong[0]['argv']} is not what the program got "
                                  f"({real.get(wrong[0]['argv'][2])})")
    if bpf and any(e.get("argv_source") != "bpf" for e in ran):
        n = sum(1 for e in ran if e.get("argv_source") != "bpf")
        return Verdict("ESCAPED", f"{n} of {len(ran)} argv not the kernel's copy although the BPF program "
                                  f"was loaded")
    sources = ", ".join(sorted({e.get("argv_source") for e in kernel})) or "none"
    caller = [e for e in ran if e not in kernel]
    off = sum(1 for e in caller if not received(unquote(e["argv"][3]), real.get(e["argv"][2])))
    rest = f"; the rest marked argv_source caller ({off} of them not what the program got)" if caller else ""
    return Verdict("BLOCKED", f"{len(kernel)} of {len(ran)} argv as the program received them ({sources}), "
                              f"all right{rest}")


def test_rec_argv_race(esc, tmp_path):
    """argv rewritten by another thread while execve runs: the recorded argv
    must be the one the new program received (the kernel's copy, or read
    from the new image), or say it is the caller's (argv_source "caller",
    only without the BPF program: the program was gone before its image
    could be read)."""
    v, events, log, _ = rec_attack(esc, tmp_path, "rec_argv_race", "40")
    if events is not None:
        real = {line[0]: line[1] for line in log}
        v = argv_race_verdict(events, "rec_note", real, lambda arg, got: arg == got)
        evil = sum(1 for a in real.values() if a != "benign")
        v = Verdict(v.kind, f"{v.detail} ({evil} raced)")
    elif v.kind == "BLOCKED":
        v = no_record(esc)
    check("rec_argv_race", "argv rewritten by another thread during execve: the record has what the program got",
          esc, v)


def arg_hash(s):
    """attack.c's arg_hash: what `rec_exit` exits with."""
    h = 0
    for b in s.encode("latin-1"):
        h = (h * 31 + b) & 0xffffffff
    return h & 0xff


def test_rec_argv_exit_race(esc, tmp_path):
    """argv rewritten by another thread while execve runs a program that
    exits at once (its first act is _exit with a hash of the argument it
    got, which the parent logs): the recorded argv must be what it
    received, for every exec."""
    v, events, log, _ = rec_attack(esc, tmp_path, "rec_argv_exit_race", "200")
    if events is not None:
        real = {line[0]: int(line[1]) for line in log}
        v = argv_race_verdict(events, "rec_exit", real, lambda arg, got: arg_hash(arg) == got)
        evil = sum(1 for st in real.values() if st != arg_hash("benign"))
        v = Verdict(v.kind, f"{v.detail} ({evil} raced)")
    elif v.kind == "BLOCKED":
        v = no_record(esc)
    check("rec_argv_exit_race", "argv rewritten by another thread during execve of a program that exits at once: "
          "the record has what it got", esc, v)


def test_rec_symlink_swap(esc, tmp_path):
    """A symlink swapped between two different binaries while execve runs:
    each recorded identity must be the file that ran (its size, which the
    program reports, and its SHA-256)."""
    v, events, log, attack = rec_attack(esc, tmp_path, "rec_symlink_swap", "40")
    if events is not None:
        by_size = {len(attack): sha(attack), len(attack) + 1: sha(attack + b"X")}
        real = {line[0]: int(line[2]) for line in log}
        ran = [e for e in execs_of(events) if e.get("argv", [None])[1:2] == ["rec_note"]]
        wrong = [e for e in ran if e.get("sha256") != by_size.get(real.get(e["argv"][2]))]
        if len(ran) != len(real) or not real:
            v = Verdict("ESCAPED", f"{len(real)} programs ran, {len(ran)} recorded")
        elif wrong:
            v = Verdict("ESCAPED", f"recorded {wrong[0].get('sha256')} ({wrong[0].get('resolved')}) for a program "
                                   f"of {real.get(wrong[0]['argv'][2])} bytes")
        else:
            both = len(set(real.values()))
            v = Verdict("BLOCKED", f"{len(ran)} execs through a swapped symlink ({both} different files ran), "
                                   "each recorded with the file that ran")
    elif v.kind == "BLOCKED":
        v = no_record(esc)
    check("rec_symlink_swap", "a symlink swapped during execve: the record names the file that ran", esc, v)


def test_rec_long_cwd(esc, tmp_path):
    """A relative exec from a working directory longer than PATH_MAX."""
    v, events, log, attack = rec_attack(esc, tmp_path, "rec_long_cwd")
    if events is not None:
        ran = [e for e in execs_of(events) if e.get("argv", [None])[-1:] == ["longcwd"]]
        if not log or len(ran) != 1:
            v = Verdict("ESCAPED", f"program ran: {bool(log)}; recorded: {ran}")
        elif ran[0].get("sha256") != sha(attack + b"XX"):
            v = Verdict("ESCAPED", f"recorded {ran[0].get('sha256')} / {ran[0].get('error')}, "
                                   f"not the real {sha(attack + b'XX')}")
        else:
            v = Verdict("BLOCKED", "the program run from a cwd over PATH_MAX recorded with its real SHA-256")
    elif v.kind == "BLOCKED":
        v = no_record(esc)
    check("rec_long_cwd", "exec from a cwd longer than PATH_MAX: the record names the file that ran", esc, v)


def test_rec_shebang_chain(esc, tmp_path):
    """/vol/a (#!/vol/b2) -> /vol/b2 (#!/bin/attack) -> the ELF: every file
    of the chain named and hashed, in order."""
    v, events, log, attack = rec_attack(esc, tmp_path, "rec_shebang")
    if events is not None:
        ran = [e for e in execs_of(events) if e.get("path") == "/vol/a"]
        want = [("/vol/a", sha(b"#!/vol/b2\n")), ("/vol/b2", sha(b"#!/bin/attack\n")), ("/bin/attack", sha(attack))]
        got = [(f.get("path"), f.get("sha256")) for f in (ran[0].get("files", []) if ran else [])]
        if len(ran) != 1 or got[:3] != want:
            v = Verdict("ESCAPED", f"recorded chain {got or ran} is not {want}")
        else:
            v = Verdict("BLOCKED", "script, interpreter script and ELF recorded with their SHA-256, in order")
    elif v.kind == "BLOCKED":
        v = no_record(esc)
    check("rec_shebang_chain", "nested #! chain a -> b -> ELF: every file named and hashed", esc, v)


def test_rec_memfd_exec(esc, tmp_path):
    """A memfd executed through /proc/self/fd/N and execveat(AT_EMPTY_PATH)."""
    v, events, log, attack = rec_attack(esc, tmp_path, "rec_memfd")
    if events is not None:
        ran = [e for e in execs_of(events) if e.get("argv", [None])[-1:] in (["procfd"], ["execveat"])]
        real = sha(attack + b"XXX")
        if len(log) != 2 or len(ran) != 2:
            v = Verdict("ESCAPED", f"{len(log)} memfd programs ran, recorded: {ran}")
        elif any(e.get("sha256") != real for e in ran):
            v = Verdict("ESCAPED", f"recorded {[e.get('sha256') or e.get('error') for e in ran]}, not {real}")
        else:
            v = Verdict("BLOCKED", "both memfd execs recorded with the memfd's real SHA-256")
    elif v.kind == "BLOCKED":
        v = no_record(esc)
    check("rec_memfd_exec", "memfd exec (/proc/self/fd/N, execveat AT_EMPTY_PATH): hashed from the file itself",
          esc, v)


def test_rec_hash_cache_poison(esc, tmp_path):
    """Hash-cache poisoning: exec while a shared writable mapping is held
    (ETXTBSY), rewrite through the mapping (tmpfs: no mtime change), unmap,
    exec: the recorded hash must be the new content's."""
    v, events, log, attack = rec_attack(esc, tmp_path, "rec_cache_poison", tmpfs=True)
    if events is not None:
        needle = b"usage: attack NAME"
        i = attack.index(needle)
        payload = attack[:i + 17] + b"F" + attack[i + 18:]
        ran = [e for e in execs_of(events) if e.get("argv", [None])[-1:] == ["after"]]
        early = [e for e in execs_of(events) if e.get("argv", [None])[-1:] == ["before"]]
        if len(ran) != 1 or not any(line[1] == "after" for line in log):
            v = Verdict("ESCAPED", f"the rewritten program ran: {log}; recorded: {ran}")
        elif ran[0].get("sha256") != sha(payload):
            v = Verdict("ESCAPED", f"recorded {ran[0].get('sha256')}, the program that ran is {sha(payload)}"
                                   f"{' (the stale cached hash)' if ran[0].get('sha256') == sha(attack) else ''}")
        elif early:
            v = Verdict("ESCAPED", f"the exec refused with ETXTBSY is recorded as a program that ran: {early[0]}")
        else:
            v = Verdict("BLOCKED", "the rewritten file recorded with its new SHA-256; the ETXTBSY exec as a failure")
    elif v.kind == "BLOCKED":
        v = no_record(esc)
    check("rec_hash_cache_poison", "hash-cache poisoning through a shared writable mapping of a tmpfs file",
          esc, v)


def test_rec_tmpfs_stage(esc, tmp_path):
    """Stage a payload on a tmpfs, run it, delete it: the record must name
    the tmpfs as a tree, the payload's exec with its real SHA-256, and the
    file's creation, writing and removal (no walk ever sees the file)."""
    v, events, log, attack = rec_attack(esc, tmp_path, "rec_tmpfs_stage", tmpfs=True)
    if events is not None:
        real = sha(attack + b"XXXX")
        ran = [e for e in execs_of(events) if e.get("argv", [None])[-1:] == ["staged"]]
        roots = [e["data"] for e in events if e["type"] == "fs.root"]
        trees = {t["name"] for r in roots for t in r["trees"]}
        files = [(e["type"], e["data"].get("path")) for e in events if e["type"].startswith("file.")]
        want = [("file.created", "/scratch/stage/payload"), ("file.written", "/scratch/stage/payload"),
                ("file.removed", "/scratch/stage/payload")]
        if not log or len(ran) != 1 or ran[0].get("sha256") != real:
            v = Verdict("ESCAPED", f"the staged payload ran ({bool(log)}); recorded: {ran}")
        elif "/scratch" not in trees:
            v = Verdict("ESCAPED", f"the tmpfs /scratch is not a tree of the record: {sorted(trees)}")
        elif any(w not in files for w in want):
            v = Verdict("ESCAPED", f"the payload's creation and removal are not in the record: {files}")
        else:
            r = esc.rt("verify", newest_run(esc))
            assert r.returncode == 0 and r.stdout == b"VERIFIED\n", r.stdout + r.stderr
            v = Verdict("BLOCKED", "tmpfs tracked; payload exec hashed; created, written and removed recorded")
    elif v.kind == "BLOCKED":
        v = no_record(esc)
    check("rec_tmpfs_stage", "payload staged on a tmpfs, executed and deleted within the run", esc, v)


def test_rec_volume_names(esc, tmp_path):
    """Names created and removed on a volume within the run (a directory, a
    file created O_RDONLY, a symlink, a hard link, a rename there and back):
    no walk sees them and no file is written. The record must name each
    (the BPF LSM entry programs, or where the kernel refuses those the
    fanotify fallback), or say that the volume's entries are not watched."""
    v, events, log, attack = rec_attack(esc, tmp_path, "rec_volume_names")
    if events is not None and v.kind == "BLOCKED":
        s = "/vol/stage"
        want = [("file.created", s), ("file.created", s + "/payload"), ("file.created", s + "/sym"),
                ("file.created", s + "/hard"), ("file.moved", s + "/payload"), ("file.moved", s + "/moved"),
                ("file.removed", s + "/sym"), ("file.removed", s + "/hard"), ("file.removed", s + "/payload"),
                ("file.removed", s)]
        files = [(e["type"], e["data"].get("path")) for e in events if e["type"].startswith("file.")]
        watch = next((e["data"] for e in events if e["type"] == "fs.watch" and "marked" in e["data"]), {})
        vol = {t["name"]: t for e in events if e["type"] == "fs.root" and e["data"]["phase"] == "after"
               for t in e["data"]["trees"]}.get("/vol", {})
        missing = [w for w in want if w not in files]
        if not missing:
            v = Verdict("BLOCKED", "every name created, moved and removed on the volume is recorded")
        elif (watch.get("entries") != "lsm" and watch.get("entries_error")
              and vol.get("writes", {}).get("watch") == "mount"):
            v = Verdict("BLOCKED", "STATED, not recorded: the record says /vol's entries are not watched "
                                   f"(fs.watch entries_error: {watch['entries_error']})")
        else:
            v = Verdict("ESCAPED", f"not in the record: {missing}")
    elif events is None and v.kind == "BLOCKED":
        v = no_record(esc)
    check("rec_volume_names", "names created and removed on a volume within the run", esc, v)


def test_rec_volume_names_burst(esc, tmp_path):
    """500 directories with a file each, created and removed in a burst:
    the queue merges each name's creation and removal, and each directory
    is gone before its first event is read. Every name must be in the
    record (or the record must say entries were lost)."""
    v, events, log, attack = rec_attack(esc, tmp_path, "rec_volume_names_burst")
    if events is not None and v.kind == "BLOCKED":
        files = {(e["type"], e["data"].get("path")) for e in events if e["type"].startswith("file.")}
        want = {(t, p) for i in range(500) for p in (f"/vol/b{i}", f"/vol/b{i}/p")
                for t in ("file.created", "file.removed")}
        missing = sorted(want - files)
        vol = {t["name"]: t for e in events if e["type"] == "fs.root" and e["data"]["phase"] == "after"
               for t in e["data"]["trees"]}.get("/vol", {})
        if not missing:
            v = Verdict("BLOCKED", "all 2,000 names created and removed on the volume are recorded")
        elif vol.get("writes", {}).get("entries_lost"):
            v = Verdict("BLOCKED", f"STATED: entries_lost ({len(missing)} of 2000 missing)")
        else:
            v = Verdict("ESCAPED", f"{len(missing)} of 2000 not in the record and not stated, e.g. {missing[:4]}")
    elif events is None and v.kind == "BLOCKED":
        v = no_record(esc)
    check("rec_volume_names_burst", "a burst of names created and removed on a volume", esc, v)


def test_rec_mmap_volume(esc, tmp_path):
    """An existing file of a writable volume (on a host tmpfs) rewritten
    through a shared mapping after the hash cache saw it: the pages are
    faulted writable first (mtime and ctime move then, never again), a
    second container with the same volume runs meanwhile (its walks cache
    the file's identity with the old content, as any other run or walk of a
    shared volume would), then the payload goes through the mapping.
    changes.ndjson of the attacking run must carry the modification with the
    real new SHA-256."""
    before = b"A" * 65536
    vol = tmp_path / "vol"
    result = {}
    second = esc.bundle()
    second.config["mounts"].append({"destination": "/vol", "type": "bind", "source": str(vol),
                                    "options": ["rbind", "rw"]})
    second.args("/bin/cat", "/vol/ready")
    try:
        t = threading.Thread(target=lambda: result.update(
            r=rec_attack(esc, tmp_path, "rec_mmap_volume", vol_tmpfs=True, prefill={"data": before})))
        t.start()
        end = time.time() + 60
        while not (vol / "ready").exists() and time.time() < end:
            time.sleep(0.1)
        assert (vol / "ready").exists(), "the attack never got ready"
        cid = esc.cid()
        r = esc.rt("run", "--bundle", second.path, cid, timeout=60)
        assert r.returncode == 0, r.stderr
        esc.rt("delete", "--force", cid)
        esc.rt.ids.discard(cid)
        (vol / "go").write_bytes(b"")
        t.join(120)
        after = (vol / "data").read_bytes()
    finally:
        unmount_vol(tmp_path)
    v, events, log, attack = result["r"]
    assert after != before and after[:5] == b"PWNED", after[:16]  # the write happened
    if events is not None:
        ch = [c for c in run_changes(esc) if c.get("tree") == "/vol" and c.get("path") == "data"]
        if len(ch) != 1 or ch[0].get("new_sha256") != sha(after):
            v = Verdict("ESCAPED", f"host file now {sha(after)[:16]}..., changes.ndjson says {ch}")
        elif ch[0].get("old_sha256") != sha(before):
            v = Verdict("ESCAPED", f"old content recorded as {ch[0].get('old_sha256')}, was {sha(before)}")
        else:
            r = esc.rt("verify", newest_run(esc))
            assert r.returncode == 0 and r.stdout == b"VERIFIED\n", r.stdout + r.stderr
            v = Verdict("BLOCKED", "the mapped write recorded as a modification with the real old and new SHA-256")
    elif v.kind == "BLOCKED":
        v = no_record(esc)
    check("rec_mmap_volume", "a volume file rewritten through a shared mapping after the hash cache saw it",
          esc, v)
