"""Shared fixtures for the integration suites.

Everything here is real: the agentshim binary under test, Debian's runc as
the reference runtime, a busybox root filesystem built from busybox-static,
the host kernel's namespaces and cgroups. Every container a test creates is
force-deleted afterwards, and the host's /dev/null is checked to be intact.
"""
import json
import os
import time
import re
import shutil
import subprocess
import tempfile
import threading
import uuid

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AGENTSHIM = os.environ.get("AGENTSHIM_BIN", os.path.join(REPO, "build", "shim", "agentshim"))
RUNC = shutil.which("runc") or "/usr/sbin/runc"


def run(cmd, check=False, timeout=60, input=None, **kw):
    """Run a command with a pipe as stdin (never the host's /dev/null).

    stdout and stderr go to temporary files, not pipes: a detached container
    inherits them and would otherwise keep a pipe open forever."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.run(cmd, input=input if input is not None else b"", stdout=out, stderr=err,
                           timeout=timeout, **kw)
        out.seek(0)
        err.seek(0)
        r = subprocess.CompletedProcess(cmd, p.returncode, out.read(), err.read())
    if check and r.returncode != 0:
        raise AssertionError(f"{cmd} exited {r.returncode}\nstdout: {r.stdout.decode(errors='replace')}\n"
                             f"stderr: {r.stderr.decode(errors='replace')}")
    return r


def at_once(n, fn, while_running=None):
    """fn(0), ..., fn(n-1) on n threads started together (containers, pods,
    exec sessions side by side, as clients start them); while_running(threads)
    runs on the caller's thread before the joins. Returns the results in
    order; a call that raised fails the test here, naming which call."""
    results, errors = [None] * n, {}

    def one(i):
        try:
            results[i] = fn(i)
        except BaseException as e:  # reported by the caller's thread
            errors[i] = e

    ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    try:
        if while_running:
            while_running(ts)
    finally:
        for t in ts:
            t.join()
    if errors:
        i = min(errors)
        raise AssertionError(f"call {i} of {n} at once failed: {errors[i]!r}") from errors[i]
    return results


def wait_records(audit_dir, timeout=60):
    """Wait until every run record under audit_dir is finalized. A run's
    supervisor holds an exclusive flock on its run directory until the record
    is signed and in the ledger; the container's exit (and `delete`) is
    reported before that (docs/ARCHITECTURE.md), as `agentshim verify` and
    `runs show` also wait."""
    import fcntl
    runs = os.path.join(audit_dir, "runs")
    deadline = time.time() + timeout
    for d in (os.listdir(runs) if os.path.isdir(runs) else []):
        fd = os.open(os.path.join(runs, d), os.O_RDONLY | os.O_DIRECTORY)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.time() > deadline:
                        raise AssertionError(f"run record {d} not finalized after {timeout}s")
                    time.sleep(0.01)
        finally:
            os.close(fd)


@pytest.fixture(scope="session")
def rootfs_template(tmp_path_factory):
    d = tmp_path_factory.mktemp("rootfs") / "rootfs"
    run(["bash", os.path.join(REPO, "scripts", "mkrootfs.sh"), str(d)], check=True)
    return str(d)


class Runtime:
    """One runtime binary with its own --root."""

    def __init__(self, binary, root, extra=()):
        self.binary = binary
        self.root = root
        self.extra = list(extra)
        self.ids = set()

    def __call__(self, *args, check=False, timeout=60, input=None, cwd=None):
        return run([self.binary, "--root", self.root, *self.extra, *args], check=check, timeout=timeout,
                   input=input, cwd=cwd)

    def json(self, *args):
        r = self(*args, check=True)
        return json.loads(r.stdout)

    def cleanup(self):
        for cid in list(self.ids):
            self("delete", "--force", cid, timeout=60)
        self.ids.clear()


class Bundle:
    def __init__(self, path, rootfs_template):
        self.path = path
        self.rootfs = os.path.join(path, "rootfs")
        shutil.copytree(rootfs_template, self.rootfs, symlinks=True)
        # A spec in runc's own default shape, so agentshim and runc get the same input.
        run([RUNC, "spec", "--bundle", path], check=True)
        with open(self.config_path) as f:
            self.config = json.load(f)
        self.config["process"]["terminal"] = False
        self.save()

    @property
    def config_path(self):
        return os.path.join(self.path, "config.json")

    def save(self):
        with open(self.config_path, "w") as f:
            json.dump(self.config, f, indent=1)

    def args(self, *argv):
        self.config["process"]["args"] = list(argv)
        self.save()
        return self

    def sh(self, script):
        return self.args("sh", "-c", script)


@pytest.fixture
def bundle(tmp_path, rootfs_template):
    return Bundle(str(tmp_path / "bundle"), rootfs_template)


@pytest.fixture
def bundle_factory(tmp_path, rootfs_template):
    n = [0]

    def make():
        n[0] += 1
        return Bundle(str(tmp_path / f"bundle{n[0]}"), rootfs_template)

    return make


@pytest.fixture
def shim(tmp_path):
    rt = Runtime(AGENTSHIM, str(tmp_path / "agentshim-root"), extra=["--audit-dir", str(tmp_path / "audit")])
    yield rt
    rt.cleanup()


@pytest.fixture
def runc(tmp_path):
    rt = Runtime(RUNC, str(tmp_path / "runc-root"))
    yield rt
    rt.cleanup()


@pytest.fixture
def cid():
    return "t" + uuid.uuid4().hex[:12]


def _devnull_ok():
    st = os.stat("/dev/null")
    return st.st_uid == 0 and st.st_gid == 0 and (st.st_mode & 0o777) == 0o666


@pytest.fixture(autouse=True)
def host_devnull_intact():
    assert _devnull_ok(), "/dev/null was already damaged before this test"
    yield
    assert _devnull_ok(), "the host's /dev/null changed owner or mode during this test"


# A pure cgroup v2 host (the guests of scripts/guest): one cgroup2 tree at
# /sys/fs/cgroup.
UNIFIED = os.path.exists("/sys/fs/cgroup/cgroup.controllers")


def _cgroup_snapshot():
    out = set()
    if UNIFIED:
        # Every cgroup down to a depth that covers "<slice>/<parent>/<id>";
        # the root's subtree_control is delegation's to change.
        for top, dirs, _ in os.walk("/sys/fs/cgroup"):
            if top.count("/") >= 6:
                dirs[:] = []
            out.update(os.path.join(top, d) for d in dirs)
        return out, ""
    for h in os.listdir("/sys/fs/cgroup"):
        p = os.path.join("/sys/fs/cgroup", h)
        if os.path.isdir(p) and not os.path.islink(p):
            for e in os.listdir(p):
                if os.path.isdir(os.path.join(p, e)):
                    out.add(os.path.join(p, e))
    ctl = "/sys/fs/cgroup/unified/cgroup.subtree_control"
    return out, open(ctl).read() if os.path.exists(ctl) else ""


@pytest.fixture(scope="session", autouse=True)
def no_cgroup_leftovers():
    """Every cgroup a test's containers got is gone at the end, and the host's
    hybrid v2 controllers were not touched."""
    before, ctl = _cgroup_snapshot()
    yield
    after, ctl2 = _cgroup_snapshot()
    # Only names these suites use (other activity on the host is not ours).
    ours = re.compile(r"^(t[0-9a-f]{12}b?|[a-z]+-(shim|runc)|life-.*)$")
    left = sorted(p for p in after - before if ours.match(os.path.basename(p)))
    assert left == [], f"cgroups left behind: {left}"
    assert ctl2 == ctl, "cgroup.subtree_control of the v2 mount changed"
