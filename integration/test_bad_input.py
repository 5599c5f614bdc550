"""Bad input: every error names the problem, exits non-zero, and leaves no
state directory, mount or cgroup behind."""
import glob
import json
import os

import pytest

from test_lifecycle import wait_status


def leftovers(shim, cid, bundle):
    found = []
    if os.path.exists(os.path.join(shim.root, cid)):
        found.append("state dir")
    for d in (glob.glob(f"/sys/fs/cgroup/{cid}") + glob.glob(f"/sys/fs/cgroup/*/{cid}") +
              glob.glob(f"/sys/fs/cgroup/*/*/{cid}")):
        found.append(d)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            if bundle.path in line:
                found.append(line.strip())
    return found


BAD_CONFIGS = [
    ("namespace type", lambda c: c["linux"]["namespaces"].append({"type": "bogus"}), b"bogus"),
    ("mount type", lambda c: c["mounts"].append({"destination": "/x", "type": "nosuchfs", "source": "none"}), b"nosuchfs"),
    ("capability", lambda c: c["process"]["capabilities"]["bounding"].append("CAP_NOT_A_CAP"), b"CAP_NOT_A_CAP"),
    ("rlimit", lambda c: c["process"].__setitem__("rlimits", [{"type": "RLIMIT_BOGUS", "hard": 1, "soft": 1}]), b"RLIMIT_BOGUS"),
    ("no args", lambda c: c["process"].__setitem__("args", []), b"process.args"),
    ("no process", lambda c: c.pop("process"), b"process"),
    ("bad ociVersion", lambda c: c.__setitem__("ociVersion", 7), b"ociVersion"),
    ("seccomp op", lambda c: c["linux"].__setitem__("seccomp", {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["read"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_NOPE"}]}]}),
     b"SCMP_CMP_NOPE"),
    ("cgroup path", lambda c: c["linux"].__setitem__("cgroupsPath", "/a/../../etc"), b"cgroupsPath"),
    ("missing executable", lambda c: c["process"].__setitem__("args", ["/bin/no-such-program"]), b"no-such-program"),
    ("bind source missing", lambda c: c["mounts"].append({"destination": "/y", "type": "bind", "source": "/no/such/src",
                                                           "options": ["bind"]}), b"/no/such/src"),
    ("bad sysctl", lambda c: c["linux"].__setitem__("sysctl", {"kernel.no_such_knob": "1"}), b"kernel.no_such_knob"),
]


@pytest.mark.parametrize("name,mutate,needle", BAD_CONFIGS, ids=[b[0] for b in BAD_CONFIGS])
def test_bad_config_is_refused_cleanly(shim, bundle, cid, name, mutate, needle):
    shim.ids.add(cid)  # cleaned up even if a bad config were wrongly accepted
    mutate(bundle.config)
    bundle.save()
    for cmd in (["create", "--bundle", bundle.path, cid], ["run", "--bundle", bundle.path, cid]):
        r = shim(*cmd)
        assert r.returncode != 0, f"{name}: {cmd[0]} succeeded"
        assert needle in r.stderr, f"{name}: error does not name the problem: {r.stderr!r}"
        assert leftovers(shim, cid, bundle) == [], f"{name}: leftovers after failed {cmd[0]}"


def test_bad_signal_name(shim, runc, bundle_factory):
    for rt, name in ((shim, "sig-shim"), (runc, "sig-runc")):
        b = bundle_factory().args("sleep", "30")
        rt.ids.add(name)
        rt("run", "--detach", "--bundle", b.path, name, check=True)
        r = rt("kill", name, "SIGNOPE")
        assert r.returncode == 1, name
        assert b"SIGNOPE" in r.stderr or b"NOPE" in r.stderr
        assert rt.json("state", name)["status"] == "running"
        # numbers and names without SIG work too
        rt("kill", name, "9", check=True)
        wait_status(rt, name, "stopped")


def test_invalid_container_ids(shim, bundle):
    for bad in ("../escape", "a/b", "", ".", "x" * 1025):
        r = shim("create", "--bundle", bundle.path, bad)
        assert r.returncode != 0, bad
    assert not os.path.exists(os.path.join(os.path.dirname(shim.root), "escape"))


def test_delete_of_running_container_needs_force(shim, bundle, cid):
    shim.ids.add(cid)
    shim("run", "--detach", "--bundle", bundle.args("sleep", "30").path, cid, check=True)
    r = shim("delete", cid)
    assert r.returncode == 1
    assert b"running" in r.stderr
    shim("delete", "--force", cid, check=True)
    shim.ids.discard(cid)
    assert leftovers(shim, cid, bundle) == []


def test_corrupt_state_file_is_reported(shim, bundle, cid):
    shim.ids.add(cid)
    shim("run", "--detach", "--bundle", bundle.args("sleep", "30").path, cid, check=True)
    st = shim.json("state", cid)
    path = os.path.join(shim.root, cid, "state.json")
    good = open(path).read()
    with open(path, "w") as f:
        f.write(good[: len(good) // 2])
    r = shim("state", cid)
    assert r.returncode == 1
    assert b"state.json" in r.stderr
    with open(path, "w") as f:
        f.write(good)
    assert shim.json("state", cid)["pid"] == st["pid"]


@pytest.mark.parametrize("source", ["audit", "audit/keys", "/"])
def test_mounting_the_record_into_the_container_is_refused(shim, bundle, cid, source):
    audit = shim.extra[1]
    os.makedirs(os.path.join(audit, "keys"), exist_ok=True)
    src = {"audit": audit, "audit/keys": os.path.join(audit, "keys"), "/": "/"}[source]
    bundle.config["mounts"].append({"destination": "/peek", "type": "bind", "source": src, "options": ["rbind"]})
    bundle.save()
    shim.ids.add(cid)
    r = shim("run", "--bundle", bundle.args("true").path, cid)
    assert r.returncode == 1
    assert b"audit directory" in r.stderr
    assert leftovers(shim, cid, bundle) == []


def test_a_host_key_that_cannot_be_made_fails_create_not_the_record(shim, bundle, cid):
    """The host key is made by the first run's create: where it cannot be
    (here `keys` is a file), create fails naming the path, before the
    container runs, instead of a run whose record ends without a signature."""
    audit = shim.extra[1]
    os.makedirs(audit, exist_ok=True)
    with open(os.path.join(audit, "keys"), "w") as f:
        f.write("not a directory\n")
    shim.ids.add(cid)
    r = shim("run", "--bundle", bundle.args("true").path, cid)
    assert r.returncode == 1, r.stderr
    assert os.path.join(audit, "keys").encode() in r.stderr, r.stderr
    assert leftovers(shim, cid, bundle) == []
    # Once it can be made, the first create makes it, before the container
    # runs: a detached container has it while it runs.
    os.unlink(os.path.join(audit, "keys"))
    shim("run", "--detach", "--bundle", bundle.args("sleep", "30").path, cid, check=True)
    assert sorted(os.listdir(os.path.join(audit, "keys"))) == ["signing.pem", "signing.pem.pub"]
    shim("delete", "--force", cid, check=True)
    assert shim("verify", cid).returncode == 0
