"""Configuration without runtime flags (issue 14 item 6): the config file
chosen by the name agentshim is invoked as, and the id -> root index that lets
a command find a container whatever --root a client passes or drops."""
import json
import os
import uuid

from conftest import AGENTSHIM, run

STRICT_POLICY = {"mode": "refuse"}


def strict_setup(tmp_path, name="strict", config_dir=None):
    """A symlink agentshim-<name> -> the binary, a config dir holding
    <name>.json that names a refuse-mode policy and an audit dir of its own."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    link = bindir / f"agentshim-{name}"
    os.symlink(AGENTSHIM, link)
    cdir = config_dir or str(tmp_path / "etc-agentshim")
    os.makedirs(cdir, exist_ok=True)
    pol = tmp_path / "policy.refuse.json"
    pol.write_text(json.dumps(STRICT_POLICY))
    audit = tmp_path / f"audit-{name}"
    cfg = os.path.join(cdir, f"{name}.json")
    with open(cfg, "w") as f:
        json.dump({"policy": str(pol), "audit_dir": str(audit), "comment": "test"}, f)
    return str(link), cdir, str(pol), str(audit), cfg


def with_sys_admin(bundle):
    for s in ("bounding", "effective", "permitted"):
        bundle.config["process"]["capabilities"][s].append("CAP_SYS_ADMIN")
    bundle.save()
    return bundle


def test_the_name_invoked_selects_policy_and_audit_dir(tmp_path, bundle, cid):
    link, cdir, pol, audit, _ = strict_setup(tmp_path)
    env = dict(os.environ, AGENTSHIM_CONFIG_DIR=cdir)
    root = str(tmp_path / "root")
    # The config file's refuse-mode policy applies: CAP_SYS_ADMIN is a violation.
    with_sys_admin(bundle.args("true"))
    r = run([link, "--root", root, "run", "--bundle", bundle.path, cid], env=env)
    err = r.stderr.decode()
    assert r.returncode == 1 and f"policy {pol} (mode refuse) refuses this config" in err, err
    # A flag given on the command line wins over the file: the built-in
    # (enforce) policy drops the capability and runs the container, and the
    # record lands in the config file's audit dir.
    enforce = tmp_path / "enforce.json"
    enforce.write_text(json.dumps({"mode": "enforce"}))
    r = run([link, "--root", root, "--policy", str(enforce), "run", "--bundle", bundle.path, cid], env=env)
    assert r.returncode == 0, r.stderr
    assert os.listdir(os.path.join(audit, "runs")), "no record in the config file's audit dir"
    # The plain name without a file of its own: defaults, no error.
    plain = os.path.join(os.path.dirname(link), "agentshim")
    os.symlink(AGENTSHIM, plain)
    assert run([plain, "--root", root, "list"], env=env).returncode == 0


def test_a_handler_without_its_config_file_refuses_to_run(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    link = bindir / "agentshim-nosuch"
    os.symlink(AGENTSHIM, link)
    env = dict(os.environ, AGENTSHIM_CONFIG_DIR=str(tmp_path))
    r = run([str(link), "--root", str(tmp_path / "root"), "list"], env=env)
    assert r.returncode == 1
    assert f"config file {tmp_path}/nosuch.json does not exist" in r.stderr.decode(), r.stderr
    # A typo in a config file is an error naming the file and key.
    (tmp_path / "nosuch.json").write_text('{"polcy": "/x"}')
    r = run([str(link), "--root", str(tmp_path / "root"), "list"], env=env)
    assert r.returncode == 1 and 'unknown key "polcy"' in r.stderr.decode(), r.stderr


def test_real_etc_agentshim_lookup(tmp_path, bundle, cid):
    """The real lookup under /etc/agentshim, through a handler name no real
    install uses (so no real file is touched)."""
    name = "test" + uuid.uuid4().hex[:8]
    os.makedirs("/etc/agentshim", exist_ok=True)
    link, _, pol, _, cfg = strict_setup(tmp_path, name=name, config_dir="/etc/agentshim")
    try:
        env = {k: v for k, v in os.environ.items() if k != "AGENTSHIM_CONFIG_DIR"}
        with_sys_admin(bundle.args("true"))
        r = run([link, "--root", str(tmp_path / "root"), "run", "--bundle", bundle.path, cid], env=env)
        assert r.returncode == 1 and f"policy {pol} (mode refuse)" in r.stderr.decode(), r.stderr
    finally:
        os.unlink(cfg)


def test_commands_find_a_container_under_a_root_they_were_not_given(tmp_path, bundle, cid):
    root = str(tmp_path / "custom-root")
    audit = str(tmp_path / "audit")
    entry = f"/run/agentshim.ids/{cid}"
    r = run([AGENTSHIM, "--root", root, "--audit-dir", audit, "create", "--bundle",
             bundle.args("sleep", "600").path, cid])
    assert r.returncode == 0, r.stderr
    try:
        assert os.readlink(entry) == os.path.realpath(root)
        # No --root (containerd's BinaryName, a dropped flag) and another
        # --root (podman's cleanup passes its own default): both find it.
        st = json.loads(run([AGENTSHIM, "state", cid], check=True).stdout)
        assert st["id"] == cid and st["status"] == "created", st
        other = str(tmp_path / "other-root")
        st = json.loads(run([AGENTSHIM, "--root", other, "state", cid], check=True).stdout)
        assert st["status"] == "created"
        # create is never redirected: the same id under another root is another container.
        r = run([AGENTSHIM, "delete", "--force", cid])
        assert r.returncode == 0, r.stderr
        assert not os.path.exists(os.path.join(root, cid)), "state left under the custom root"
        assert not os.path.lexists(entry), "index entry left"
        assert run([AGENTSHIM, "--root", root, "state", cid]).returncode != 0
    finally:
        run([AGENTSHIM, "--root", root, "delete", "--force", cid])
