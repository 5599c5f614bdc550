"""Every writable byte accounted for (issue 15 item 3): every writable mount
of the container is a tree of the record (tmpfs mounts, single-file binds,
mounts below a volume's mount point); files created and removed within the
run are recorded from fanotify events; a file written during the run is read
again whatever its (size, mtime, ctime) say; and what cannot be covered (a
file over audit.max_file_bytes written in place) is stated in the record.
Each test asserts that what the record says equals what happened on the
host."""
import hashlib
import json
import os
import subprocess

import pytest

from conftest import wait_records
import formats_verifier


def sha(b):
    return hashlib.sha256(b).hexdigest()


def record_of(audit, cid):
    for d in os.listdir(os.path.join(audit, "runs")):
        rd = os.path.join(audit, "runs", d)
        with open(os.path.join(rd, "events.ndjson")) as f:
            evs = [json.loads(line) for line in f]
        if evs and evs[0]["data"].get("container_id") == cid:
            with open(os.path.join(rd, "changes.ndjson")) as f:
                changes = [json.loads(line) for line in f]
            return rd, evs, changes
    raise AssertionError(f"no record of {cid}")


def run(shim, bundle, cid, tmp_path, script, policy=None):
    bundle.sh(script)
    shim.ids.add(cid)
    pre = ["--policy", str(policy)] if policy else []
    r = shim(*pre, "run", "--bundle", bundle.path, cid, timeout=120)
    assert r.returncode == 0, (r.stdout, r.stderr)
    audit = str(tmp_path / "audit")
    wait_records(audit)
    rd, evs, changes = record_of(audit, cid)
    v = shim("verify", cid)
    assert v.returncode == 0 and v.stdout == b"VERIFIED\n", (v.stdout, v.stderr)
    pub = open(os.path.join(audit, "keys", "signing.pem.pub"), "rb").read()
    problems, _, _ = formats_verifier.verify(rd, pub, os.path.join(audit, "ledger.ndjson"))
    assert problems == [], problems
    return rd, evs, changes


def mount(kind, dst, src, *opts):
    return {"destination": dst, "type": kind, "source": src, "options": list(opts)}


@pytest.fixture
def host_mounts():
    made = []
    yield made
    for p in reversed(made):
        subprocess.run(["umount", "-l", p], check=False)


def after_trees(evs):
    return {t["name"]: t for e in evs if e["type"] == "fs.root" and e["data"]["phase"] == "after"
            for t in e["data"]["trees"]}


def test_every_writable_mount_is_a_tree(shim, bundle, cid, tmp_path, host_mounts):
    """tmpfs (/tmp, config-level), a single-file bind, a mount below a
    volume's mount point on the host (rbind) and one in the config: each is
    a tree, and each change is in changes.ndjson with its real content
    hashes."""
    vol = tmp_path / "vol"
    (vol / "sub").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(vol / "sub")], check=True)
    host_mounts.append(str(vol / "sub"))
    (vol / "inner").mkdir()
    conf = tmp_path / "conf"
    conf.write_bytes(b"old\n")
    bundle.config["mounts"] += [
        mount("tmpfs", "/tmp", "tmpfs", "size=8m", "mode=1777"),
        mount("bind", "/etc/conf", str(conf), "bind", "rw"),
        mount("bind", "/vol", str(vol), "rbind", "rw"),
        mount("tmpfs", "/vol/inner", "tmpfs", "size=4m"),
    ]
    rd, evs, changes = run(shim, bundle, cid, tmp_path,
                           "echo new > /etc/conf; echo t > /tmp/t; echo s > /vol/sub/s; "
                           "echo i > /vol/inner/i; echo v > /vol/v")
    assert conf.read_bytes() == b"new\n" and (vol / "sub" / "s").read_bytes() == b"s\n"
    trees = after_trees(evs)
    for name in ("/tmp", "/etc/conf", "/vol", "/vol/sub", "/vol/inner", "/dev/shm"):
        assert name in trees, sorted(trees)
        assert trees[name].get("walk") is None and trees[name]["writes"]["watch"].startswith("mount"), trees[name]
    assert trees["/tmp"]["fstype"] == "tmpfs" and trees["/tmp"]["writes"]["watch"] == "mount+entries"
    got = {(c["tree"], c["path"], c["change"]): c for c in changes}
    c = got[("/etc/conf", ".", "modified")]
    assert c["old_sha256"] == sha(b"old\n") and c["new_sha256"] == sha(b"new\n"), c
    for tree, path, data in (("/tmp", "t", b"t\n"), ("/vol/sub", "s", b"s\n"), ("/vol/inner", "i", b"i\n"),
                             ("/vol", "v", b"v\n")):
        assert got[(tree, path, "added")]["new_sha256"] == sha(data), (tree, path, changes)
    # A mount is walked as its own tree, never twice: /vol's walk stops at sub.
    assert not [c for c in changes if c["tree"] == "/vol" and c["path"].startswith(("sub/", "inner/"))], changes


def test_files_created_and_removed_within_the_run(shim, bundle, cid, tmp_path):
    """Names that exist only during the run: no walk sees them; the
    fanotify entry events do."""
    bundle.config["mounts"].append(mount("tmpfs", "/tmp", "tmpfs", "size=8m", "mode=1777"))
    rd, evs, changes = run(shim, bundle, cid, tmp_path,
                           "echo x > /tmp/a; rm /tmp/a; mkdir /dev/shm/d; echo y > /dev/shm/d/b; "
                           "mv /dev/shm/d/b /dev/shm/d/c; rm -r /dev/shm/d")
    files = [(e["type"], e["data"].get("path"), e["data"].get("side")) for e in evs if e["type"].startswith("file.")]
    for want in (("file.created", "/tmp/a", None), ("file.written", "/tmp/a", None), ("file.removed", "/tmp/a", None),
                 ("file.created", "/dev/shm/d", None), ("file.moved", "/dev/shm/d/b", "from"),
                 ("file.moved", "/dev/shm/d/c", "to"), ("file.removed", "/dev/shm/d/c", None),
                 ("file.removed", "/dev/shm/d", None)):
        assert want in files, (want, files)
    assert not [c for c in changes if c["tree"] in ("/tmp", "/dev/shm")], changes
    created = [e["data"] for e in evs if e["type"] == "file.created" and e["data"].get("path") == "/dev/shm/d"]
    assert created[0].get("dir_entry") is True and created[0]["tree"] == "/dev/shm", created


def test_a_file_written_in_place_over_the_limit_is_stated(shim, bundle, cid, tmp_path):
    """A file over audit.max_file_bytes has no content hash: a same-size
    write in place leaves its leaf as it was. The record says the file was
    written and its content not compared, instead of staying silent."""
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "big").write_bytes(b"B" * 8192)
    (vol / "small").write_bytes(b"s" * 100)
    pol = tmp_path / "policy.json"
    pol.write_text(json.dumps({"audit": {"max_file_bytes": 4096}}))
    bundle.config["mounts"].append(mount("bind", "/vol", str(vol), "rbind", "rw"))
    rd, evs, changes = run(shim, bundle, cid, tmp_path,
                           "printf PWNED | dd of=/vol/big bs=1 seek=10 conv=notrunc 2>/dev/null", policy=pol)
    assert (vol / "big").read_bytes()[10:15] == b"PWNED"
    un = [c for c in changes if c["change"] == "unverified"]
    assert len(un) == 1 and un[0]["tree"] == "/vol" and un[0]["path"] == "big", changes
    assert "written during the run" in un[0]["reason"] and "4096" in un[0]["reason"], un[0]
    assert un[0]["old"] == un[0]["new"] and "old_sha256" not in un[0], un[0]
    t = after_trees(evs)["/vol"]
    assert t["not_hashed"] == 1 and t["writes"]["reread"] >= 0, t
    fc = next(e["data"] for e in evs if e["type"] == "fs.changes")
    assert fc["unverified"] == 1, fc


def test_a_written_file_is_read_again_and_named(shim, bundle, cid, tmp_path, host_mounts):
    """A file the container wrote is read in full by the after walk (never
    from the hash cache; the attack that needs this, a write through a
    shared mapping, is the escape battery's rec_mmap_volume) and named once
    in a file.written event."""
    vol = tmp_path / "vol"
    vol.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(vol)], check=True)
    host_mounts.append(str(vol))
    (vol / "f").write_bytes(b"aaaa\n")
    os.chmod(str(vol / "f"), 0o666)
    bundle.config["mounts"].append(mount("bind", "/vol", str(vol), "rbind", "rw"))
    rd, evs, changes = run(shim, bundle, cid, tmp_path, "echo bbbb > /vol/f")
    assert (vol / "f").read_bytes() == b"bbbb\n"
    c = [c for c in changes if c["tree"] == "/vol" and c["path"] == "f"]
    assert len(c) == 1 and c[0]["new_sha256"] == sha(b"bbbb\n"), changes
    assert after_trees(evs)["/vol"]["writes"]["reread"] == 1
    written = [e["data"] for e in evs if e["type"] == "file.written"]
    assert [w["path"] for w in written] == ["/vol/f"] and written[0]["tree"] == "/vol", written
