"""Real container clients for the integration suites: dockerd, containerd
(ctr) and podman, each with private state under a temporary directory, plus
the busybox image built from busybox-static (there is no registry here).

Every daemon is stopped and its state (mounts, network namespaces, files)
removed when its fixture ends, also when a test failed. Nothing here touches
the host's own Docker/containerd state: sockets, roots and pid files are all
under the temporary directory.
"""
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import tempfile
import time

from conftest import AGENTSHIM, REPO, RUNC, run

DOCKERD = "/usr/sbin/dockerd"
DOCKER = "/usr/bin/docker"  # Debian's client; /usr/local/bin/docker may be another version
CONTAINERD = "/usr/bin/containerd"
CTR = "/usr/bin/ctr"
PODMAN = "/usr/bin/podman"
IMAGE = "localhost/busybox:agentshim"


def have(*paths):
    missing = [p for p in paths if not os.access(p, os.X_OK)]
    return missing


def ensure_packages():
    """Install the client packages through scripts/deps.sh when missing."""
    if have(DOCKERD, DOCKER, CONTAINERD, CTR, PODMAN):
        run(["bash", os.path.join(REPO, "scripts", "deps.sh")], timeout=900)
    return have(DOCKERD, DOCKER, CONTAINERD, CTR, PODMAN)


def short_tmpdir(prefix):
    """A short base directory: clients build long paths below it."""
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


def busybox_tar(base):
    """A tar of a busybox root filesystem built from busybox-static."""
    rootfs = os.path.join(base, "rootfs")
    run(["bash", os.path.join(REPO, "scripts", "mkrootfs.sh"), rootfs], check=True)
    tar = os.path.join(base, "busybox.tar")
    run(["tar", "-C", rootfs, "-cf", tar, "."], check=True)
    shutil.rmtree(rootfs)
    return tar


def oci_image_tar(base, ref, rootfs=None, entrypoint=None, cmd=("sh",), name="busybox"):
    """An OCI image layout tarball (for `ctr images import`): one layer, a
    config, a manifest, an index naming `ref`. The layer is the busybox rootfs,
    or the directory `rootfs` when given (e.g. a pause image of one static
    binary); `entrypoint`/`cmd` go to the image config."""
    import hashlib

    if rootfs is None:
        layer = busybox_tar(base)
    else:
        layer = os.path.join(base, name + "-layer.tar")
        run(["tar", "-C", rootfs, "-cf", layer, "."], check=True)
    work = os.path.join(base, "oci-" + name)
    blobs = os.path.join(work, "blobs", "sha256")
    os.makedirs(blobs)

    def put(data):
        d = hashlib.sha256(data).hexdigest()
        with open(os.path.join(blobs, d), "wb") as f:
            f.write(data)
        return {"digest": "sha256:" + d, "size": len(data)}

    with open(layer, "rb") as f:
        layer_bytes = f.read()
    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
    ldesc = put(layer_bytes)
    config = {"architecture": "amd64", "os": "linux",
              "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                         "Cmd": list(cmd), "WorkingDir": "/",
                         **({"Entrypoint": list(entrypoint)} if entrypoint else {})},
              "rootfs": {"type": "layers", "diff_ids": [diff_id]}}
    cdesc = put(json.dumps(config).encode())
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **cdesc},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **ldesc}]}
    mdesc = put(json.dumps(manifest).encode())
    index = {"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", **mdesc,
         "annotations": {"org.opencontainers.image.ref.name": ref, "io.containerd.image.name": ref}}]}
    with open(os.path.join(work, "index.json"), "w") as f:
        json.dump(index, f)
    with open(os.path.join(work, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    out = os.path.join(base, name + "-oci.tar")
    run(["tar", "-C", work, "-cf", out, "."], check=True)
    shutil.rmtree(work)
    os.unlink(layer)
    return out


def mounts_under(path):
    """Mount points at or below path, deepest first."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ")
            if mp == path or mp.startswith(path.rstrip("/") + "/"):
                found.append(mp)
    return sorted(found, key=len, reverse=True)


def mounts_matching(text):
    with open("/proc/self/mountinfo") as f:
        return [line.strip() for line in f if text in line]


def remove_tree(path):
    """Unmount everything under path, then delete it without crossing mounts."""
    for _ in range(3):
        ms = mounts_under(path)
        if not ms:
            break
        for m in ms:
            run(["umount", "-l", m])
    run(["rm", "-rf", "--one-file-system", path])


def _exited(pid):
    """Gone, or a zombie (a daemon the fixture started is our child until we
    wait for it: kill(pid, 0) still succeeds then)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return True


def stop_pid(pid, timeout=20):
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + timeout
    while time.time() < deadline:
        if _exited(pid):
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def processes_mentioning(text):
    """Pids whose command line contains text (our container ids are unique)."""
    pids = []
    for p in os.listdir("/proc"):
        if not p.isdigit() or int(p) == os.getpid():
            continue
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd:
            pids.append((int(p), cmd))
    return pids


def cgroups_named(name):
    """cgroup directories (any hierarchy, any depth up to 3) whose path contains name."""
    hits = []
    for h in os.listdir("/sys/fs/cgroup"):
        top = os.path.join("/sys/fs/cgroup", h)
        if os.path.islink(top) or not os.path.isdir(top):
            continue
        for root, dirs, _ in os.walk(top):
            depth = root[len(top):].count("/")
            if depth >= 3:
                dirs[:] = []
            for d in dirs:
                if name in d:
                    hits.append(os.path.join(root, d))
    return hits


class ParentCgroups:
    """The parent cgroups a client creates for its containers (Docker:
    /docker, containerd: /<namespace>, Podman: /libpod_parent) outlive the
    daemon. Remember which existed before, and remove (rmdir, deepest first,
    empty ones only) those that did not."""

    def __init__(self, *names):
        self.names = names
        self.before = {p for n in names for p in self._dirs(n)}

    @staticmethod
    def _dirs(name):
        out = []
        for h in os.listdir("/sys/fs/cgroup"):
            p = os.path.join("/sys/fs/cgroup", h, name)
            if not os.path.islink(os.path.join("/sys/fs/cgroup", h)) and os.path.isdir(p):
                out.append(p)
        return out

    @staticmethod
    def _is_cgroup_mount(hier):
        with open("/proc/self/mountinfo") as f:
            return any(l.split()[4] == hier and " - cgroup" in l for l in f)

    def cleanup(self):
        for n in self.names:
            for top in self._dirs(n):
                if top in self.before:
                    continue
                if not self._is_cgroup_mount(os.path.dirname(top)):
                    # A stale directory under /sys/fs/cgroup that is not a
                    # mounted hierarchy (e.g. an unmounted "hugetlb"): the
                    # runtimes wrote plain files there. Only our parent goes.
                    shutil.rmtree(top, ignore_errors=True)
                    continue
                remove_empty_tree(top)


def remove_empty_tree(top):
    """rmdir every directory below top, deepest first, then top; busy or
    non-empty ones stay (cgroup directories cannot be removed otherwise)."""
    for root, dirs, _ in os.walk(top, topdown=False):
        for d in dirs:
            try:
                os.rmdir(os.path.join(root, d))
            except OSError:
                pass
    try:
        os.rmdir(top)
    except OSError:
        pass


def agentshim_policy(base, strict=False):
    """A policy file for the tests: the audit records go under base."""
    p = os.path.join(base, "policy-strict.json" if strict else "policy.json")
    with open(p, "w") as f:
        json.dump({"audit": {"dir": os.path.join(base, "audit"), "strict": strict}}, f)
    return p


class Dockerd:
    """dockerd with its own config file, data root, exec root, pid file and
    socket, with `agentshim` and `agentshim-strict` registered from the
    shipped configs/docker/daemon.json (paths replaced by the test's).

    It runs in a network namespace the fixture creates (only the network
    namespace: mounts, cgroups and processes are the host's, so leftover
    checks see them), so Docker's default bridge (docker0, 172.17.0.0/16) and
    its port publishing (docker-proxy) are real but never touch the host's
    network; --iptables=false keeps the host's firewall out of it."""

    def __init__(self, base):
        self.base = base
        self.netns = "asdk-" + os.path.basename(base)[-8:]
        self.sock = os.path.join(base, "d.sock")
        self.data = os.path.join(base, "data")
        self.exec_root = os.path.join(base, "x")
        self.audit = os.path.join(base, "audit")
        self.pidfile = os.path.join(base, "d.pid")
        self.logpath = os.path.join(base, "dockerd.log")
        self.proc = None

    def write_config(self):
        with open(os.path.join(REPO, "configs", "docker", "daemon.json")) as f:
            cfg = json.load(f)
        policy = agentshim_policy(self.base)
        strict = agentshim_policy(self.base, strict=True)
        for name, rt in cfg["runtimes"].items():
            assert name.startswith("agentshim"), name
            rt["path"] = AGENTSHIM
            args = rt.get("runtimeArgs", [])
            # The shipped entries point at /etc/agentshim; the tests use their own files.
            for i, a in enumerate(args):
                if a == "--policy":
                    args[i + 1] = strict if "strict" in name else policy
            if "--policy" not in args:
                args += ["--policy", policy]
            args += ["--audit-dir", self.audit]
            rt["runtimeArgs"] = args
        self.config = cfg
        p = os.path.join(self.base, "daemon.json")
        with open(p, "w") as f:
            json.dump(cfg, f, indent=1)
        return p

    def start(self):
        cfg = self.write_config()
        self.cgroups = ParentCgroups("docker")
        run(["ip", "netns", "add", self.netns], check=True)
        self.netns_created = True
        run(["ip", "netns", "exec", self.netns, "ip", "link", "set", "lo", "up"], check=True)
        log = open(self.logpath, "wb")
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.netns}", DOCKERD, "--config-file", cfg, "--data-root", self.data, "--exec-root", self.exec_root,
             "--pidfile", self.pidfile, "-H", "unix://" + self.sock, "--iptables=false", "--ip6tables=false",
             "--storage-driver=overlay2"],
            stdin=subprocess.PIPE, stdout=log, stderr=log, start_new_session=True)
        log.close()
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dockerd exited {self.proc.returncode}:\n{self.log_tail()}")
            if os.path.exists(self.sock) and self("version").returncode == 0:
                return self
            time.sleep(0.2)
        raise RuntimeError("dockerd did not come up in 60s:\n" + self.log_tail())

    def log_tail(self, n=40):
        try:
            with open(self.logpath, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def __call__(self, *args, timeout=90, input=None, check=False):
        return run([DOCKER, "-H", "unix://" + self.sock, *args], timeout=timeout, input=input, check=check)

    def out(self, *args, **kw):
        r = self(*args, **kw)
        assert r.returncode == 0, f"docker {args} exited {r.returncode}: {r.stderr.decode(errors='replace')}"
        return r.stdout.decode()

    def in_netns(self, *cmd, timeout=30, input=None):
        """Run a host binary inside dockerd's network namespace (only that one)."""
        return run(["nsenter", f"--net=/run/netns/{self.netns}", *cmd], timeout=timeout, input=input)

    def popen_in_netns(self, *cmd):
        """Start a host binary inside dockerd's network namespace; the caller kills it."""
        return subprocess.Popen(["nsenter", f"--net=/run/netns/{self.netns}", *cmd], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

    def runtime_root(self):
        return os.path.join(self.exec_root, "runtime-runc", "moby")

    def stop(self):
        if self.proc is not None:
            # Containers first (they would otherwise be killed by containerd's exit).
            r = self("ps", "-aq", timeout=30)
            ids = r.stdout.decode().split() if r.returncode == 0 else []
            if ids:
                self("rm", "-f", *ids, timeout=120)
            stop_pid(self.proc.pid, timeout=30)
            self.proc.wait(timeout=30)
            self.proc = None
        if getattr(self, "netns_created", False):
            run(["ip", "netns", "del", self.netns])
            self.netns_created = False
        if getattr(self, "cgroups", None):
            self.cgroups.cleanup()
        remove_tree(self.base)


class Containerd:
    """containerd with its own config (the shipped snippet appended to a
    minimal config with private root/state/address), driven by ctr."""

    def __init__(self, base, namespace="agentshim-test", agentshim_binary=AGENTSHIM):
        self.base = base
        self.agentshim_binary = agentshim_binary  # what the snippet's BinaryName becomes
        self.address = os.path.join(base, "c.sock")
        self.root = os.path.join(base, "root")
        self.state = os.path.join(base, "state")
        self.audit = os.path.join(base, "audit")
        self.logpath = os.path.join(base, "containerd.log")
        self.config = os.path.join(base, "config.toml")
        self.proc = None
        self.namespace = namespace

    def extra_config(self):
        """TOML placed between the minimal config and the shipped snippet."""
        return ""

    def command(self):
        return [CONTAINERD, "--config", self.config]

    def write_config(self):
        with open(os.path.join(REPO, "configs", "containerd", "config.toml")) as f:
            snippet = f.read()
        # The snippet names the installed binary; the test uses the build's.
        snippet = snippet.replace("/usr/local/bin/agentshim", self.agentshim_binary)
        if getattr(self, "SYSTEMD_CGROUP", False):  # the snippet's line for systemd-driver nodes
            snippet = snippet.replace("# SystemdCgroup = true", "SystemdCgroup = true")
        with open(self.config, "w") as f:
            f.write("version = 2\n"
                    f'root = "{self.root}"\nstate = "{self.state}"\n'
                    f'[grpc]\n  address = "{self.address}"\n'
                    f'[ttrpc]\n  address = "{self.address}.ttrpc"\n'
                    f'[debug]\n  address = "{self.address}.debug"\n'
                    '[metrics]\n  address = ""\n'
                    "\n" + self.extra_config() + "\n" + snippet)

    def start(self):
        self.write_config()
        self.cgroups = ParentCgroups(self.namespace)
        log = open(self.logpath, "wb")
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.PIPE, stdout=log, stderr=log,
                                     start_new_session=True)
        log.close()
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"containerd exited {self.proc.returncode}:\n{self.log_tail()}")
            if os.path.exists(self.address) and self("version").returncode == 0:
                return self
            time.sleep(0.2)
        raise RuntimeError("containerd did not come up in 60s:\n" + self.log_tail())

    def log_tail(self, n=40):
        try:
            with open(self.logpath, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def __call__(self, *args, timeout=90, input=None, check=False):
        return run([CTR, "--address", self.address, "--namespace", self.namespace, *args], timeout=timeout,
                   input=input, check=check)

    def out(self, *args, **kw):
        r = self(*args, **kw)
        assert r.returncode == 0, f"ctr {args} exited {r.returncode}: {r.stderr.decode(errors='replace')}"
        return r.stdout.decode()

    def before_stop(self):
        """While containerd still runs: remove what the tests left."""
        r = self("tasks", "ls", "-q", timeout=30)
        for t in (r.stdout.decode().split() if r.returncode == 0 else []):
            self("tasks", "kill", "-s", "KILL", t, timeout=30)
            self("tasks", "delete", "-f", t, timeout=30)
        r = self("containers", "ls", "-q", timeout=30)
        for c in (r.stdout.decode().split() if r.returncode == 0 else []):
            self("containers", "rm", c, timeout=30)

    def after_stop(self):
        """Once containerd and its shims are gone, before base is removed."""

    def stop(self):
        if self.proc is not None:
            self.before_stop()
            stop_pid(self.proc.pid, timeout=30)
            self.proc.wait(timeout=30)
            self.proc = None
        # Shims outlive containerd by design; ours are gone once their tasks are deleted,
        # but make sure none of this instance's shims survive.
        for pid, cmd in processes_mentioning(self.address):
            if "containerd-shim" in cmd:
                stop_pid(pid, timeout=5)
        self.after_stop()
        if getattr(self, "cgroups", None):
            self.cgroups.cleanup()
        remove_tree(self.base)


def iptables_rules():
    """The host's iptables/ip6tables rules (legacy or nft backend), for
    before/after comparisons; [] when the tools are missing."""
    out = []
    for tool in ("iptables-save", "ip6tables-save"):
        if shutil.which(tool):
            r = run([tool])
            # Chain lines carry packet counters ("[12:3456]") that traffic changes.
            out += [re.sub(r"\[\d+:\d+\]", "", l) for l in r.stdout.decode(errors="replace").splitlines()
                    if l and not l.startswith("#")]
    return out


def v1_hierarchy_unmounted(controller, proc_cgroups=None, mountinfo=None):
    """True when the kernel has a v1 hierarchy for controller (a nonzero
    hierarchy id in /proc/cgroups) that is mounted nowhere: processes'
    /proc/self/cgroup then name it and containerd's stats fail for every
    runtime ("cannot find cgroup mount destination"; MACHINE.md). The texts
    of /proc/cgroups and /proc/self/mountinfo are read unless given."""
    if proc_cgroups is None:
        with open("/proc/cgroups") as f:
            proc_cgroups = f.read()
    if mountinfo is None:
        with open("/proc/self/mountinfo") as f:
            mountinfo = f.read()
    rows = [l.split() for l in proc_cgroups.splitlines() if l.strip() and not l.startswith("#")]
    if not any(r[0] == controller and r[1] != "0" for r in rows):
        return False
    return not any(" - cgroup " in l and controller in l.split()[-1].split(",") for l in mountinfo.splitlines())


class CriContainerd(Containerd):
    """containerd as a Kubernetes node runs it: the CRI plugin serving
    runtime.v1 on its socket, a CNI bridge network, handlers `runc` and the
    shipped `agentshim` snippet, a local pause image. Everything is private to
    the test: config, root, state, socket, the bridge (its own name and
    subnet, created by the fixture with the gateway address so the bridge
    plugin never enables the host's ip_forward), host-local's IPAM directory,
    the runc handler's binary.

    containerd runs in a mount namespace of its own whose only shared mount is
    `base` (a bind mount of itself made shared): everything it and its shims
    mount (rootfs overlays, sandbox shm, netns files under the state dir)
    propagates to the host, where the leftover checks see it, while a v1
    hugetlb hierarchy that the host has but mounts nowhere is mounted for
    containerd only (MACHINE.md: otherwise stats fail for every runtime; the
    mount point /sys/fs/cgroup/hugetlb is created if missing and removed at
    stop(), and the pods' cgroups in that hierarchy are looked up and removed
    through /proc/<containerd>/root, see cgroup_root()).

    The agentshim handler is the shipped snippet with BinaryName pointing at a
    two-line wrapper that adds --audit-dir (records stay under base), as
    test_containerd.py does; runtime_type, pod_annotations and
    privileged_without_host_devices are as shipped."""

    SANDBOX_IMAGE = "localhost/pause:agentshim-test"
    IMAGE = "localhost/busybox:agentshim-test"
    CGROUP_TOP = "kubepods-astest"  # the kubelet's /kubepods, cgroupfs driver
    # The kubelet's systemd cgroup driver (containerd's SystemdCgroup = true
    # for the handlers): CRI_SYSTEMD_CGROUP=1, set by scripts/guest/test.sh in
    # the systemd guest. Pods then go below the slice SLICE_TOP.slice (the
    # kubelet's kubepods.slice), stopped through systemd at stop().
    SYSTEMD_CGROUP = os.environ.get("CRI_SYSTEMD_CGROUP") == "1"
    SLICE_TOP = "astest"

    def __init__(self, base, bridge, subnet, gateway):
        wrapper = os.path.join(base, "agentshim")
        super().__init__(base, namespace="k8s.io", agentshim_binary=wrapper)
        self.wrapper = wrapper
        self.bridge = bridge
        self.subnet = subnet
        self.gateway = gateway
        self.cni_conf = os.path.join(base, "net.d")
        self.ipam_dir = os.path.join(base, "ipam")
        self.network = "astest-" + os.path.basename(base)[-6:]
        self.bind_mounted = False
        self.bridge_created = False
        self.hugetlb = False  # a v1 hugetlb hierarchy mounted for containerd only
        self.made_hugetlb_dir = False
        self.cgroups_left = []  # pod cgroups that only containerd's namespace saw, left at stop()

    def extra_config(self):
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        return (f"[{cri}]\n"
                f'  sandbox_image = "{self.SANDBOX_IMAGE}"\n'
                "  restrict_oom_score_adj = true\n"
                "  netns_mounts_under_state_dir = true\n"
                "  enable_selinux = false\n"
                "  stats_collect_period = 1\n"
                '  stream_server_address = "127.0.0.1"\n'
                f"[{cri}.containerd]\n"
                '  default_runtime_name = "runc"\n'
                '  snapshotter = "overlayfs"\n'
                f"[{cri}.containerd.runtimes.runc]\n"
                '  runtime_type = "io.containerd.runc.v2"\n'
                f"[{cri}.containerd.runtimes.runc.options]\n"
                f'  BinaryName = "{RUNC}"\n'
                + ("  SystemdCgroup = true\n" if self.SYSTEMD_CGROUP else "") +
                f"[{cri}.cni]\n"
                '  bin_dir = "/usr/lib/cni"\n'
                f'  conf_dir = "{self.cni_conf}"\n'
                "  max_conf_num = 1\n")

    def write_cni(self):
        os.makedirs(self.cni_conf, exist_ok=True)
        conf = {"cniVersion": "0.4.0", "name": self.network, "plugins": [
            {"type": "bridge", "bridge": self.bridge, "isGateway": False, "ipMasq": False, "hairpinMode": True,
             "ipam": {"type": "host-local", "dataDir": self.ipam_dir,
                      "ranges": [[{"subnet": self.subnet, "gateway": self.gateway}]]}}]}
        with open(os.path.join(self.cni_conf, "10-astest.conflist"), "w") as f:
            json.dump(conf, f, indent=1)

    def command(self):
        # A fixed script; everything variable is an argument.
        # (Propagation changes made in the new namespace stay there: the
        # hierarchy is mounted for containerd only, also on hosts whose
        # /sys/fs/cgroup is a shared mount.)
        script = ('set -e; if [ "$1" = 1 ]; then mount --make-private /sys/fs/cgroup; '
                  'mount -t cgroup -o hugetlb cgroup /sys/fs/cgroup/hugetlb; fi; shift; exec "$@"')
        return ["unshare", "--mount", "--propagation", "unchanged", "--", "/bin/sh", "-c", script, "sh",
                "1" if self.hugetlb else "0", *super().command()]

    def cgroup_root(self):
        """/sys/fs/cgroup as containerd and its runtimes see it (with the
        hugetlb hierarchy when it is mounted for them only)."""
        return f"/proc/{self.proc.pid}/root/sys/fs/cgroup" if self.proc else "/sys/fs/cgroup"

    CREDENTIAL_PORT = 18933  # test_cri's credential upstream on the gateway
    SECRET = "sk-pod-SECRETVALUE-0123456789"

    def start(self):
        # The policy the agentshim handler uses: the node's own (or the
        # built-in one) plus one credential, "api", for test_cri's upstream
        # on the gateway; it changes nothing for a pod that does not ask.
        pol = {}
        if os.path.exists("/etc/agentshim/policy.json"):
            with open("/etc/agentshim/policy.json") as f:
                pol = json.load(f)
        secret = os.path.join(self.base, "api.secret")
        with open(os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(self.SECRET + "\n")
        pol.setdefault("credentials", {})["api"] = {
            "source": {"file": secret}, "placeholder_env": "API_TOKEN",
            "destinations": [{"host": self.gateway, "port": self.CREDENTIAL_PORT, "path_prefix": "/v1/"}],
            "apply": {"header": "Authorization", "format": "Bearer {}"}}
        self.policy = os.path.join(self.base, "policy.json")
        with open(self.policy, "w") as f:
            json.dump(pol, f)
        with open(self.wrapper, "w") as f:
            f.write(f'#!/bin/sh\nexec "{AGENTSHIM}" --audit-dir "{self.audit}" --policy "{self.policy}" "$@"\n')
        os.chmod(self.wrapper, 0o755)
        self.write_cni()
        run(["mount", "--bind", self.base, self.base], check=True)
        self.bind_mounted = True
        run(["mount", "--make-shared", self.base], check=True)
        run(["ip", "link", "add", self.bridge, "type", "bridge"], check=True)
        self.bridge_created = True
        prefix = self.subnet.split("/")[1]
        run(["ip", "addr", "add", f"{self.gateway}/{prefix}", "dev", self.bridge], check=True)
        run(["ip", "link", "set", self.bridge, "up"], check=True)
        self.hugetlb = v1_hierarchy_unmounted("hugetlb")
        if self.hugetlb and not os.path.isdir("/sys/fs/cgroup/hugetlb"):
            os.mkdir("/sys/fs/cgroup/hugetlb")  # the mount point (bench/lifecycle.py's); removed at stop()
            self.made_hugetlb_dir = True
        super().start()
        # Pod cgroups go under the kubelet's cgroup_parent, not the namespace.
        self.cgroups = ParentCgroups(self.CGROUP_TOP)
        return self

    def import_images(self, pause_rootfs):
        """The busybox image and a pause image (pause_rootfs holds one static
        /pause), imported into the k8s.io namespace the CRI plugin serves."""
        self.out("images", "import", oci_image_tar(self.base, self.IMAGE), timeout=120)
        pause = oci_image_tar(self.base, self.SANDBOX_IMAGE, rootfs=pause_rootfs, entrypoint=["/pause"], cmd=(),
                              name="pause")
        self.out("images", "import", pause, timeout=120)

    def bridge_ports(self):
        """Interfaces enslaved to the test bridge (one veth per live pod)."""
        d = f"/sys/class/net/{self.bridge}/brif"
        return sorted(os.listdir(d)) if os.path.isdir(d) else []

    def allocated_ips(self):
        """host-local's allocations: one file named after each leased IP."""
        d = os.path.join(self.ipam_dir, self.network)
        if not os.path.isdir(d):
            return []
        return sorted(f for f in os.listdir(d) if f != "lock" and not f.startswith("last_reserved_ip"))

    def before_stop(self):
        if self.SYSTEMD_CGROUP:
            # The pods' slices (the kubelet's to remove; their scopes are
            # gone with the pods): stopping the top slice stops them all.
            run(["systemctl", "stop", f"{self.SLICE_TOP}.slice"])
        # Pods are removed through CRI by the tests. The pods' parents in the
        # hierarchy that only containerd's namespace mounts: remove them
        # (empty ones, deepest first) while it can still be reached;
        # ParentCgroups sees the rest.
        if not self.hugetlb:
            return
        top = os.path.join(self.cgroup_root(), "hugetlb", self.CGROUP_TOP)
        remove_empty_tree(top)
        if os.path.isdir(top):
            self.cgroups_left.append(top)

    def after_stop(self):
        if self.made_hugetlb_dir:
            os.rmdir("/sys/fs/cgroup/hugetlb")
            self.made_hugetlb_dir = False
        if self.bridge_created:
            run(["ip", "link", "del", self.bridge])
            self.bridge_created = False


class Podman:
    """podman with private --root/--runroot, cgroupfs manager, file events,
    no network setup of its own beyond what --network says."""

    def __init__(self, base):
        self.base = base
        self.root = os.path.join(base, "root")
        self.runroot = os.path.join(base, "run")
        self.tmpdir = os.path.join(base, "tmp")
        self.audit = os.path.join(base, "audit")
        os.makedirs(self.tmpdir, exist_ok=True)
        self.cgroups = ParentCgroups("libpod_parent")
        self.policy = agentshim_policy(base)
        # podman passes --runtime's path, and runtime_flags from the command line.
        self.conf = os.path.join(base, "containers.conf")
        # default_ulimits: what ulimits() asks for, for the containers no
        # --ulimit reaches (a pod's infra container).
        lim = self.ulimits()
        with open(self.conf, "w") as f:
            f.write("[containers]\n"
                    f'default_ulimits = ["{lim[1]}", "{lim[3]}"]\n'
                    "[engine]\n"
                    f'runtime = "runc"\n'
                    'cgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
                    f'events_logfile_path = "{os.path.join(base, "events.log")}"\n'
                    f'tmp_dir = "{self.tmpdir}"\n'
                    f'[engine.runtimes]\nrunc = ["{RUNC}"]\nagentshim = ["{AGENTSHIM}"]\n')

    @staticmethod
    def ulimits():
        """Podman raises RLIMIT_NOFILE and RLIMIT_NPROC to 1048576 by default
        (containers.conf default_ulimits is not applied to both); this VM lacks
        CAP_SYS_RESOURCE, so runc and agentshim alike fail. Ask for what the host
        allows instead."""
        nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 4096)
        nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 4096)
        return ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}"]

    def env(self):
        e = dict(os.environ)
        e["CONTAINERS_CONF"] = self.conf
        e["TMPDIR"] = self.tmpdir
        return e

    def __call__(self, *args, runtime=None, timeout=120, input=None, check=False):
        cmd = [PODMAN, "--root", self.root, "--runroot", self.runroot, "--storage-driver", "vfs",
               "--cgroup-manager", "cgroupfs", "--events-backend", "file"]
        if runtime == "agentshim":
            cmd += ["--runtime", AGENTSHIM, "--runtime-flag", "policy=" + self.policy,
                    "--runtime-flag", "audit-dir=" + self.audit]
        elif runtime == "runc":
            cmd += ["--runtime", RUNC]
        return run(cmd + list(args), timeout=timeout, input=input, check=check, env=self.env())

    def out(self, *args, **kw):
        r = self(*args, **kw)
        assert r.returncode == 0, f"podman {args} exited {r.returncode}: {r.stderr.decode(errors='replace')}"
        return r.stdout.decode()

    def stop(self):
        for rt in ("runc", "agentshim"):
            self("rm", "-af", "-t", "0", runtime=rt, timeout=120)
        self("system", "reset", "-f", timeout=60)
        self.cgroups.cleanup()
        remove_tree(self.base)


def wait_for(pred, timeout=20, interval=0.1, what="condition"):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


ERR_RE = re.compile(r"agentshim")
