"""Names created and removed within a run on a volume (a bind-mounted host
directory) and on the container's root (a plain directory or an overlay):
no walk ever sees them. With the BPF LSM entry programs (fs.watch
`entries` `lsm`) each is a file.created / file.removed / file.moved event
naming the exact path and tree; when the kernel refuses them, the same
events come from the fanotify fallback (fs.watch `entries` `fanotify`:
filesystem marks on the host filesystems, filtered by the trees'
directories; an overlay root is read through its upper layer). Each test
asserts what the record says against what happened."""
import json
import os
import subprocess
import time

import pytest

from test_record_writes import after_trees, mount, run, record_of
from conftest import wait_records

# open(O_CREAT|O_RDONLY) and unlink: a name that existed, was never opened
# for writing (so no file.written), and is gone.
CREAT_RO = r"""
#include <fcntl.h>
#include <unistd.h>
int main(int c, char** v) {
  for (int i = 1; i < c; i++) {
    int fd = open(v[i], O_CREAT | O_RDONLY, 0644);
    if (fd < 0) return 1;
    close(fd);
    if (unlink(v[i]) < 0) return 2;
  }
  return 0;
}
"""


def ops(d):
    """Each operation of the issue in directory `d`, leaving it as it was
    (but for `keep`, which exists before and after)."""
    return (f"mkdir {d}/dir; rmdir {d}/dir; "
            f"mknod {d}/fifo p; rm {d}/fifo; "
            f"ln -s target {d}/sym; rm {d}/sym; "
            f"ln {d}/keep {d}/hard; rm {d}/hard; "
            f"mv {d}/keep {d}/moved; mv {d}/moved {d}/keep; "
            f"/creat_ro {d}/ro")


def expected(d):
    return [("file.created", f"{d}/dir", None), ("file.removed", f"{d}/dir", None),
            ("file.created", f"{d}/fifo", None), ("file.removed", f"{d}/fifo", None),
            ("file.created", f"{d}/sym", None), ("file.removed", f"{d}/sym", None),
            ("file.created", f"{d}/hard", None), ("file.removed", f"{d}/hard", None),
            ("file.moved", f"{d}/keep", "from"), ("file.moved", f"{d}/moved", "to"),
            ("file.moved", f"{d}/moved", "from"), ("file.moved", f"{d}/keep", "to"),
            ("file.created", f"{d}/ro", None), ("file.removed", f"{d}/ro", None)]


def entry_events(evs):
    return [e["data"] for e in evs if e["type"] in ("file.created", "file.removed", "file.moved")]


def fs_watch(evs):
    return next(e["data"] for e in evs if e["type"] == "fs.watch" and "marked" in e["data"])


@pytest.fixture
def creat_ro(tmp_path):
    src = tmp_path / "creat_ro.c"
    src.write_text(CREAT_RO)
    out = tmp_path / "creat_ro"
    subprocess.run(["gcc", "-static", "-O2", "-o", str(out), str(src)], check=True)
    return out


@pytest.fixture
def overlay_root(bundle, tmp_path):
    """The bundle's rootfs as the lower layer of an overlay mounted on it."""
    lower, upper, work = tmp_path / "lower", tmp_path / "upper", tmp_path / "work"
    os.rename(bundle.rootfs, lower)
    for d in (upper, work):
        d.mkdir()
    os.mkdir(bundle.rootfs)
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={lower},upperdir={upper},workdir={work}", bundle.rootfs], check=True)
    yield upper
    subprocess.run(["umount", "-l", bundle.rootfs], check=False)


def check_account(evs, trees_dirs):
    """trees_dirs: {tree: directory in the container}. Either every
    operation is an event naming its path and tree, or the record says the
    tree's entries are not watched."""
    w = fs_watch(evs)
    trees = after_trees(evs)
    got = [(e.get("tree"), e.get("path"), e.get("side"), e.get("via")) for e in entry_events(evs)]
    via = w.get("entries")
    assert via in ("lsm", "fanotify"), w
    if via == "lsm":
        assert "entries_error" not in w, w
    else:
        # The LSM programs could not be loaded (this kernel refuses BPF LSM):
        # the fanotify fallback watches every tree, and says which it could not.
        assert w.get("entries_error") and w.get("entries_unwatched") == [], w
        assert not [g for g in got if g[3] == "lsm"], got
    for tree, d in trees_dirs.items():
        assert trees[tree]["writes"]["watch"] == "mount+entries", trees[tree]
        for typ, path, side in expected(d):
            want = [e for e in entry_events(evs) if e.get("path") == path and e.get("side") == side and
                    e["tree"] == tree and e.get("via") == (via if via == "lsm" else None)]
            assert want, (typ, path, side, got)
        dirs = [e for e in entry_events(evs) if e.get("path") == f"{d}/dir"]
        assert all(e.get("dir_entry") is True for e in dirs), dirs
        assert not [e for e in entry_events(evs) if e.get("path") == f"{d}/fifo" and e.get("dir_entry")]
        # Each operation once.
        for typ, path, side in set(expected(d)):
            n = sum(1 for e in evs if e["type"] == typ and e["data"].get("path") == path and
                    e["data"].get("side") == side)
            assert n == expected(d).count((typ, path, side)), (typ, path, side, got)


@pytest.mark.parametrize("root", ["plain", "overlay"])
def test_names_created_and_removed_on_a_volume_and_the_root(shim, bundle, cid, tmp_path, creat_ro, request,
                                                           root):
    upper = request.getfixturevalue("overlay_root") if root == "overlay" else None
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "keep").write_bytes(b"k\n")
    os.makedirs(os.path.join(bundle.rootfs, "r"), exist_ok=True)
    with open(os.path.join(bundle.rootfs, "r", "keep"), "wb") as f:
        f.write(b"r\n")
    subprocess.run(["cp", str(creat_ro), os.path.join(bundle.rootfs, "creat_ro")], check=True)
    bundle.config["root"]["readonly"] = False
    pol = tmp_path / "policy.json"
    pol.write_text(json.dumps({"filesystem": {"readonly_root": False}}))
    bundle.config["mounts"].append(mount("bind", "/vol", str(vol), "rbind", "rw"))
    rd, evs, changes = run(shim, bundle, cid, tmp_path, ops("/vol") + "; " + ops("/r"), policy=pol)
    assert sorted(os.listdir(vol)) == ["keep"] and (vol / "keep").read_bytes() == b"k\n"
    assert (after_trees(evs)["rootfs"]["fstype"] == "overlay") == (upper is not None), after_trees(evs)["rootfs"]
    check_account(evs, {"/vol": "/vol", "rootfs": "/r"})
    # Nothing is left: the walks see no change on either tree.
    assert not [c for c in changes if c["tree"] == "/vol" or c["path"].startswith("r/")], changes
    if upper is not None:
        # The overlay's upper layer holds what the container touched (the
        # renamed `keep` was copied up), not the names it removed.
        assert not os.path.exists(upper / "r" / "dir") and not os.path.exists(upper / "r" / "fifo")


def test_a_tmpfs_is_reported_once(shim, bundle, cid, tmp_path):
    """/tmp is a tmpfs the container has whole: the fanotify entry group
    reports it; the LSM programs leave it alone (no duplicates)."""
    bundle.config["mounts"].append(mount("tmpfs", "/tmp", "tmpfs", "size=8m", "mode=1777"))
    rd, evs, changes = run(shim, bundle, cid, tmp_path, "mkdir /tmp/d; rmdir /tmp/d; ln -s x /tmp/s; rm /tmp/s")
    for path in ("/tmp/d", "/tmp/s"):
        for typ in ("file.created", "file.removed"):
            got = [e["data"] for e in evs if e["type"] == typ and e["data"].get("path") == path]
            assert len(got) == 1 and "via" not in got[0] and got[0]["tree"] == "/tmp", (typ, path, got)


def test_a_host_process_in_the_same_directory(shim, bundle, cid, tmp_path):
    """The host creates and removes names in the volume's host directory
    while the container runs: with the LSM programs only the container's
    own are recorded; with the fanotify fallback both, each with its pid."""
    vol = tmp_path / "vol"
    vol.mkdir()
    bundle.config["mounts"].append(mount("bind", "/vol", str(vol), "rbind", "rw"))
    bundle.sh("while [ ! -e /vol/go ]; do sleep 0.02; done; mkdir /vol/mine; rmdir /vol/mine")
    shim.ids.add(cid)
    p = subprocess.Popen([shim.binary, "--root", shim.root, *shim.extra, "run", "--bundle", bundle.path, cid],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            st = shim("state", cid)
            if st.returncode == 0 and b'"running"' in st.stdout:
                break
            time.sleep(0.05)
        (vol / "hostdir").mkdir()
        (vol / "hostfile").write_bytes(b"h")
        os.rename(vol / "hostfile", vol / "hostfile2")
        os.unlink(vol / "hostfile2")
        (vol / "hostdir").rmdir()
        (vol / "go").write_bytes(b"")
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    audit = str(tmp_path / "audit")
    wait_records(audit)
    rd, evs, changes = record_of(audit, cid)
    paths = [e.get("path") for e in entry_events(evs)] + [e["data"].get("path") for e in evs
                                                         if e["type"] == "file.written"]
    if fs_watch(evs).get("entries") == "lsm":
        for host in ("/vol/hostdir", "/vol/hostfile", "/vol/hostfile2", "/vol/go"):
            assert host not in paths, (host, paths)
    else:
        # The fanotify fallback filters by directory, not by process: the
        # host's names in the volume are there too, with the host's pids
        # (docs/FORMATS.md "Write tracking"), and the container's are.
        host_pid = os.getpid()
        hp = [e for e in entry_events(evs) if e.get("pid") == host_pid]
        assert {e.get("path") for e in hp} >= {"/vol/hostdir", "/vol/hostfile2", "/vol/go"}, hp
    assert "/vol/mine" in paths, paths
