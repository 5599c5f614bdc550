"""Fixtures and helpers for the escape battery (imported by test_escape.py;
not a conftest.py, so that `from conftest import ...` in the other suites
keeps resolving to integration/conftest.py).

The battery runs every attack twice in one session: under agentshim with its
default policy, and under Debian's runc with a config shaped like Docker's
defaults. Both get the SAME config.json (see docker_like_config); what differs
by design is only the runtime binary and agentshim's own flags (--root,
--audit-dir). `pytest integration/escape -k agentshim` runs one column.

Results of each run are merged into results.json next to this file, from
which report.py writes the table in docs/HARDENING.md.
"""
import importlib.util
import json
import os
import shutil
import struct
import subprocess
import tempfile
import time
import uuid

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
INTEGRATION = os.path.dirname(HERE)
_spec = importlib.util.spec_from_file_location("agentshim_integration_conftest", os.path.join(INTEGRATION, "conftest.py"))
base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(base)

run = base.run
AGENTSHIM = base.AGENTSHIM
RUNC = base.RUNC
RESULTS = os.environ.get("ESCAPE_RESULTS", os.path.join(HERE, "results.json"))

# Docker 20.10's default capability set (oci/caps/defaults.go).
DOCKER_CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
               "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
               "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]
# Docker's default masked and read-only paths (oci/defaults.go).
DOCKER_MASKED = ["/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                 "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware"]
DOCKER_READONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
# Docker's default device cgroup rules: mknod of anything, open only of these.
DOCKER_DEVICES = [{"allow": False, "access": "rwm"},
                  {"allow": True, "type": "c", "access": "m"},
                  {"allow": True, "type": "b", "access": "m"}] + [
    {"allow": True, "type": "c", "major": ma, "minor": mi, "access": "rwm"}
    for ma, mi in [(1, 5), (1, 3), (1, 9), (1, 8), (5, 0), (5, 1), (1, 7), (5, 2), (10, 200)]] + [
    {"allow": True, "type": "c", "major": 136, "access": "rwm"}]


def docker_like_config(cfg):
    """Shape runc's default spec like `docker run` with Docker's defaults:
    new pid/net/ipc/uts/mount/cgroup namespaces and none shared with the host
    (the net namespace is new and empty: Docker would add a bridge veth, which
    only adds a route out), Docker's capabilities for root, no_new_privs off,
    Docker's masked/read-only paths and device rules, a writable root, and no
    seccomp profile (Docker would load its default profile; this column shows
    what the namespaces, capabilities and masks alone hold)."""
    p = cfg["process"]
    p["terminal"] = False
    p["noNewPrivileges"] = False
    p["capabilities"] = {k: list(DOCKER_CAPS) for k in ("bounding", "effective", "permitted")}
    p["user"] = {"uid": 0, "gid": 0}
    cfg["root"]["readonly"] = False
    cfg["hostname"] = "escape"
    lx = cfg["linux"]
    lx["namespaces"] = [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount", "cgroup")]
    lx["maskedPaths"] = list(DOCKER_MASKED)
    lx["readonlyPaths"] = list(DOCKER_READONLY)
    lx["resources"] = {"devices": [dict(d) for d in DOCKER_DEVICES]}
    lx.pop("seccomp", None)
    return cfg


FCAP_NET_RAW = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)  # VFS_CAP_REVISION_2 | effective, cap_net_raw


@pytest.fixture(scope="session")
def attack_bin(tmp_path_factory):
    d = tmp_path_factory.mktemp("attack")
    out = str(d / "attack")
    # -no-pie: the i386 attacks pass pointers to static data, which must lie below 4 GiB.
    run(["gcc", "-static", "-O2", "-no-pie", "-pthread", "-Wall", "-Wextra", "-Wno-format-truncation", "-o", out,
         os.path.join(HERE, "attack.c")], check=True, timeout=120)
    yield out
    shutil.rmtree(str(d), ignore_errors=True)


KERNEL_OPTIONS = ["CONFIG_MODULES", "CONFIG_IA32_EMULATION", "CONFIG_X86_X32_ABI", "CONFIG_X86_IOPL_IOPERM",
                  "CONFIG_KEXEC_FILE", "CONFIG_SYSCTL_SYSCALL", "CONFIG_MAGIC_SYSRQ", "CONFIG_PROC_KCORE",
                  "CONFIG_DEVMEM", "CONFIG_UEVENT_HELPER", "CONFIG_USERFAULTFD", "CONFIG_IO_URING",
                  "CONFIG_BPF_SYSCALL", "CONFIG_MODIFY_LDT_SYSCALL", "CONFIG_TIME_NS", "CONFIG_USER_NS"]


def kernel_config():
    """The options that decide whether an attack can work at all on this kernel
    (an attack the kernel lacks fails under every runtime: ENOSYS/ENOENT)."""
    import gzip
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            text = f.read()
    except OSError:
        return {}
    cfg = {}
    for line in text.splitlines():
        if line.startswith("CONFIG_"):
            k, _, v = line.partition("=")
            cfg[k] = v
        elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
            cfg[line[2:-11]] = "n"
    return {k: cfg.get(k, "n") for k in KERNEL_OPTIONS}


@pytest.fixture(scope="session")
def escape_rootfs(tmp_path_factory, rootfs_template, attack_bin):
    """The busybox rootfs plus /bin/attack, a setuid-root copy and a copy with
    the file capability cap_net_raw+ep (security.capability)."""
    d = str(tmp_path_factory.mktemp("escape-rootfs") / "rootfs")
    shutil.copytree(rootfs_template, d, symlinks=True)
    return d


class Verdict:
    def __init__(self, kind, detail, raw=b"", stderr=b"", rc=None):
        self.kind, self.detail, self.raw, self.stderr, self.rc = kind, detail, raw, stderr, rc

    def __repr__(self):
        return f"{self.kind}: {self.detail} (rc {self.rc}; stderr {self.stderr[-400:]!r})"


def parse_verdict(r):
    lines = [l for l in r.stdout.decode(errors="replace").splitlines() if l.split(":")[0] in
             ("BLOCKED", "ESCAPED", "ERROR")]
    if not lines:
        return Verdict("NONE", "no verdict line", r.stdout, r.stderr, r.returncode)
    k, _, d = lines[-1].partition(": ")
    return Verdict(k, d, r.stdout, r.stderr, r.returncode)


class Escape:
    """One runtime column of the battery."""

    def __init__(self, name, tmp_path, attack_bin, escape_rootfs):
        self.name = name
        self.tmp = tmp_path
        self.attack_bin = attack_bin
        self.escape_rootfs = escape_rootfs
        self.audit_dir = str(tmp_path / "audit")
        os.makedirs(self.audit_dir, exist_ok=True)
        if name == "agentshim":
            self.binary = AGENTSHIM
            self.rt = base.Runtime(AGENTSHIM, str(tmp_path / "agentshim-root"), extra=["--audit-dir", self.audit_dir])
        else:
            self.binary = RUNC
            self.rt = base.Runtime(RUNC, str(tmp_path / "runc-root"))
        self.n = 0
        self.popen = []
        self.bundles = []

    def cid(self):
        c = "t" + uuid.uuid4().hex[:12]
        self.rt.ids.add(c)
        return c

    def bundle(self):
        """A fresh bundle: the escape rootfs copied, helper binaries installed
        as the test needs them, and the Docker-like config."""
        self.n += 1
        b = base.Bundle(str(self.tmp / f"bundle{self.n}"), self.escape_rootfs)
        binp = os.path.join(b.rootfs, "bin")
        shutil.copy(self.attack_bin, os.path.join(binp, "attack"))
        os.chmod(os.path.join(binp, "attack"), 0o755)
        suid = os.path.join(binp, "attack-suid")
        shutil.copy(self.attack_bin, suid)
        os.chown(suid, 0, 0)
        os.chmod(suid, 0o4755)
        fcap = os.path.join(binp, "attack-fcap")
        shutil.copy(self.attack_bin, fcap)
        os.chmod(fcap, 0o755)
        os.setxattr(fcap, "security.capability", FCAP_NET_RAW)
        docker_like_config(b.config)
        # The helper refuses to try mounts in the host's mount namespace.
        b.config["process"]["env"].append(f"ESCAPE_HOST_MNTNS={os.stat('/proc/self/ns/mnt').st_ino}")
        b.save()
        self.bundles.append(b.path)
        return b

    def attack(self, b, *argv, timeout=60):
        b.args("/bin/attack", *argv)
        cid = self.cid()
        r = self.rt("run", "--bundle", b.path, cid, timeout=timeout)
        v = parse_verdict(r)
        if v.kind == "NONE" and r.returncode != 0:
            v = Verdict("START_FAILED", r.stderr.decode(errors="replace").strip()[-300:], r.stdout, r.stderr,
                        r.returncode)
        self.rt("delete", "--force", cid, timeout=30)
        self.rt.ids.discard(cid)
        return v

    def start_background(self, b, *argv):
        """`run` in the foreground of a child process, stdout to a file."""
        b.args("/bin/attack", *argv)
        cid = self.cid()
        out = tempfile.TemporaryFile()
        err = tempfile.TemporaryFile()
        p = subprocess.Popen([self.binary, "--root", self.rt.root, *self.rt.extra, "run", "--bundle", b.path, cid],
                             stdin=subprocess.PIPE, stdout=out, stderr=err)
        p.stdin.close()
        self.popen.append(p)
        return cid, p, out, err

    def wait_running(self, cid, timeout=10):
        end = time.time() + timeout
        while time.time() < end:
            r = self.rt("state", cid)
            if r.returncode == 0 and json.loads(r.stdout).get("status") == "running":
                return json.loads(r.stdout)
            time.sleep(0.05)
        raise AssertionError(f"{self.name}: container {cid} never reached running")

    def cleanup(self):
        for p in self.popen:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.rt.cleanup()
        # Bundles hold setuid-root and file-capability binaries; the audit dir
        # holds a signing key: never leave them behind, even when a test failed.
        safe_rmtree_contents(str(self.tmp))


def mounts_below(path):
    path = os.path.realpath(path).rstrip("/") + "/"
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ")
            if (mp.rstrip("/") + "/").startswith(path):
                out.append(mp)
    return out


def safe_rmtree_contents(path):
    """Remove everything in path, but never through a mount point: a mount a
    runtime left below it is a bug to report, not a tree to empty."""
    left = mounts_below(path)
    assert not left, f"mounts left behind below {path}: {left}"
    for e in os.listdir(path):
        p = os.path.join(path, e)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p, ignore_errors=True)
        else:
            os.unlink(p)


_results = {}


@pytest.fixture(params=["runc", "agentshim"])
def esc(request, tmp_path, attack_bin, escape_rootfs):
    e = Escape(request.param, tmp_path, attack_bin, escape_rootfs)
    yield e
    e.cleanup()


_order = []


def record(attack, title, esc, verdict):
    if attack not in _order:
        _order.append(attack)
    e = _results.setdefault(attack, {"title": title})
    e["order"] = _order.index(attack)
    e[esc.name] = {"verdict": verdict.kind, "detail": verdict.detail}


def check(attack, title, esc, verdict, allow_refusal=False):
    """Record the outcome; agentshim must block, runc must reach a verdict."""
    if allow_refusal and verdict.kind == "START_FAILED":
        verdict = Verdict("BLOCKED", "runtime refused the config: " + verdict.detail, verdict.raw, verdict.stderr,
                          verdict.rc)
    record(attack, title, esc, verdict)
    assert verdict.kind in ("BLOCKED", "ESCAPED"), f"{esc.name}: {attack} reached no verdict: {verdict!r}"
    if esc.name == "agentshim":
        assert verdict.kind == "BLOCKED", f"agentshim let {attack} through: {verdict.detail}"


@pytest.fixture(scope="session", autouse=True)
def write_results():
    yield
    if not _results:
        return
    old = {}
    if os.path.exists(RESULTS):
        with open(RESULTS) as f:
            old = json.load(f).get("attacks", {})
    for k, v in _results.items():
        old.setdefault(k, {}).update(v)
    meta = {"written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "kernel": os.uname().release,
            "kernel_config": kernel_config(),
            "runc": run([RUNC, "--version"]).stdout.decode().splitlines()[0] if os.path.exists(RUNC) else None,
            "agentshim": run([AGENTSHIM, "--version"]).stdout.decode().strip().splitlines()[0]
            if os.path.exists(AGENTSHIM) else None}
    tmp = RESULTS + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"meta": meta, "attacks": dict(sorted(old.items()))}, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, RESULTS)
