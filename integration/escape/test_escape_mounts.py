"""Escape battery: mounts the policy could misread (issue 12 items 2-5).

Each config asks for a mount that would expose the host; the attacker then
looks for a canary (a file only the host has) or opens a kernel file for
writing without writing anything (only the container's own pids.max is ever
written, with the value just read). agentshim must refuse the config
(START_FAILED counts as BLOCKED) or neutralise it; runc is the comparison
column, run on the same config.
"""
import json
import os
import uuid

import pytest

from conftest import wait_records

from escape_lib import Verdict, attack_bin, check, esc, escape_rootfs, write_results  # noqa: F401 (fixtures)

UP = "../" * 32  # relative to the bundle: "/" (OCI: a relative source is relative to the bundle)


@pytest.fixture
def canary(tmp_path):
    """A host file no container should see: its path, as the container would
    find it under a bind of "/" at /host."""
    d = tmp_path / ("canary-" + uuid.uuid4().hex[:8])
    d.mkdir()
    f = d / "host-only"
    f.write_text("host canary\n")
    return str(f)


def bind_attack(esc, name, title, mount, *argv, must_say=None):
    b = esc.bundle()
    b.config["mounts"].append(mount)
    b.save()
    v = esc.attack(b, *argv)
    if esc.name == "agentshim" and v.kind == "START_FAILED" and must_say:
        assert must_say in v.detail, f"refused for another reason: {v.detail}"
    check(name, title, esc, v, allow_refusal=True)
    return v


def test_typeless_bind_of_root(esc, canary):
    bind_attack(esc, "mount_typeless_bind_root", 'bind of "/" with no "type" ({"source": "/", "options": ["rbind"]})',
                {"destination": "/host", "source": "/", "options": ["rbind"]},
                "find_paths", "/host" + canary, must_say="policy rule runtime_owned")


def test_typeless_mount_without_options(esc, canary):
    """{"destination":"/host","source":"/"}: neither a type nor a bind option.
    runc fails it; agentshim used to bind it."""
    bind_attack(esc, "mount_typeless_no_options", 'mount with no "type" and no options of "/"',
                {"destination": "/host", "source": "/"}, "find_paths", "/host" + canary, must_say="mounts[")


def test_typeless_bind_of_audit_dir(esc):
    os.makedirs(os.path.join(esc.audit_dir, "keys"), exist_ok=True)
    with open(os.path.join(esc.audit_dir, "keys", "canary"), "w") as f:
        f.write("x")
    bind_attack(esc, "mount_typeless_bind_audit", 'bind of the audit directory with no "type"',
                {"destination": "/peek", "source": esc.audit_dir, "options": ["bind", "ro"]},
                "find_paths", "/peek/keys/canary", must_say="audit directory")


def test_relative_bind_source(esc, canary):
    bind_attack(esc, "mount_relative_source", f'bind with a relative source "{UP[:12]}..." (resolves to "/")',
                {"destination": "/host", "type": "bind", "source": UP, "options": ["rbind"]},
                "find_paths", "/host" + canary, must_say="policy rule runtime_owned")


def test_relative_typeless_bind_source(esc, canary):
    bind_attack(esc, "mount_relative_typeless", "relative source, no type, rbind",
                {"destination": "/host", "source": UP, "options": ["rbind", "ro"]},
                "find_paths", "/host" + canary, must_say="policy rule runtime_owned")


def test_symlinked_root_spelling(esc, canary, tmp_path):
    link = str(tmp_path / "looks-harmless")
    os.symlink("/", link)
    bind_attack(esc, "mount_symlink_to_root", "bind of a symlink that points at /",
                {"destination": "/host", "source": link, "options": ["rbind"]},
                "find_paths", "/host" + canary, must_say="policy rule runtime_owned")


def test_symlinked_audit_spelling(esc, tmp_path):
    os.makedirs(os.path.join(esc.audit_dir, "keys"), exist_ok=True)
    with open(os.path.join(esc.audit_dir, "keys", "canary"), "w") as f:
        f.write("x")
    link = str(tmp_path / "innocent")
    os.symlink(os.path.join(esc.audit_dir, "keys", ".."), link)
    bind_attack(esc, "mount_symlink_to_audit", "bind of a symlink into the audit directory (keys/..)",
                {"destination": "/peek", "type": "bind", "source": link, "options": ["rbind", "ro"]},
                "find_paths", "/peek/keys/canary", must_say="audit directory")


def test_readonly_bind_of_custom_root(esc):
    """A read-only bind of the runtime's --root (not /run/agentshim): the
    control sockets of other containers are in it."""
    os.makedirs(esc.rt.root, exist_ok=True)
    marker = os.path.join(esc.rt.root, "canary-" + uuid.uuid4().hex[:6])
    with open(marker, "w") as f:
        f.write("x")
    try:
        bind_attack(esc, "mount_custom_state_root", "read-only bind of the runtime's own --root (custom path)",
                    {"destination": "/state", "type": "bind", "source": esc.rt.root, "options": ["rbind", "ro"]},
                    "find_paths", "/state/" + os.path.basename(marker), must_say="state root")
    finally:
        os.unlink(marker)


def test_signing_key_outside_audit_dir(esc, tmp_path):
    key = tmp_path / "keys-elsewhere" / "host.key"
    key.parent.mkdir()
    key.write_text("not really a key\n")
    if esc.name == "agentshim":
        pol = tmp_path / "policy.json"
        pol.write_text(json.dumps({"audit": {"signing_key": str(key)}}))
        esc.rt.extra += ["--policy", str(pol)]
    bind_attack(esc, "mount_signing_key_elsewhere", "bind of a signing_key configured outside the audit directory",
                {"destination": "/k", "type": "bind", "source": str(key.parent), "options": ["rbind", "ro"]},
                "find_paths", "/k/host.key", must_say="signing key")


def set_options(b, fstype, extra):
    n = 0
    for m in b.config["mounts"]:
        if m.get("type") == fstype:
            m["options"] = list(m.get("options", [])) + extra
            n += 1
    assert n, f"the config has no {fstype} mount"


def flags_attack(esc, name, title, fstype, extra, *argv):
    b = esc.bundle()
    set_options(b, fstype, extra)
    b.save()
    v = esc.attack(b, *argv)
    check(name, title, esc, v, allow_refusal=True)


def test_sysfs_ro_then_rw(esc):
    # Opened for writing, never written.
    flags_attack(esc, "sysfs_ro_rw", 'sysfs with options [..., "ro", "rw"] (last wins: writable)', "sysfs",
                 ["ro", "rw"], "open_write", "/sys/kernel/mm/transparent_hugepage/enabled")


def test_cgroup_ro_then_rw(esc):
    # Writes the container's own pids.max with the value just read.
    flags_attack(esc, "cgroup_ro_rw", 'cgroup with options [..., "ro", "rw"]: write own pids.max (same value)',
                 "cgroup", ["ro", "rw"], "cgroup_write")


def test_bind_rbind_ro_rw_is_tracked(esc, tmp_path):
    """["rbind","ro","rw"] is a writable bind (last wins). Allowed (the caller
    asked for it, runc gives the same), but the record must track it as the
    writable tree it is: agentshim's changes.ndjson lists the write."""
    d = tmp_path / "shared"
    d.mkdir()
    b = esc.bundle()
    b.config["mounts"].append({"destination": "/work", "type": "bind", "source": str(d),
                               "options": ["rbind", "ro", "rw"]})
    b.args("/bin/sh", "-c", "echo hi > /work/written")
    cid = esc.cid()
    r = esc.rt("run", "--bundle", b.path, cid)
    esc.rt("delete", "--force", cid)
    esc.rt.ids.discard(cid)
    assert r.returncode == 0, r.stderr
    assert (d / "written").exists()  # writable, as the caller asked
    if esc.name == "agentshim":
        wait_records(esc.audit_dir)
        runs = os.path.join(esc.audit_dir, "runs")
        newest = max((os.path.join(runs, x) for x in os.listdir(runs)), key=os.path.getmtime)
        changes = [json.loads(x) for x in open(os.path.join(newest, "changes.ndjson"))]
        assert any(c["path"].endswith("written") and c["change"] == "added" for c in changes), changes
