"""The exec-argv BPF program loaded once per host (issue 15/16): the first
supervisor loads it and pins its link and maps under
/sys/fs/bpf/agentshim/exec_argv-<hash>/, later ones open the pins
(exec.watch "argv_program": "loaded" / "pinned"); each supervisor has its
own ring buffer under a slot (pid namespace, pid, start time) in the
`rings` map-of-maps, swept when its owner is dead; directories of other
builds of the object that no live slot uses are removed."""
import ctypes
import glob
import os
import signal
import struct
import subprocess
import time
from urllib.parse import unquote

import pytest

from conftest import AGENTSHIM, Runtime, at_once, run
from test_exec_argv import run_record
from test_exec_record import supervisor_of

TOP = "/sys/fs/bpf/agentshim"

# bpf(2), x86-64 and arm64 numbers; the attributes as the kernel lays them out.
SYS_BPF = {"x86_64": 321, "aarch64": 280}[os.uname().machine]
BPF_MAP_CREATE, BPF_MAP_LOOKUP_ELEM, BPF_MAP_GET_NEXT_KEY, BPF_OBJ_PIN, BPF_OBJ_GET = 0, 1, 4, 6, 7
BPF_MAP_TYPE_HASH = 1
SLOT = struct.Struct("<IIQ")  # struct agentshim_bpf_slot

libc = ctypes.CDLL(None, use_errno=True)


def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(attr, 128)
    r = libc.syscall(SYS_BPF, cmd, buf, 128)
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r


def obj_get(path):
    p = ctypes.create_string_buffer(path.encode())
    return bpf(BPF_OBJ_GET, struct.pack("<QII", ctypes.addressof(p), 0, 0))


def map_create_pinned(path, key_size, value_size):
    fd = bpf(BPF_MAP_CREATE, struct.pack("<IIIII", BPF_MAP_TYPE_HASH, key_size, value_size, 16, 0))
    p = ctypes.create_string_buffer(path.encode())
    bpf(BPF_OBJ_PIN, struct.pack("<QII", ctypes.addressof(p), fd, 0))
    return fd


def map_update(fd, key, value):
    k, v = ctypes.create_string_buffer(key, len(key)), ctypes.create_string_buffer(value, len(value))
    bpf(2, struct.pack("<IIQQQ", fd, 0, ctypes.addressof(k), ctypes.addressof(v), 0))


def map_keys(fd, key_size):
    keys, prev = [], None
    nxt = ctypes.create_string_buffer(key_size)
    while True:
        pk = ctypes.create_string_buffer(prev, key_size) if prev is not None else None
        try:
            bpf(BPF_MAP_GET_NEXT_KEY, struct.pack("<IIQQ", fd, 0, ctypes.addressof(pk) if pk else 0,
                                                  ctypes.addressof(nxt)))
        except OSError:
            return keys
        prev = nxt.raw
        keys.append(prev)


def slots(d):
    fd = obj_get(os.path.join(d, "slots"))
    try:
        return [SLOT.unpack(k) for k in map_keys(fd, SLOT.size)]
    finally:
        os.close(fd)


def map_key_count(d, name, key_size):
    fd = obj_get(os.path.join(d, name))
    try:
        return len(map_keys(fd, key_size))
    finally:
        os.close(fd)


def own_slot(pid):
    ns = os.stat("/proc/self/ns/pid").st_ino
    start = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[19])
    return (ns, pid, start)


def current_dirs():
    return glob.glob(os.path.join(TOP, "exec_argv-*"))


def watch_of(events):
    w = [e["data"] for e in events if e["type"] == "exec.watch"]
    assert len(w) == 1, w
    assert w[0]["argv"] == "bpf", w
    return w[0]


@pytest.fixture
def fresh_pins():
    """No pins of this object yet (integration runs hold a machine-wide
    lock: no other container is running)."""
    for d in current_dirs():
        run(["rm", "-rf", d], check=True)
    yield


def test_first_container_loads_later_ones_reuse_the_pins(shim, bundle_factory, fresh_pins):
    got = []
    for i in range(3):
        b = bundle_factory().args("/bin/true", f"n{i}")
        events = run_record(shim, b, f"pin{i}{os.getpid()}")
        w = watch_of(events)
        got.append(w["argv_program"])
        assert "argv_pin_error" not in w, w
        t = [e["data"] for e in events if e["type"] == "process.exec" and e["data"]["path"] == "/bin/true"]
        assert len(t) == 1 and t[0]["argv_source"] == "bpf" and t[0]["argv"] == ["/bin/true", f"n{i}"], t
    assert got == ["loaded", "pinned", "pinned"], got
    dirs = current_dirs()
    assert len(dirs) == 1, dirs
    st = os.stat(dirs[0])
    assert st.st_uid == 0 and (st.st_mode & 0o777) == 0o700, oct(st.st_mode)
    assert (os.stat(TOP).st_mode & 0o777) == 0o700
    # The program stays attached (its link is pinned); the supervisors left
    # their slots and entries behind them.
    assert glob.glob(os.path.join(dirs[0], "link_*")), os.listdir(dirs[0])
    assert slots(dirs[0]) == []
    assert map_key_count(dirs[0], "ring_owner", 4) == 0
    assert map_key_count(dirs[0], "stats", SLOT.size) == 0
    assert map_key_count(dirs[0], "expect", 8) == 0


def test_two_containers_at_once_each_get_only_their_own_records(shim, bundle_factory, tmp_path):
    """Both run a tight exec loop at once, through the same program: every
    record of each is its own, none is missing."""
    n = 150
    names = ["alpha", "beta"]

    def one(k):
        b = bundle_factory().sh(f'i=0; while [ $i -lt {n} ]; do /bin/true {names[k]} "$i"; i=$((i+1)); done')
        return run_record(shim, b, f"{names[k]}{os.getpid()}")

    for name, events in zip(names, at_once(len(names), one)):
        watch_of(events)
        true = [e["data"] for e in events if e["type"] == "process.exec" and e["data"]["path"] == "/bin/true"]
        assert len(true) == n, (name, len(true))
        for i, t in enumerate(true):
            assert t["argv_source"] == "bpf" and "argv_fallback" not in t, t
            assert [unquote(a) for a in t["argv"]] == ["/bin/true", name, str(i)], (name, t)


def test_a_killed_supervisors_slot_is_swept_by_the_next(shim, bundle_factory, cid, tmp_path):
    b = bundle_factory().args("sleep", "60")
    r = shim("create", "--bundle", b.path, cid)
    assert r.returncode == 0, r.stderr
    shim.ids.add(cid)
    sups = supervisor_of(cid)
    assert sups, sups
    # The observer takes its slot on a thread started at create.
    deadline = time.time() + 10
    while True:
        held = [(s, d) for d in current_dirs() for s in slots(d) if s[1] in sups]
        if held:
            break
        assert time.time() < deadline, "the supervisor took no slot"
        time.sleep(0.05)
    assert len(held) == 1, held
    sup, d = held[0]
    assert sup == own_slot(sup[1])
    assert map_key_count(d, "ring_owner", 4) == 1
    os.kill(sup[1], signal.SIGKILL)
    shim("delete", "--force", cid)
    assert sup in slots(d)  # nobody left it
    # Another audit directory: the killed supervisor's run has no record.
    other = Runtime(AGENTSHIM, str(tmp_path / "root2"), extra=["--audit-dir", str(tmp_path / "audit2")])
    try:
        events = run_record(other, bundle_factory().args("/bin/true"), "next" + cid)
    finally:
        other.cleanup()
    assert watch_of(events)["argv_program"] == "pinned"
    assert sup not in slots(d), slots(d)
    assert map_key_count(d, "ring_owner", 4) == 0
    assert map_key_count(d, "stats", SLOT.size) == 0


def test_another_builds_pin_dir_is_removed_unless_a_live_slot_uses_it(shim, bundle_factory, cid):
    """An upgrade leaves the old build's directory (its program attached
    through the pinned link): the next supervisor removes it once no live
    supervisor has a slot there; one with a live slot stays."""
    stale, used = os.path.join(TOP, "exec_argv-00000000deadbeef"), os.path.join(TOP, "exec_argv-00000000feedface")
    os.makedirs(TOP, mode=0o700, exist_ok=True)
    fds = []
    try:
        for d in (stale, used):
            os.mkdir(d, 0o700)
            fds.append(map_create_pinned(os.path.join(d, "expect"), 8, 24))
            fds.append(map_create_pinned(os.path.join(d, "slots"), SLOT.size, 8))
        # A dead owner's slot in the stale one, this test's own in the used one.
        dead = subprocess_dead_slot()
        map_update(fds[1], SLOT.pack(*dead), b"\0" * 8)
        map_update(fds[3], SLOT.pack(*own_slot(os.getpid())), b"\0" * 8)
        run_record(shim, bundle_factory().args("/bin/true"), cid)
        assert not os.path.exists(stale), os.listdir(stale)
        assert os.path.exists(used) and sorted(os.listdir(used)) == ["expect", "slots"]
    finally:
        for fd in fds:
            os.close(fd)
        for d in (stale, used):
            run(["rm", "-rf", d], check=True)


def subprocess_dead_slot():
    """The slot of a process that has exited."""
    p = subprocess.Popen(["sleep", "5"])
    s = own_slot(p.pid)
    p.kill()
    p.wait()
    return s


def test_without_bpffs_the_supervisor_loads_its_own_copy_and_says_so(shim, bundle, cid, monkeypatch):
    """Where bpffs cannot be used (AGENTSHIM_EXEC_ARGV_BPF=private takes that
    path): the program is the supervisor's own, unpinned, and argv is still
    the kernel's copy."""
    monkeypatch.setenv("AGENTSHIM_EXEC_ARGV_BPF", "private")
    before = {d: slots(d) for d in current_dirs()}
    events = run_record(shim, bundle.args("/bin/true", "own"), cid)
    w = watch_of(events)
    assert w["argv_program"] == "private", w
    assert unquote(w["argv_pin_error"]) == "not pinned (AGENTSHIM_EXEC_ARGV_BPF=private)", w
    t = [e["data"] for e in events if e["type"] == "process.exec" and e["data"]["path"] == "/bin/true"]
    assert len(t) == 1 and t[0]["argv_source"] == "bpf" and t[0]["argv"] == ["/bin/true", "own"], t
    assert {d: slots(d) for d in current_dirs()} == before  # no slot taken in the pins
