"""userns "auto" end to end: the container's root is an unprivileged host uid
range, the rootfs is mounted idmapped (image files owned by host root show as
the container's root; what it writes lands as host root's on disk), ranges
are distinct per container and freed on delete, exec joins the same user
namespace, and the host's root-only files stay closed to the container's
root."""
import glob
import json
import os
import stat

from conftest import run

SLOTS = "/run/agentshim-userns"


def write_policy(tmp_path, doc):
    p = tmp_path / "policy.json"
    p.write_text(json.dumps(doc))
    return str(p)


def reachable(path):
    """With a user namespace the container's root sets up its rootfs by path
    (as with runc): the directories above it must be searchable (o+x)."""
    path = os.path.abspath(path)
    while path != "/":
        path = os.path.dirname(path)
        mode = os.stat(path).st_mode
        if not mode & stat.S_IXOTH:
            os.chmod(path, stat.S_IMODE(mode) | stat.S_IXOTH)


def auto_policy(tmp_path, **extra):
    reachable(str(tmp_path / "x"))
    doc = {"userns": "auto"}
    doc.update(extra)
    return write_policy(tmp_path, doc)


def uid_map_base(text):
    f = text.split()
    assert f[0] == "0" and f[2] == "65536", text
    return int(f[1])


def host_uid(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")


def test_container_root_is_an_unprivileged_host_range_with_an_idmapped_rootfs(shim, bundle, cid, tmp_path):
    pol = auto_policy(tmp_path, filesystem={"readonly_root": False})
    bundle.config["root"]["readonly"] = False
    bundle.save()
    shim.ids.add(cid)
    script = ("id -u; cat /proc/self/uid_map; cat /proc/self/gid_map; stat -c %u:%g /bin/busybox; "
              "touch /written && echo wrote; cat /dev/stdin && echo reopened-stdin")
    r = shim("--policy", pol, "run", "--bundle", bundle.sh(script).path, cid)
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode().splitlines()
    assert out[0] == "0"
    base = uid_map_base(out[1])
    assert base >= 65536, out  # not host root, not a low system/user uid
    assert uid_map_base(out[2]) >= 65536
    assert out[3] == "0:0", out  # host root's image files show as the container's root (idmapped)
    # stdin is a pipe: handed to the container's root, so /dev/stdin reopens.
    # (stdout here is a regular file: never chowned, unlike runc.)
    assert out[4] == "wrote" and out[5] == "reopened-stdin", out
    st = os.stat(os.path.join(bundle.rootfs, "written"))
    assert (st.st_uid, st.st_gid) == (0, 0)  # stored as host root through the idmapped mount
    # The record says which range ran the container.
    ev = None
    for d in glob.glob(os.path.join(shim.extra[1], "runs", "*")):
        first = json.loads(open(os.path.join(d, "events.ndjson")).readline())
        if first["data"]["container_id"] == cid:
            ev = first
    assert ev is not None
    d = [x for x in ev["data"]["policy_decisions"] if x["rule"] == "userns"]
    assert [x["action"] for x in d] == ["added", "allocated"], d
    assert f"host uids {base}-{base + 65535}" in d[1]["detail"], d


def test_ranges_are_distinct_exec_joins_and_delete_frees_the_slot(shim, bundle_factory, tmp_path):
    pol = auto_policy(tmp_path)
    ids = [f"u{os.urandom(5).hex()}" for _ in range(2)]
    bases, pids = [], []
    for i in ids:
        shim.ids.add(i)
        b = bundle_factory()
        shim("--policy", pol, "run", "--detach", "--bundle", b.args("sleep", "60").path, i, check=True)
        st = json.loads(shim("state", i, check=True).stdout)
        pids.append(st["pid"])
        bases.append(host_uid(st["pid"]))
    assert bases[0] != bases[1] and abs(bases[0] - bases[1]) >= 65536, bases
    assert min(bases) >= 65536
    # exec enters the same user namespace: root inside, the same host range.
    r = shim("exec", ids[0], "sh", "-c", "id -u; cat /proc/self/uid_map")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    assert lines[0] == "0" and uid_map_base(lines[1]) == bases[0], lines
    held = {open(p).read().strip() for p in glob.glob(SLOTS + "/[0-9]*")}
    for i in ids:
        shim("kill", i, "KILL")
        shim("delete", "--force", i, check=True)
    after = {open(p).read().strip() for p in glob.glob(SLOTS + "/[0-9]*")}
    assert len(held - after) >= 2, (held, after)


def test_container_root_cannot_read_host_root_only_files(shim, bundle, cid, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("host-only\n")
    os.chmod(secret, 0o600)
    pol = auto_policy(tmp_path, filesystem={"allow_bind_mounts": True})
    bundle.config["mounts"].append({"destination": "/secret", "type": "bind", "source": str(secret),
                                    "options": ["rbind", "ro"]})
    bundle.save()
    shim.ids.add(cid)
    r = shim("--policy", pol, "run", "--bundle",
             bundle.sh("id -u; cat /secret 2>/dev/null || echo denied; stat -c %u /secret").path, cid)
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode().split()
    # root in the container, yet the host's root-owned 0600 file stays closed,
    # and its owner is unmapped (the overflow uid).
    assert out == ["0", "denied", "65534"], out


def test_policy_check_shows_the_user_namespace(shim, bundle, tmp_path):
    pol = auto_policy(tmp_path)
    r = shim("--policy", pol, "policy", "check", "--bundle", bundle.path, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["userns_auto"] is True
    assert any(d["rule"] == "userns" and d["action"] == "added" for d in doc["decisions"]), doc["decisions"]


def overlay_rootfs(bundle, tmp_path):
    """Put the bundle's rootfs on overlayfs (which cannot be idmapped as a
    whole, like Docker's)."""
    lower = tmp_path / "lower"
    os.rename(bundle.rootfs, lower)
    for d in ("upper", "work"):
        (tmp_path / d).mkdir()
    os.mkdir(bundle.rootfs)
    run(["mount", "-t", "overlay", "overlay", "-o",
         f"lowerdir={lower},upperdir={tmp_path / 'upper'},workdir={tmp_path / 'work'}", bundle.rootfs], check=True)


def test_rootfs_that_cannot_be_idmapped(shim, bundle, cid, tmp_path):
    pol_rw = auto_policy(tmp_path, filesystem={"readonly_root": False})
    overlay_rootfs(bundle, tmp_path)
    try:
        # Writable root: a clear error, nothing left behind.
        bundle.config["root"]["readonly"] = False
        bundle.save()
        r = shim("--policy", pol_rw, "run", "--bundle", bundle.args("true").path, cid)
        assert r.returncode != 0
        err = r.stderr.decode()
        assert "cannot be mounted idmapped" in err and "(overlayfs)" in err and "read-only" in err, err
        assert not os.path.exists(os.path.join(shim.root, cid))
        # Read-only root (the default policy): runs, unmapped files show as nobody.
        pol = auto_policy(tmp_path)
        shim.ids.add(cid)
        r = shim("--policy", pol, "run", "--bundle", bundle.sh("id -u; stat -c %u /bin/busybox").path, cid)
        assert r.returncode == 0, r.stderr
        assert r.stdout.decode().split() == ["0", "65534"]
        shim("delete", "--force", cid)
    finally:
        run(["umount", "-l", bundle.rootfs])


def test_caller_maps_need_a_reachable_rootfs(shim, bundle, cid, tmp_path):
    """With the caller's own id maps (not userns auto) the container's root
    sets up its rootfs itself, as with runc: a root-only directory above it is
    a clear error."""
    hidden = tmp_path / "hidden"
    hidden.mkdir(mode=0o700)
    os.chmod(hidden, 0o700)
    b = os.path.join(hidden, "b")
    os.rename(os.path.dirname(bundle.rootfs), b)
    c = json.load(open(os.path.join(b, "config.json")))
    c["linux"]["namespaces"].append({"type": "user"})
    c["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 1 << 30, "size": 65536}]
    c["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 1 << 30, "size": 65536}]
    c["process"]["args"] = ["true"]
    json.dump(c, open(os.path.join(b, "config.json"), "w"))
    r = shim("run", "--bundle", b, cid)
    assert r.returncode != 0
    err = r.stderr.decode()
    assert f"the directory {hidden} is not searchable" in err and "o+x" in err, err
    assert not os.path.exists(os.path.join(shim.root, cid))
