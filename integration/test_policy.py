"""The policy, end to end: what agentshim's policy does to a caller's config,
observed from inside the container, in the CLI's errors and in the record."""
import glob
import json
import os

import pytest

from conftest import REPO, run

CAP_SYS_ADMIN = 21
CAP_AUDIT_WRITE = 29


def write_policy(tmp_path, doc, name="policy.json"):
    p = tmp_path / name
    p.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return str(p)


def caps_of(text):
    return {l.split(":")[0]: int(l.split(":")[1].strip(), 16) for l in text.splitlines()
            if l.startswith(("CapEff", "CapBnd", "CapPrm"))}


def run_created(audit, cid):
    for d in glob.glob(os.path.join(audit, "runs", "*")):
        with open(os.path.join(d, "events.ndjson")) as f:
            first = json.loads(f.readline())
        if first["data"]["container_id"] == cid:
            return first
    raise AssertionError(f"no run recorded for {cid} under {audit}")


def privileged_shape(bundle):
    """What `docker run --privileged` hands a runtime: every capability, every
    device, no seccomp, and here also the host's pid namespace and a huge tmpfs."""
    allcaps = [f"CAP_{n}" for n in (
        "CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP LINUX_IMMUTABLE "
        "NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER SYS_MODULE SYS_RAWIO SYS_CHROOT "
        "SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE "
        "AUDIT_WRITE AUDIT_CONTROL SETFCAP MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ "
        "PERFMON BPF CHECKPOINT_RESTORE").split()]
    c = bundle.config
    for s in ("bounding", "effective", "permitted"):
        c["process"]["capabilities"][s] = allcaps
    c["linux"]["resources"]["devices"] = [{"allow": True, "access": "rwm"}]
    c["linux"].pop("seccomp", None)
    for n in c["linux"]["namespaces"]:
        if n["type"] == "pid":
            n["path"] = "/proc/self/ns/pid"  # the runtime's own: the host's
    c["mounts"].append({"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["size=4g"]})
    bundle.save()
    return bundle


def test_shipped_policies_match_the_schema():
    import jsonschema  # python3-jsonschema (scripts/deps.sh)
    schema = json.load(open(os.path.join(REPO, "configs", "policy", "schema.json")))
    jsonschema.Draft202012Validator.check_schema(schema)
    v = jsonschema.Draft202012Validator(schema)
    for name in ("default.json", "strict.json"):
        v.validate(json.load(open(os.path.join(REPO, "configs", "policy", name))))
    # The schema is as strict as the loader: a typo or a block device is rejected.
    errors = list(v.iter_errors({"capabilities": {"alowed": []}}))
    assert errors and "alowed" in errors[0].message
    assert list(v.iter_errors({"devices": {"allowed": [{"type": "b", "major": 8, "minor": 0}]}}))
    assert list(v.iter_errors({"network": {"allow": [""]}}))
    # A rule without a port is valid (any port); the loader checks the syntax.
    assert not list(v.iter_errors({"network": {"allow": ["no-port.example.com"]}}))
    # Credentials: one source, "{}" in a header format.
    cred = {"source": {"file": "/etc/agentshim/secrets/gh"}, "placeholder_env": "GITHUB_TOKEN",
            "destinations": [{"host": "api.github.com", "methods": ["GET"]}],
            "apply": {"header": "Authorization", "format": "Bearer {}"}}
    assert not list(v.iter_errors({"credentials": {"github": cred}}))
    assert list(v.iter_errors({"credentials": {"github": dict(cred, source={"file": "/x", "env": "Y"})}}))
    assert list(v.iter_errors({"credentials": {"github": dict(cred, apply={"header": "A", "format": "Bearer"})}}))


def test_privileged_config_is_refused_in_refuse_mode_with_every_violation(shim, bundle, cid, tmp_path):
    pol = write_policy(tmp_path, {"mode": "refuse"})
    privileged_shape(bundle.args("true"))
    shim.ids.add(cid)
    r = shim("--policy", pol, "run", "--bundle", bundle.path, cid)
    assert r.returncode == 1, r.stderr
    err = r.stderr.decode()
    assert f"policy {pol} (mode refuse) refuses this config" in err
    lines = [l for l in err.splitlines() if l.startswith("  ")]
    for needle in ("policy forbids privileged containers", "the host's pid namespace", "CAP_SYS_ADMIN",
                   "CAP_NET_RAW", "size=4g", "no cgroup namespace", "every device"):
        assert any(needle in l for l in lines), (needle, err)
    # One line per violation, and the count in the header matches.
    assert f"({len(lines)} violations)" in err, err
    assert len(lines) >= 7
    # Nothing was created.
    assert shim("state", cid).returncode != 0


def test_privileged_config_is_refused_in_enforce_mode_too(shim, bundle, cid):
    privileged_shape(bundle.args("true"))
    shim.ids.add(cid)
    r = shim("run", "--bundle", bundle.path, cid)
    assert r.returncode == 1
    assert b"policy forbids privileged containers" in r.stderr
    assert b"the host's pid namespace" in r.stderr


def test_enforce_mode_drops_cap_sys_admin(shim, bundle, cid):
    for s in ("bounding", "effective", "permitted"):
        bundle.config["process"]["capabilities"][s].append("CAP_SYS_ADMIN")
    bundle.save()
    shim.ids.add(cid)
    r = shim("run", "--bundle", bundle.sh("grep -E '^Cap(Eff|Bnd|Prm)' /proc/self/status").path, cid)
    assert r.returncode == 0, r.stderr
    caps = caps_of(r.stdout.decode())
    for k in ("CapEff", "CapBnd", "CapPrm"):
        assert not caps[k] & (1 << CAP_SYS_ADMIN), (k, hex(caps[k]))
        assert not caps[k] & (1 << CAP_AUDIT_WRITE), (k, hex(caps[k]))  # runc's spec has it; the policy drops it
        assert caps[k] & (1 << 5), (k, hex(caps[k]))  # CAP_KILL is allowed and kept
    ev = run_created(shim.extra[1], cid)
    d = [x for x in ev["data"]["policy_decisions"] if x["rule"] == "capabilities.allowed"]
    assert any("caller asked for CAP_SYS_ADMIN" in x["detail"] and x["action"] == "dropped"
               and x["path"] == "process.capabilities.bounding" for x in d), d


def test_readonly_root_enforced_and_in_the_record(shim, bundle, cid):
    bundle.config["root"]["readonly"] = False
    bundle.save()
    shim.ids.add(cid)
    r = shim("run", "--bundle", bundle.sh("touch /written 2>/dev/null && echo WRITABLE || echo read-only").path, cid)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"read-only\n"
    assert not os.path.exists(os.path.join(bundle.rootfs, "written"))
    ev = run_created(shim.extra[1], cid)
    assert ev["type"] == "run.created"
    rules = {x["rule"]: x for x in ev["data"]["policy_decisions"]}
    assert rules["filesystem.readonly_root"]["path"] == "root.readonly"
    assert rules["filesystem.readonly_root"]["action"] == "replaced"
    # The summary of the sandbox says what was applied.
    assert ev["data"]["sandbox"]["readonly_root"] is True
    assert ev["data"]["sandbox"]["seccomp"]["agentshim_profile"] is True


def test_default_seccomp_profile_and_proxy_env_inside(shim, bundle, cid):
    shim.ids.add(cid)
    script = ("unshare -U true 2>/dev/null && echo UNSHARED || echo unshare-denied; "
              "echo $HTTPS_PROXY $no_proxy")
    r = shim("run", "--bundle", bundle.sh(script).path, cid)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().split() == ["unshare-denied", "http://127.0.0.1:3128", "localhost,127.0.0.1"]


def test_exec_gets_the_policy_too(shim, bundle, cid):
    shim.ids.add(cid)
    shim("run", "--detach", "--bundle", bundle.args("sleep", "30").path, cid, check=True)
    # (--cap is followed by another option: shim/commands.cpp makes it swallow the id otherwise)
    r = shim("exec", "--cap", "CAP_SYS_ADMIN", "--cwd", "/", cid, "sh", "-c",
             "grep -E '^Cap(Eff|Bnd)' /proc/self/status; grep NoNewPrivs /proc/self/status; "
             "unshare -U true 2>/dev/null && echo UNSHARED || echo unshare-denied; echo $HTTP_PROXY")
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    caps = caps_of(out)
    assert not caps["CapEff"] & (1 << CAP_SYS_ADMIN) and not caps["CapBnd"] & (1 << CAP_SYS_ADMIN), out
    assert "NoNewPrivs:\t1" in out
    assert "unshare-denied" in out and "http://127.0.0.1:3128" in out


@pytest.mark.parametrize("doc,needle", [
    ({"capabilities": {"allowed": ["CAP_CHOWN", "CAP_FOO"]}}, 'capabilities.allowed[1]: unknown capability "CAP_FOO"'),
    ({"filesystem": {"tmpfs_max_size": "huge"}}, "filesystem.tmpfs_max_size"),
    ({"network": {"allow": ["exa mple.com:443"]}}, "network.allow[0]"),
    ({"mode": "sometimes"}, "mode: must be"),
    ({"seccomp": {"profile": "/no/such/profile.json"}}, "seccomp.profile"),
    ('{"mode": "enforce",', "not valid JSON"),
])
def test_broken_policy_file_is_an_error_naming_the_key(shim, bundle, cid, tmp_path, doc, needle):
    pol = write_policy(tmp_path, doc)
    shim.ids.add(cid)
    for cmd in (["run", "--bundle", bundle.args("true").path, cid], ["policy", "check", "--bundle", bundle.path]):
        r = shim("--policy", pol, *cmd)
        assert r.returncode == 1, (cmd, r.stdout, r.stderr)
        assert needle.encode() in r.stderr and pol.encode() in r.stderr, r.stderr
    assert shim("state", cid).returncode != 0


def test_policy_check_text_and_json(shim, bundle, tmp_path):
    bundle.config["process"]["capabilities"]["bounding"].append("CAP_SYS_ADMIN")
    bundle.config["annotations"] = {"dev.agentshim.egress.allow": "api.example.com:443"}
    bundle.save()
    r = shim("policy", "check", "--bundle", bundle.path)
    assert r.returncode == 0, r.stderr
    text = r.stdout.decode().splitlines()
    assert text[0].startswith("built-in policy, mode enforce:")
    assert text[-1] == "ACCEPTED"
    assert any(l.startswith("dropped\tprocess.capabilities.bounding\tcaller asked for CAP_SYS_ADMIN") for l in text), text
    r = shim("policy", "check", "--bundle", bundle.path, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["accepted"] is True and out["mode"] == "enforce" and out["violations"] == []
    assert "config" not in out
    assert out["network"]["allow"] == ["api.example.com:443"]
    assert out["extra_seccomp"]["defaultAction"] == "SCMP_ACT_ERRNO"
    rules = [(d["rule"], d["action"]) for d in out["decisions"]]
    assert ("capabilities.allowed", "dropped") in rules
    assert ("annotations.may_widen", "added") in rules
    assert ("network.mode", "added") in rules
    # Refuse mode: exit 1, the violations listed.
    pol = write_policy(tmp_path, {"mode": "refuse", "annotations": {"may_widen": []}})
    r = shim("--policy", pol, "policy", "check", "--bundle", bundle.path, "--json")
    assert r.returncode == 1
    out = json.loads(r.stdout)
    assert out["accepted"] is False and out["mode"] == "refuse"
    details = " ".join(v["detail"] for v in out["violations"])
    assert "CAP_SYS_ADMIN" in details and "dev.agentshim.egress.allow" in details
    assert all(v["action"] == "refused" for v in out["violations"])
    r = shim("--policy", pol, "policy", "check", "--bundle", bundle.path)
    assert r.returncode == 1 and b"REFUSED:" in r.stdout


def test_spec_output_is_accepted_by_the_strict_example(shim, tmp_path):
    d = tmp_path / "b"
    d.mkdir()
    shim("spec", "--bundle", str(d), check=True)
    (d / "rootfs").mkdir()
    r = shim("--policy", os.path.join(REPO, "configs", "policy", "default.json"), "policy", "check",
             "--bundle", str(d), "--json")
    assert r.returncode == 0, r.stdout
    out = json.loads(r.stdout)
    assert not [x for x in out["decisions"] if x["action"] in ("dropped", "capped", "refused")], out["decisions"]


def _events(audit_dir):
    out = []
    for f in glob.glob(os.path.join(audit_dir, "runs", "*", "events.ndjson")):
        out += [json.loads(l) for l in open(f)]
    return out


def test_exec_time_limit_kills_the_container_and_is_recorded(shim, bundle, cid, tmp_path):
    import time
    pol = write_policy(tmp_path, {"limits": {"exec_time_seconds": 1}})
    shim.ids.add(cid)
    # A runaway process (and a child it forked) outlives the limit.
    t = time.monotonic()
    r = shim("--policy", pol, "run", "--bundle", bundle.sh("sleep 60 & sleep 60").path, cid, timeout=60)
    took = time.monotonic() - t
    assert r.returncode == 137, (r.returncode, r.stderr)  # SIGKILL
    assert took < 30, took
    ev = _events(shim.extra[1])
    limit = [e for e in ev if e["type"] == "run.time_limit"]
    assert len(limit) == 1 and limit[0]["data"]["limit_s"] == 1, limit
    ex = [e for e in ev if e["type"] == "run.exit"][-1]["data"]
    assert ex["reason"] == "exec time limit" and ex["signal"] == "SIGKILL", ex
    v = shim("verify", cid)
    assert v.returncode == 0 and b"VERIFIED" in v.stdout, v.stdout


def test_no_time_limit_by_default_leaves_the_container_alone(shim, bundle, cid):
    shim.ids.add(cid)
    r = shim("run", "--bundle", bundle.sh("sleep 2; echo done").path, cid, timeout=60)
    assert r.returncode == 0 and r.stdout == b"done\n", r.stderr
    assert not [e for e in _events(shim.extra[1]) if e["type"] == "run.time_limit"]


# ---- the operator's escape hatches (default stays strict) ----

def _decisions(shim, cid, rule):
    ev = run_created(shim.extra[1], cid)
    return [x for x in ev["data"]["policy_decisions"] if x["rule"] == rule]


def test_block_devices_only_with_allow_block_devices(shim, bundle_factory, cid, tmp_path):
    """runtime-tools' linux_devices: a block device node and its cgroup rule
    are dropped by default and kept with devices.allow_block_devices."""
    def block_bundle():
        b = bundle_factory()
        b.config["linux"]["devices"] = [{"path": "/dev/test2", "type": "b", "major": 8, "minor": 666,
                                         "fileMode": 0o660, "uid": 0, "gid": 0}]
        b.config["linux"]["resources"]["devices"].append(
            {"allow": True, "type": "b", "major": 8, "minor": 666, "access": "rw"})
        return b.sh("ls -l /dev/test2 2>&1; grep '^b 8' /sys/fs/cgroup/devices/devices.list 2>/dev/null; true")
    shim.ids.add(cid)
    r = shim("run", "--bundle", block_bundle().path, cid)
    assert r.returncode == 0 and b"No such file" in r.stdout, (r.stdout, r.stderr)
    dropped = _decisions(shim, cid, "devices.allowed")
    assert any("block device /dev/test2 (b 8:666)" in d["detail"] and d["action"] == "dropped" for d in dropped), dropped

    pol = write_policy(tmp_path, {"devices": {"allow_block_devices": True}})
    cid2 = cid + "b"
    shim.ids.add(cid2)
    r = shim("--policy", pol, "run", "--bundle", block_bundle().path, cid2)
    out = r.stdout.decode()
    assert out.startswith("brw-rw----") and "8, 666" in out, (out, r.stderr)
    if os.path.exists("/sys/fs/cgroup/devices"):  # cgroup v1: the rule is visible inside
        assert "b 8:666 rw" in out, out
    assert r.returncode == 0, (out, r.stderr)
    ev = run_created(shim.extra[1], cid2)
    kept = [x for x in ev["data"]["policy_decisions"] if x["rule"] == "devices.allow_block_devices"]
    assert {d["path"] for d in kept} >= {"linux.devices[0]"} and all(d["action"] == "kept" for d in kept), kept
    assert len(kept) == 2, kept  # the node and the cgroup rule


def test_host_network_only_with_allow_host_and_passthrough(shim, bundle, cid, tmp_path):
    """Kubernetes hostNetwork, docker --network host, runtime-tools'
    linux_ns_itype: a config without a network namespace."""
    bundle.config["linux"]["namespaces"] = [n for n in bundle.config["linux"]["namespaces"] if n["type"] != "network"]
    bundle.sh("readlink /proc/self/ns/net; readlink /proc/self/ns/pid")
    shim.ids.add(cid)
    r = shim("run", "--bundle", bundle.path, cid)
    assert r.returncode == 1 and b"no network namespace" in r.stderr and b"needs namespaces.allow_host" in r.stderr

    # allow_host "network" needs network.mode passthrough: said when the policy is loaded.
    bad = write_policy(tmp_path, {"namespaces": {"allow_host": ["network"]}}, "bad.json")
    r = shim("--policy", bad, "run", "--bundle", bundle.path, cid + "x")
    assert r.returncode == 1 and b'namespaces.allow_host: "network" needs network.mode "passthrough"' in r.stderr, r.stderr

    pol = write_policy(tmp_path, {"namespaces": {"allow_host": ["network"]}, "network": {"mode": "passthrough"}})
    cid2 = cid + "h"
    shim.ids.add(cid2)
    r = shim("--policy", pol, "run", "--bundle", bundle.path, cid2)
    assert r.returncode == 0, r.stderr
    net, pid = r.stdout.decode().split()
    assert net == os.readlink("/proc/self/ns/net"), net  # the host's
    assert pid != os.readlink("/proc/self/ns/pid"), pid  # not allowed: a new one
    kept = _decisions(shim, cid2, "namespaces.allow_host")
    assert len(kept) == 1 and kept[0]["action"] == "kept" and "egress is not mediated" in kept[0]["detail"], kept


def test_capability_the_host_cannot_grant_is_an_error(shim, bundle, cid, tmp_path):
    """OCI: a capability that cannot be mapped MUST be an error (runc refuses
    too). Only for capabilities the policy keeps: one it drops stays a
    decision. Needs a capability missing from this host's bounding set."""
    bnd = caps_of(open("/proc/self/status").read())["CapBnd"]
    missing = [c for c in range(41) if not bnd & (1 << c)]
    if not missing:
        pytest.skip("this host's capability bounding set is full")
    names = {24: "CAP_SYS_RESOURCE", 25: "CAP_SYS_TIME", 38: "CAP_PERFMON", 39: "CAP_BPF", 40: "CAP_CHECKPOINT_RESTORE"}
    if missing[0] not in names:
        pytest.skip(f"capability {missing[0]} missing: no name here")
    cap = names[missing[0]]
    for s in ("bounding", "effective", "permitted"):
        bundle.config["process"]["capabilities"][s].append(cap)
    bundle.args("true")
    # The default policy does not allow it: dropped, with its decision.
    shim.ids.add(cid)
    r = shim("run", "--bundle", bundle.path, cid)
    assert r.returncode == 0, r.stderr
    assert any(cap in d["detail"] and d["action"] == "dropped" for d in _decisions(shim, cid, "capabilities.allowed"))
    # A policy that allows it: create refuses, naming it; nothing is left behind.
    allowed = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID", "CAP_SETUID",
               "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_AUDIT_WRITE", cap]
    pol = write_policy(tmp_path, {"capabilities": {"allowed": allowed}})
    r = shim("--policy", pol, "create", "--bundle", bundle.path, cid + "c")
    assert r.returncode == 1, r.stderr
    assert f"this host cannot grant {cap} (bounding, effective, permitted)".encode() in r.stderr, r.stderr
    assert shim("state", cid + "c").returncode != 0
    # exec --cap the same, in a container that runs.
    for s in ("bounding", "effective", "permitted"):
        bundle.config["process"]["capabilities"][s].remove(cap)
    cid2 = cid + "e"
    shim.ids.add(cid2)
    shim("--policy", pol, "run", "--detach", "--bundle", bundle.args("sleep", "30").path, cid2, check=True)
    r = shim("exec", "--cap", cap, "--cwd", "/", cid2, "true")
    assert r.returncode != 0 and f"this host cannot grant {cap}".encode() in r.stderr, r.stderr
    assert shim("exec", "--cap", "CAP_KILL", "--cwd", "/", cid2, "true").returncode == 0


# ---------------------------------------------------------------- mounts the policy once misread (issue 12)


def check_json(shim, bundle, *pre):
    r = shim(*pre, "policy", "check", "--bundle", bundle.path, "--json")
    assert r.returncode in (0, 1), r.stderr
    return r.returncode, json.loads(r.stdout)


def mount_case(shim, bundle, tmp_path, mount):
    bundle.config["mounts"].append(mount)
    bundle.save()
    return check_json(shim, bundle)


@pytest.mark.parametrize("name,mount,rule,needle", [
    ("typeless rbind of /", {"destination": "/host", "source": "/", "options": ["rbind"]},
     "runtime_owned", "contains agentshim's state root"),
    ("relative ../../ source", {"destination": "/host", "type": "bind", "source": "../" * 32, "options": ["rbind"]},
     "runtime_owned", "(/)"),
    ("relative typeless ro", {"destination": "/host", "source": "../" * 32, "options": ["rbind", "ro"]},
     "runtime_owned", "contains agentshim's state root"),
    ("ro bind of the state root", {"destination": "/s", "type": "bind", "source": "@root", "options": ["rbind", "ro"]},
     "runtime_owned", "state root"),
    ("typeless bind of the audit dir", {"destination": "/a", "source": "@audit", "options": ["bind", "ro"]},
     "runtime_owned", "audit directory"),
    ("symlink to the audit dir", {"destination": "/a", "source": "@link-audit", "options": ["rbind"]},
     "runtime_owned", "audit directory"),
    ("symlink to /", {"destination": "/a", "source": "@link-root", "options": ["rbind"]},
     "runtime_owned", "contains agentshim's state root"),
])
def test_policy_check_refuses_mounts_by_what_they_are(shim, bundle, tmp_path, name, mount, rule, needle):
    audit = shim.extra[1]
    os.makedirs(os.path.join(audit, "keys"), exist_ok=True)
    os.makedirs(shim.root, exist_ok=True)
    os.symlink(audit, str(tmp_path / "link-audit"))
    os.symlink("/", str(tmp_path / "link-root"))
    src = {"@root": shim.root, "@audit": audit, "@link-audit": str(tmp_path / "link-audit"),
           "@link-root": str(tmp_path / "link-root")}.get(mount["source"], mount["source"])
    rc, out = mount_case(shim, bundle, tmp_path, dict(mount, source=src))
    assert rc == 1 and out["accepted"] is False, out
    v = [d for d in out["violations"] if d["rule"] == rule]
    assert v, out["violations"]
    assert v[0]["path"].startswith("mounts[") and v[0]["path"].endswith("].source")
    assert needle in v[0]["detail"], v[0]["detail"]
    assert v[0]["action"] == "refused"


def test_policy_check_typeless_mount_without_bind_is_an_error(shim, bundle):
    bundle.config["mounts"].append({"destination": "/host", "source": "/"})
    bundle.save()
    r = shim("policy", "check", "--bundle", bundle.path)
    assert r.returncode == 1
    assert b"mounts[" in r.stderr and b"].type" in r.stderr, r.stderr


def test_policy_check_signing_key_outside_audit_dir(shim, bundle, tmp_path):
    key = tmp_path / "elsewhere" / "host.key"
    key.parent.mkdir()
    key.write_text("k")
    pol = write_policy(tmp_path, {"audit": {"signing_key": str(key)}})
    bundle.config["mounts"].append({"destination": "/k", "type": "bind", "source": str(key.parent),
                                    "options": ["rbind", "ro"]})
    bundle.save()
    rc, out = check_json(shim, bundle, "--policy", pol)
    assert rc == 1, out
    assert any(d["rule"] == "runtime_owned" and "signing key" in d["detail"] for d in out["violations"]), out


@pytest.mark.parametrize("fstype", ["sysfs", "cgroup"])
def test_policy_check_writable_kernel_fs_is_neutralised_or_refused(shim, bundle, tmp_path, fstype):
    for m in bundle.config["mounts"]:
        if m["type"] == fstype:
            m["options"] = list(m.get("options", [])) + ["ro", "rw"]
            break
    else:
        bundle.config["mounts"].append({"destination": "/sys" if fstype == "sysfs" else "/sys/fs/cgroup",
                                        "type": fstype, "source": fstype, "options": ["ro", "rw"]})
    bundle.save()
    rc, out = check_json(shim, bundle)
    assert rc == 0, out
    d = [d for d in out["decisions"] if d["rule"] == "filesystem.readonly_paths" and d["path"].startswith("mounts[")]
    assert d and d[0]["action"] == "neutralised", out["decisions"]
    text = shim("policy", "check", "--bundle", bundle.path).stdout.decode()
    assert "neutralised" in text and "filesystem.readonly_paths" in text
    pol = write_policy(tmp_path, {"mode": "refuse"})
    rc, out = check_json(shim, bundle, "--policy", pol)
    assert rc == 1
    assert any(v["rule"] == "filesystem.readonly_paths" for v in out["violations"]), out["violations"]


def test_run_refuses_a_bind_of_the_custom_root(shim, bundle, cid):
    """The forged caller.exec of issue 12: a read-only bind of a custom --root."""
    os.makedirs(shim.root, exist_ok=True)
    bundle.config["mounts"].append({"destination": "/state", "type": "bind", "source": shim.root,
                                    "options": ["rbind", "ro"]})
    bundle.save()
    shim.ids.add(cid)
    r = shim("run", "--bundle", bundle.args("true").path, cid)
    assert r.returncode == 1
    assert b"state root" in r.stderr, r.stderr


def test_misspelt_annotation_or_bad_rule_is_an_error(shim, bundle, cid):
    """A misspelt dev.agentshim.* annotation or a URL where a host:port rule
    belongs fails create with a message naming it, never a silent no-op."""
    for ann, want in (({"dev.agentshim.egress.allowed": "x.example:443"},
                       b"dev.agentshim.egress.allowed, which is not a known agentshim annotation"),
                      ({"dev.agentshim.egress.allow": "https://host.example"},
                       b'"https://host.example" is invalid')):
        bundle.config["annotations"] = ann
        bundle.args("true")
        shim.ids.add(cid)
        r = shim("run", "--bundle", bundle.path, cid)
        assert r.returncode != 0 and want in r.stderr, r.stderr
