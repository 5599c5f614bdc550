"""cgroup v2 side by side with runc: placement, every resource's v2 file,
freezer, exec into the container's cgroup (under nsdelegate), cleanup.

Written for the pure-v2 guests of scripts/guest (make test-guest); the
hybrid host's v1 side is covered by test_lifecycle and the fake-tree unit
tests."""
import json
import os
import subprocess
import time

import pytest

from conftest import UNIFIED
from test_lifecycle import wait_status

pytestmark = pytest.mark.skipif(not UNIFIED, reason="cgroup v2 files: runs in the pure-v2 guests (make test-guest)")

MiB = 1024 * 1024


def cgroup_dir(pid):
    line = open(f"/proc/{pid}/cgroup").read().splitlines()[0]
    return "/sys/fs/cgroup" + line.split(":", 2)[2]


def read(d, f):
    return open(os.path.join(d, f)).read().strip()


def start(rt, b, name, resources=None):
    if resources is not None:
        b.config["linux"]["resources"] = resources
        b.config["linux"].pop("cgroupsPath", None)
    b.args("sleep", "60")
    rt.ids.add(name)
    rt("run", "--detach", "--bundle", b.path, name, check=True)
    st = rt.json("state", name)
    return st["pid"], cgroup_dir(st["pid"])


def test_default_placement_matches_runc(shim, runc, bundle_factory):
    """No cgroupsPath: "<id>" below the parent of the caller's cgroup, as runc."""
    dirs = {}
    for rt, name in ((runc, "pl-runc"), (shim, "pl-shim")):
        _, d = start(rt, bundle_factory(), name)
        dirs[name] = d
        assert os.path.basename(d) == name
    assert os.path.dirname(dirs["pl-shim"]) == os.path.dirname(dirs["pl-runc"])
    own = cgroup_dir(os.getpid())
    assert os.path.dirname(dirs["pl-shim"]) == (os.path.dirname(own) if own != "/sys/fs/cgroup" else own)


RESOURCES = {
    "memory": {"limit": 96 * MiB, "reservation": 32 * MiB},
    "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0", "mems": "0"},
    "pids": {"limit": 42},
}
FILES = ["memory.max", "memory.low", "cpu.weight", "cpu.max", "cpuset.cpus", "cpuset.mems", "pids.max"]


def test_resources_write_the_same_v2_files_as_runc(shim, runc, bundle_factory):
    got = {}
    for rt, name in ((runc, "rs-runc"), (shim, "rs-shim")):
        _, d = start(rt, bundle_factory(), name, json.loads(json.dumps(RESOURCES)))
        got[name] = {f: read(d, f) for f in FILES}
    assert got["rs-shim"] == got["rs-runc"]
    assert got["rs-shim"]["memory.max"] == str(96 * MiB)
    assert got["rs-shim"]["pids.max"] == "42"


def block_device():
    for dev in ("/dev/vda", "/dev/sda", "/dev/nvme0n1"):
        if os.path.exists(dev):
            rdev = os.stat(dev).st_rdev
            return os.major(rdev), os.minor(rdev)
    return None


def test_swap_hugetlb_and_io_match_runc(shim, runc, bundle_factory):
    res = {"memory": {"limit": 64 * MiB, "swap": 96 * MiB},
           "hugepageLimits": [{"pageSize": "2MB", "limit": 4 * MiB}]}
    files = ["memory.max", "memory.swap.max", "hugetlb.2MB.max", "io.max"]
    dev = block_device()
    if dev:
        res["blockIO"] = {"throttleReadBpsDevice": [{"major": dev[0], "minor": dev[1], "rate": 1048576}],
                          "throttleWriteIOPSDevice": [{"major": dev[0], "minor": dev[1], "rate": 100}]}
    got = {}
    for rt, name in ((runc, "sw-runc"), (shim, "sw-shim")):
        _, d = start(rt, bundle_factory(), name, json.loads(json.dumps(res)))
        got[name] = {f: read(d, f) for f in files if os.path.exists(os.path.join(d, f))}
    assert got["sw-shim"] == got["sw-runc"]
    assert got["sw-shim"]["memory.swap.max"] == str(32 * MiB)
    if dev:
        assert f"{dev[0]}:{dev[1]} rbps=1048576" in got["sw-shim"]["io.max"]


def test_update_and_pids_limit_enforced(shim, bundle, cid):
    _, d = start(shim, bundle, cid, {"pids": {"limit": 50}})
    shim("update", "--pids-limit", "5", "--memory", str(48 * MiB), "--cpu-quota", "20000", cid, check=True)
    assert read(d, "pids.max") == "5"
    assert read(d, "memory.max") == str(48 * MiB)
    assert read(d, "cpu.max").split()[0] == "20000"
    r = shim("exec", cid, "sh", "-c", "for i in 1 2 3 4 5 6 7 8; do sleep 5 & done; wait")
    assert r.returncode != 0 or b"fork" in r.stderr.lower()


def test_freezer_pause_resume(shim, bundle, cid):
    _, d = start(shim, bundle, cid, {})
    shim("pause", cid, check=True)
    assert read(d, "cgroup.freeze") == "1"
    assert "frozen 1" in read(d, "cgroup.events")
    wait_status(shim, cid, "paused")
    shim("resume", cid, check=True)
    assert "frozen 0" in read(d, "cgroup.events")
    wait_status(shim, cid, "running")


def test_exec_lands_in_the_container_cgroup_and_namespace(shim, runc, bundle_factory):
    """exec under nsdelegate: in the container's cgroup, seeing "/" as its own."""
    for rt, name in ((runc, "ex-runc"), (shim, "ex-shim")):
        b = bundle_factory()
        assert any(n["type"] == "cgroup" for n in b.config["linux"]["namespaces"])
        _, d = start(rt, b, name)
        r = rt("exec", name, "cat", "/proc/self/cgroup", check=True)
        assert r.stdout.strip() == b"0::/", (name, r.stdout)
        r = rt("exec", name, "sh", "-c", "sleep 0.5 & cat /sys/fs/cgroup/cgroup.procs; wait")
        assert r.returncode == 0, (name, r.stderr)
    procs = read(d, "cgroup.procs").split()
    assert len(procs) >= 1


def test_events_stats_and_oom_from_v2_files(shim, bundle, cid):
    _, d = start(shim, bundle, cid, {"memory": {"limit": 64 * MiB}, "pids": {"limit": 30}})
    ev = json.loads(shim("events", "--stats", cid, check=True).stdout)["data"]
    assert ev["memory"]["usage"]["limit"] == 64 * MiB
    assert ev["pids"]["limit"] == 30 and ev["pids"]["current"] >= 1
    assert ev["cpu"]["usage"]["total"] > 0
    # An OOM kill inside is counted in memory.events and reported.
    shim("update", "--memory", str(16 * MiB), "--memory-swap", str(16 * MiB), cid, check=True)
    shim("exec", cid, "sh", "-c", "tail /dev/zero", timeout=120)
    assert int(dict(l.split() for l in read(d, "memory.events").splitlines())["oom_kill"]) >= 1


def test_kill_all_and_delete_leave_no_cgroup(shim, bundle, cid):
    bundle.sh("trap '' TERM; sleep 100 & sleep 100 & wait")
    shim.ids.add(cid)
    shim("run", "--detach", "--bundle", bundle.path, cid, check=True)
    d = cgroup_dir(shim.json("state", cid)["pid"])
    time.sleep(0.3)
    assert len(read(d, "cgroup.procs").split()) >= 4  # sh, two sleeps, the sentinel
    shim("kill", "--all", cid, "KILL", check=True)
    wait_status(shim, cid, "stopped")
    shim("delete", cid, check=True)
    shim.ids.discard(cid)
    assert not os.path.exists(d)


def test_explicit_cgroups_path_delegates_controllers(shim, runc, bundle_factory):
    """An absolute cgroupsPath two levels deep (as containerd passes): the
    controllers are enabled along the path and the limits apply."""
    got = {}
    for rt, name in ((runc, "cp-runc"), (shim, "cp-shim")):
        b = bundle_factory()
        b.config["linux"]["cgroupsPath"] = f"/life-{name}/pod/{name}"
        b.config["linux"]["resources"] = {"memory": {"limit": 80 * MiB}, "pids": {"limit": 9}}
        b.args("sleep", "60")
        rt.ids.add(name)
        rt("run", "--detach", "--bundle", b.path, name, check=True)
        d = cgroup_dir(rt.json("state", name)["pid"])
        assert d == f"/sys/fs/cgroup/life-{name}/pod/{name}"
        got[name] = (read(d, "memory.max"), read(d, "pids.max"))
        rt("delete", "--force", name, check=True)
        rt.ids.discard(name)
        for p in (f"/sys/fs/cgroup/life-{name}/pod", f"/sys/fs/cgroup/life-{name}"):
            if os.path.isdir(p):
                os.rmdir(p)
    assert got["cp-shim"] == got["cp-runc"] == (str(80 * MiB), "9")


SYSTEMD = pytest.mark.skipif(not os.path.isdir("/run/systemd/system"),
                             reason="the systemd cgroup driver needs systemd as PID 1 (the systemd guest)")
UNIT_PROPS = ["ActiveState", "LoadState", "Delegate", "Slice", "ControlGroup", "MemoryMax", "TasksMax",
              "CPUWeight", "CPUQuotaPerSecUSec", "MemoryAccounting", "TasksAccounting"]


def unit_show(unit):
    out = subprocess.run(["systemctl", "show", unit, "-p", ",".join(UNIT_PROPS)],
                         capture_output=True, text=True, check=True).stdout
    return dict(l.split("=", 1) for l in out.splitlines() if "=" in l)


@SYSTEMD
def test_systemd_driver_path_and_cleanup(shim, runc, bundle_factory):
    """--systemd-cgroup with "slice:prefix:name": a transient scope systemd
    made (`systemctl show`: active, Delegate=yes, the limits as properties),
    the container's processes in it, `update` reaching the unit, nothing
    left after delete (no unit, no directory) — as runc."""
    got = {}
    for rt, name in ((runc, "sd-runc"), (shim, "sd-shim")):
        b = bundle_factory()
        b.config["linux"]["cgroupsPath"] = f"system.slice:life:{name}"
        b.config["linux"]["resources"] = {"memory": {"limit": 72 * MiB}, "pids": {"limit": 11},
                                          "cpu": {"shares": 512, "quota": 25000, "period": 100000}}
        b.args("sleep", "60")
        rt.extra.insert(0, "--systemd-cgroup")
        unit = f"life-{name}.scope"
        try:
            rt.ids.add(name)
            rt("run", "--detach", "--bundle", b.path, name, check=True)
            d = cgroup_dir(rt.json("state", name)["pid"])
            assert d == f"/sys/fs/cgroup/system.slice/{unit}", d
            props = unit_show(unit)
            assert props["ActiveState"] == "active", props
            assert props["ControlGroup"] == f"/system.slice/{unit}"
            assert props["Slice"] == "system.slice"
            rt("update", "--pids-limit", "13", name, check=True)
            after = unit_show(unit)
            got[name] = (read(d, "memory.max"), read(d, "pids.max"), read(d, "cpu.weight"), read(d, "cpu.max"),
                         {k: props[k] for k in UNIT_PROPS if k not in ("ActiveState", "LoadState")},
                         after["TasksMax"])
            rt("delete", "--force", name, check=True)
            rt.ids.discard(name)
            for _ in range(50):
                if not os.path.exists(d) and unit_show(unit)["LoadState"] == "not-found":
                    break
                time.sleep(0.1)
            assert not os.path.exists(d), d
            assert unit_show(unit)["LoadState"] == "not-found", unit_show(unit)
        finally:
            rt.extra.remove("--systemd-cgroup")
    shim_got, runc_got = got["sd-shim"], got["sd-runc"]
    assert shim_got[:4] == runc_got[:4]
    assert shim_got[:2] == (str(72 * MiB), "13")
    # The unit's properties as runc's scope has them (its name aside).
    p = dict(shim_got[4])
    assert p["ControlGroup"].endswith("sd-shim.scope")
    p["ControlGroup"] = runc_got[4]["ControlGroup"]
    assert p == runc_got[4]
    assert p["Delegate"] == "yes" and p["MemoryMax"] == str(72 * MiB) and p["CPUWeight"] == runc_got[4]["CPUWeight"]
    assert shim_got[5] == runc_got[5] == "13"
