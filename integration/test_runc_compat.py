"""Behaviours runc users rely on (issue 19), each scenario run under runc and
agentshim in the same test, and, where the scenario could reach the host,
the host state compared before and after (a bound directory's entries and
inode numbers, the outer namespaces' sysctl values).

agentshim runs under the permissive conformance policy (docs/CONFORMANCE.md)
where the scenario needs what the default policy refuses (binds of host
directories, host namespaces): what is checked here is the runtime, not the
policy."""
import json
import os
import pathlib
import shutil
import tempfile
import stat
import time

import pytest

from conftest import AGENTSHIM, run

PERMISSIVE = {
    "mode": "enforce",
    "capabilities": {"no_new_privileges": False},
    "filesystem": {"readonly_root": False, "masked_paths": [], "readonly_paths": [], "allow_bind_mounts": True,
                   "forbidden_sources": []},
    "namespaces": {"allow_join": ["pid", "ipc", "uts", "network", "mount", "cgroup"],
                   "allow_host": ["pid", "ipc", "uts", "mount", "network", "cgroup"]},
    "network": {"mode": "passthrough"},
}


@pytest.fixture
def pshim(shim, tmp_path):
    p = tmp_path / "permissive.json"
    p.write_text(json.dumps(PERMISSIVE))
    shim.extra = ["--policy", str(p)] + shim.extra
    return shim


def both(pshim, runc):
    return (("runc", runc), ("shim", pshim))


def snapshot(path):
    """Every entry under path: name -> (inode, mode, rdev, size, mtime)."""
    out = {}
    for dirpath, dirs, files in os.walk(path):
        for n in dirs + files:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            out[os.path.relpath(p, path)] = (st.st_ino, st.st_mode, st.st_rdev, st.st_size, st.st_mtime_ns)
    return out


def without_ns(config, *types):
    config["linux"]["namespaces"] = [n for n in config["linux"]["namespaces"] if n["type"] not in types]
    if "uts" in types:
        config.pop("hostname", None)  # else both refuse the hostname first


def err(r):
    return r.stderr.decode(errors="replace")


# --- item 2: a bind onto /dev is never written --------------------------------------------------------


def test_bind_of_host_directory_onto_dev_leaves_it_untouched(pshim, runc, bundle_factory, tmp_path, cid):
    host = tmp_path / "hostdev"
    host.mkdir()
    (host / "null").write_text("a regular file, not a device\n")
    (host / "sub").mkdir()
    (host / "sub" / "f").write_text("x")
    before = snapshot(host)
    for name, rt in both(pshim, runc):
        b = bundle_factory()
        b.config["mounts"] = [m for m in b.config["mounts"] if m["destination"] != "/dev"]
        b.config["mounts"].insert(1, {"destination": "/dev", "type": "bind", "source": str(host),
                                      "options": ["rbind", "rw"]})
        # Only what a /dev needs beside it (devpts, shm, mqueue would be mounted through the bind).
        b.config["mounts"] = [m for m in b.config["mounts"] if not m["destination"].startswith("/dev/")]
        b.config["process"]["terminal"] = False
        r = rt("run", "--bundle", b.sh("ls /dev; cat /dev/null").path, cid + name[0])
        assert r.returncode == 0, (name, err(r))
        assert sorted(r.stdout.decode().split()[:3]) == ["a", "null", "sub"] or "sub" in r.stdout.decode()
        assert snapshot(host) == before, f"{name} changed the bound host directory"


def test_host_dev_bound_onto_dev_runs_and_is_unchanged(pshim, runc, bundle_factory, cid):
    top = lambda: {n: os.lstat(os.path.join("/dev", n)).st_ino for n in os.listdir("/dev")}
    before = top()
    null_before = os.stat("/dev/null")
    for name, rt in both(pshim, runc):
        b = bundle_factory()
        b.config["mounts"] = [m for m in b.config["mounts"] if not m["destination"].startswith("/dev")]
        b.config["mounts"].insert(1, {"destination": "/dev", "type": "bind", "source": "/dev",
                                      "options": ["rbind", "rw"]})
        r = rt("run", "--bundle", b.sh("head -c 3 /dev/zero | wc -c").path, cid + name[0])
        assert r.returncode == 0, (name, err(r))
        assert r.stdout.split() == [b"3"]
        after = top()
        assert {k: v for k, v in after.items() if k in before} == before, f"{name} replaced entries of the host's /dev"
        assert sorted(set(after) - set(before)) == [], f"{name} created entries in the host's /dev"
        st = os.stat("/dev/null")
        assert (st.st_ino, st.st_rdev, st.st_mode) == (null_before.st_ino, null_before.st_rdev, null_before.st_mode)


def test_device_inside_a_bound_host_directory_is_refused_not_created(pshim, bundle, tmp_path, cid):
    """runc would mknod through the bind into the host directory; agentshim
    refuses (docs/CONFORMANCE.md)."""
    host = tmp_path / "bound"
    host.mkdir()
    bundle.config["mounts"].append({"destination": "/srv/dev", "type": "bind", "source": str(host),
                                    "options": ["rbind"]})
    bundle.config["linux"]["devices"] = [{"path": "/srv/dev/null2", "type": "c", "major": 1, "minor": 3}]
    r = pshim("run", "--bundle", bundle.args("true").path, cid)
    assert r.returncode == 1
    assert "does not create device nodes in a host directory" in err(r)
    assert os.listdir(host) == []


@pytest.mark.parametrize("path", ["/mydev/null2", "/dev/sub/zero2"])
def test_device_paths_outside_dev_as_runc(pshim, runc, bundle_factory, cid, path):
    for name, rt in both(pshim, runc):
        b = bundle_factory()
        b.config["linux"]["devices"] = [{"path": path, "type": "c", "major": 1, "minor": 5, "fileMode": 0o640,
                                         "uid": 0, "gid": 0}]
        r = rt("run", "--bundle", b.sh(f"stat -c '%F %t,%T %a' {path}; head -c 2 {path} | wc -c").path,
               cid + name[0])
        assert r.returncode == 0, (name, err(r))
        assert r.stdout.decode().split() == ["character", "special", "file", "1,5", "640", "2"], name


# --- item 3: namespaced sysctls -----------------------------------------------------------------------

SYSCTLS = [
    # key, value, namespaces removed, runc's error (None: accepted)
    ("fs.mqueue.queues_max", "77", ("ipc",), 'sysctl "fs.mqueue.queues_max" is not allowed in the hosts ipc namespace'),
    ("kernel.shmmni", "4000", ("ipc",), 'sysctl "kernel.shmmni" is not allowed in the hosts ipc namespace'),
    ("kernel.msgmax", "4000", ("ipc",), 'sysctl "kernel.msgmax" is not allowed in the hosts ipc namespace'),
    ("kernel.sem", "250 32000 32 200", ("ipc",), 'sysctl "kernel.sem" is not allowed in the hosts ipc namespace'),
    ("kernel.shm_rmid_forced", "1", ("ipc",),
     'sysctl "kernel.shm_rmid_forced" is not allowed in the hosts ipc namespace'),
    ("net.ipv4.ip_forward", "1", ("network",), 'sysctl "net.ipv4.ip_forward" not allowed in host network namespace'),
    ("kernel.domainname", "example.test", ("uts",), 'sysctl "kernel.domainname" is not in a separate kernel namespace'),
    ("kernel.hostname", "h", (), 'sysctl "kernel.hostname" is not allowed as it conflicts with the OCI "hostname" field'),
    ("vm.swappiness", "10", (), 'sysctl "vm.swappiness" is not in a separate kernel namespace'),
    ("kernel.pid_max", "4000", (), 'sysctl "kernel.pid_max" is not in a separate kernel namespace'),
    ("fs.mqueue.queues_max", "77", (), None),
    ("kernel.shmmni", "4000", (), None),
    ("kernel.msgmax", "4000", (), None),
    ("kernel.sem", "250 32000 32 200", (), None),
    ("kernel.shm_rmid_forced", "1", (), None),
    ("net.ipv4.ip_forward", "1", (), None),
    ("net/ipv4/tcp_syncookies", "0", (), None),
    ("kernel.domainname", "example.test", (), None),
]


def host_sysctls():
    keys = ["fs/mqueue/queues_max", "kernel/shmmni", "kernel/msgmax", "kernel/sem", "kernel/shm_rmid_forced",
            "net/ipv4/ip_forward", "net/ipv4/tcp_syncookies", "kernel/domainname", "kernel/hostname",
            "vm/swappiness", "kernel/pid_max"]
    return {k: open("/proc/sys/" + k).read() for k in keys}


@pytest.mark.parametrize("key,value,removed,runc_error", SYSCTLS,
                         ids=[f"{k}-{'no-' + '-'.join(r) if r else 'own-ns'}" for k, _, r, _ in SYSCTLS])
def test_sysctl_namespace_rules_as_runc(pshim, runc, bundle_factory, cid, key, value, removed, runc_error):
    before = host_sysctls()
    proc_path = "/proc/sys/" + key.replace(".", "/")
    for name, rt in both(pshim, runc):
        b = bundle_factory()
        without_ns(b.config, *removed)
        b.config["linux"]["sysctl"] = {key: value}
        r = rt("run", "--bundle", b.sh(f"cat {proc_path}").path, cid + name[0])
        if runc_error is None:
            assert r.returncode == 0, (name, err(r))
            assert r.stdout.decode().split() == value.split(), name
        else:
            assert r.returncode == 1, (name, r.stdout)
            assert runc_error in err(r).replace('\\"', '"'), (name, err(r))
        assert host_sysctls() == before, f"{name} changed a host sysctl"


def test_joined_host_ipc_namespace_is_the_hosts(pshim, bundle, cid):
    """A path to the runtime's own ipc namespace is the host's (runc only
    checks this for net; agentshim for every family)."""
    before = host_sysctls()
    for n in bundle.config["linux"]["namespaces"]:
        if n["type"] == "ipc":
            n["path"] = f"/proc/{os.getpid()}/ns/ipc"
    bundle.config["linux"]["sysctl"] = {"fs.mqueue.queues_max": "77"}
    r = pshim("run", "--bundle", bundle.args("true").path, cid)
    assert r.returncode == 1
    assert 'sysctl "fs.mqueue.queues_max" is not allowed in the hosts ipc namespace' in err(r)
    assert host_sysctls() == before


# --- item 4: hooks ------------------------------------------------------------------------------------


def test_every_poststop_hook_runs_and_failures_warn(pshim, runc, bundle_factory, cid, tmp_path):
    for name, rt in both(pshim, runc):
        marks = tmp_path / f"poststop-{name}"
        logf = tmp_path / f"log-{name}"
        b = bundle_factory()
        b.config["hooks"] = {"poststop": [
            {"path": "/bin/sh", "args": ["sh", "-c", f"echo one >> {marks}; exit 4"]},
            {"path": "/bin/sh", "args": ["sh", "-c", f"echo two >> {marks}"]},
        ]}
        b.save()
        rt.extra = ["--log", str(logf)] + rt.extra
        r = rt("run", "--bundle", b.args("true").path, cid + name[0])
        rt.extra = rt.extra[2:]
        assert r.returncode == 0, (name, err(r))
        if name == "runc":
            # runc stops at the first failure (the spec says continue).
            assert marks.read_text().split() == ["one"]
        else:
            assert marks.read_text().split() == ["one", "two"]
            assert "poststop hook #0" in err(r) and "exit status 4" in err(r)
            assert "poststop hook #0" in logf.read_text() and "level=warning" in logf.read_text()


@pytest.mark.parametrize("how", ["run", "create-start"])
def test_failing_poststart_removes_the_container_as_runc(pshim, runc, bundle_factory, cid, tmp_path, how):
    for name, rt in both(pshim, runc):
        stopped = tmp_path / f"poststop-{name}-{how}"
        b = bundle_factory()
        b.config["hooks"] = {"poststart": [{"path": "/bin/sh", "args": ["sh", "-c", "echo hook-said-no >&2; exit 3"]}],
                             "poststop": [{"path": "/bin/sh", "args": ["sh", "-c", f"touch {stopped}"]}]}
        b.args("sleep", "60")
        c = cid + name[0]
        if how == "run":
            r = rt("run", "--bundle", b.path, c)
        else:
            rt.ids.add(c)
            rc = rt("create", "--bundle", b.path, c)
            # runc runs poststart hooks during create; agentshim in start.
            r = rc if rc.returncode != 0 else rt("start", c)
        assert r.returncode == 1, (name, err(r))
        assert "exit status 3" in err(r), (name, err(r))
        assert rt("state", c).returncode != 0, f"{name}: the container is still there"
        assert c not in rt("list", "-q").stdout.decode().split()
        assert stopped.exists(), f"{name}: poststop hooks did not run"


def test_hooks_without_env_get_the_runtimes_environment(pshim, runc, bundle_factory, cid, tmp_path):
    for name, rt in both(pshim, runc):
        env_file = tmp_path / f"env-{name}"
        empty_file = tmp_path / f"empty-{name}"
        b = bundle_factory()
        b.config["hooks"] = {"poststop": [
            {"path": "/usr/bin/env", "args": ["sh", "-c", f"env > {env_file}"]},
            {"path": "/bin/sh", "args": ["sh", "-c", f"env > {empty_file}"], "env": []},
        ]}
        b.config["hooks"]["poststop"][0]["path"] = "/bin/sh"
        b.args("true")
        env = dict(os.environ, HOOK_MARKER="from-the-caller")
        r = run([rt.binary, "--root", rt.root, *rt.extra, "run", "--bundle", b.path, cid + name[0]], env=env)
        assert r.returncode == 0, (name, err(r))
        assert "HOOK_MARKER=from-the-caller" in env_file.read_text().split("\n"), name
        assert "HOOK_MARKER" not in empty_file.read_text(), name


# --- item 5: CLI and config details -------------------------------------------------------------------


def test_update_cpu_share_spelling(pshim, runc, bundle_factory, cid):
    for name, rt in both(pshim, runc):
        b = bundle_factory()
        c = cid + name[0]
        rt.ids.add(c)
        r = rt("run", "-d", "--bundle", b.args("sleep", "60").path, c)
        assert r.returncode == 0, (name, err(r))
        pid = rt.json("state", c)["pid"]
        assert rt("update", "--cpu-share", "512", c).returncode == 0, name
        cg = [l.split(":")[2] for l in open(f"/proc/{pid}/cgroup").read().splitlines()
              if "cpu" in l.split(":")[1].split(",")][0]
        assert open(f"/sys/fs/cgroup/cpu{cg}/cpu.shares").read().strip() == "512", name
        rt("delete", "-f", c)


def test_log_that_cannot_be_opened_is_an_error(pshim, runc, bundle_factory, cid):
    for name, rt in both(pshim, runc):
        b = bundle_factory()
        r = run([rt.binary, "--root", rt.root, "--log", "/nonexistent-dir/x.log", *rt.extra, "run", "--bundle",
                 b.args("true").path, cid + name[0]])
        assert r.returncode == 1, name
        assert "open /nonexistent-dir/x.log: no such file or directory" in err(r).lower(), (name, err(r))


def test_missing_cwd_is_created(pshim, runc, bundle_factory, cid):
    for name, rt in both(pshim, runc):
        b = bundle_factory()
        b.config["process"]["cwd"] = "/does/not/exist"
        r = rt("run", "--bundle", b.args("pwd").path, cid + name[0])
        assert r.returncode == 0, (name, err(r))
        assert r.stdout.decode().strip() == "/does/not/exist"
        assert os.path.isdir(os.path.join(b.rootfs, "does/not/exist"))


@pytest.mark.parametrize("link", ["/target/deep", "../../escape"])
def test_dangling_symlink_destination_resolved_in_rootfs(pshim, runc, bundle_factory, cid, tmp_path, link):
    parent_before = sorted(os.listdir(tmp_path))
    for name, rt in both(pshim, runc):
        b = bundle_factory()
        os.symlink(link, os.path.join(b.rootfs, "dangle"))
        b.config["mounts"].append({"destination": "/dangle", "type": "tmpfs", "source": "tmpfs",
                                   "options": ["nosuid"]})
        want = "/target/deep" if link.startswith("/") else "/escape"
        r = rt("run", "--bundle", b.sh(f"grep -c ' {want} ' /proc/self/mountinfo").path, cid + name[0])
        assert r.returncode == 0, (name, err(r))
        assert r.stdout.decode().strip() == "1", name
        assert os.path.isdir(os.path.join(b.rootfs, want.lstrip("/")))
    assert not os.path.exists(os.path.join(os.path.dirname(str(tmp_path)), "escape"))
    assert not os.path.exists("/escape")


@pytest.mark.parametrize("options,want", [(["nosuid"], "1733"), (["nosuid", "mode=750"], None)])
def test_tmpfs_without_mode_takes_the_mount_points_mode(pshim, runc, bundle_factory, cid, options, want):
    seen = {}
    for name, rt in both(pshim, runc):
        b = bundle_factory()
        os.makedirs(os.path.join(b.rootfs, "tm"))
        os.chmod(os.path.join(b.rootfs, "tm"), 0o1733)
        b.config["mounts"].append({"destination": "/tm", "type": "tmpfs", "source": "tmpfs", "options": options})
        r = rt("run", "--bundle", b.sh("stat -c %a /tm").path, cid + name[0])
        assert r.returncode == 0, (name, err(r))
        seen[name] = r.stdout.decode().strip()
    if want:
        assert seen == {"runc": want, "shim": want}
    else:
        # runc 1.1 chmods the tmpfs to the mount point's mode even over mode=;
        # agentshim keeps the caller's mode= (docs/CONFORMANCE.md).
        assert seen["shim"] == "750"


def test_rootfs_propagation_unbindable(pshim, bundle, cid):
    bundle.config["linux"]["rootfsPropagation"] = "unbindable"
    r = pshim("run", "--bundle", bundle.sh("awk '$5 == \"/\"' /proc/self/mountinfo").path, cid)
    assert r.returncode == 0, err(r)
    assert "unbindable" in r.stdout.decode()


def test_userns_rootfs_under_0700_directory_of_a_mapped_owner(pshim, runc, bundle_factory, cid):
    # Not under pytest's tmp_path: its directories are 0700 root's.
    top = tempfile.mkdtemp(prefix="agentshim-userns-", dir="/tmp")
    os.chmod(top, 0o755)
    outer = pathlib.Path(top) / "private"
    outer.mkdir()
    for name, rt in both(pshim, runc):
        b = bundle_factory()
        dst = outer / name
        os.rename(b.path, dst)
        b.path, b.rootfs = str(dst), str(dst / "rootfs")
        b.config["linux"]["namespaces"].append({"type": "user"})
        b.config["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 200000, "size": 1000},
                                            {"containerID": 1000, "hostID": 1000, "size": 1}]
        b.config["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 200000, "size": 1000},
                                            {"containerID": 1000, "hostID": 1000, "size": 1}]
        for root, dirs, files in os.walk(b.rootfs):
            for n in dirs + files:
                os.lchown(os.path.join(root, n), 200000, 200000)
        os.lchown(b.rootfs, 200000, 200000)
        os.chmod(str(dst), 0o755)
        b.save()
        os.chown(str(outer), 1000, 1000)
        os.chmod(str(outer), 0o700)
        try:
            r = rt("run", "--bundle", b.args("true").path, cid + name[0])
        finally:
            os.chmod(str(outer), 0o755)
        if r.returncode != 0:
            shutil.rmtree(top, ignore_errors=True)
        assert r.returncode == 0, (name, err(r))
    shutil.rmtree(top, ignore_errors=True)


def test_userns_own_maps_bind_sources_under_root_only_directories(pshim, runc, bundle_factory, tmp_path, cid):
    """With the config's own id maps (not userns "auto") the container's root
    is host uid 100000, which cannot reach a bind source under a root-only
    directory; runc opens the sources as host root and so does agentshim (the
    supervisor's helper, in the init's mount namespace). What the source
    itself denies stays denied, and the host side is unchanged."""
    private = tmp_path / "private"  # root 0700: the container's root cannot search it
    private.mkdir()
    os.chmod(private, 0o700)
    (private / "shared").mkdir()
    (private / "shared" / "f").write_text("seen through the bind\n")
    os.chmod(private / "shared", 0o755)
    (private / "hosts").write_text("127.0.0.1 bound-file\n")
    os.chmod(private / "hosts", 0o644)
    (private / "secret").mkdir()
    (private / "secret" / "key").write_text("host root only\n")
    os.chmod(private / "secret", 0o700)
    before = snapshot(private)
    # The bundle not under pytest's tmp_path (0700, root's): the rootfs itself must be reachable.
    top = tempfile.mkdtemp(prefix="agentshim-userns-", dir="/tmp")
    os.chmod(top, 0o755)
    try:
        for name, rt in both(pshim, runc):
            b = bundle_factory()
            dst = pathlib.Path(top) / name
            os.rename(b.path, dst)
            b.path, b.rootfs = str(dst), str(dst / "rootfs")
            b.config["linux"]["namespaces"].append({"type": "user"})
            b.config["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
            b.config["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
            for root, dirs, files in os.walk(b.rootfs):
                for n in dirs + files:
                    os.lchown(os.path.join(root, n), 100000, 100000)
            os.lchown(b.rootfs, 100000, 100000)
            b.config["mounts"] += [
                {"destination": "/mnt/shared", "type": "bind", "source": str(private / "shared"),
                 "options": ["rbind", "ro"]},
                {"destination": "/mnt/hosts", "type": "bind", "source": str(private / "hosts"),
                 "options": ["bind", "ro"]},
                {"destination": "/mnt/secret", "type": "bind", "source": str(private / "secret"),
                 "options": ["rbind", "ro"]},
            ]
            b.config["process"]["terminal"] = False
            script = ("cat /mnt/shared/f /mnt/hosts; "
                      "if ls /mnt/secret >/dev/null 2>&1; then echo secret-open; else echo secret-closed; fi")
            r = rt("run", "--bundle", b.sh(script).path, cid + name[0])
            assert r.returncode == 0, (name, err(r))
            assert r.stdout.decode().splitlines() == ["seen through the bind", "127.0.0.1 bound-file",
                                                      "secret-closed"], (name, r.stdout, err(r))
            assert snapshot(private) == before, f"{name} changed the bound host directory"
    finally:
        shutil.rmtree(top, ignore_errors=True)
