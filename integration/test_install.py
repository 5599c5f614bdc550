"""`agentshim install docker|containerd`: backs up, merges, never clobbers
other runtimes, refuses to change a differing agentshim entry; the merged
files load in the real daemons (containerd `config dump`; dockerd
`--validate` when available, else a real start in test_docker)."""
import glob
import json
import os
import subprocess

import pytest

from conftest import AGENTSHIM, run

BIN = "/usr/local/bin/agentshim"


@pytest.fixture(autouse=True, scope="module")
def private_config_dir(tmp_path_factory):
    """`install containerd` writes the strict handler's config file and a
    symlink next to --binary: keep both out of the host's /etc/agentshim and
    /usr/local/bin (a stray /etc/agentshim/*.json changes every later run)."""
    d = tmp_path_factory.mktemp("etc-agentshim")
    link = BIN + "-strict"
    had_link = os.path.lexists(link)
    os.environ["AGENTSHIM_CONFIG_DIR"] = str(d)
    try:
        yield d
    finally:
        del os.environ["AGENTSHIM_CONFIG_DIR"]
        if not had_link and os.path.islink(link):
            os.unlink(link)


def install(*args):
    return run([AGENTSHIM, "install", *args, "--binary", BIN])


def test_docker_merge_keeps_other_runtimes_and_settings(tmp_path):
    cfg = tmp_path / "daemon.json"
    original = {"log-level": "warn", "runtimes": {"crun": {"path": "/usr/bin/crun"}}}
    cfg.write_text(json.dumps(original))
    os.chmod(cfg, 0o600)
    r = install("docker", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    merged = json.loads(cfg.read_text())
    assert merged["log-level"] == "warn"
    assert merged["runtimes"]["crun"] == {"path": "/usr/bin/crun"}
    assert merged["runtimes"]["agentshim"] == {"path": BIN, "runtimeArgs": ["--policy", "/etc/agentshim/policy.json"]}
    assert merged["runtimes"]["agentshim-strict"]["runtimeArgs"] == ["--policy", "/etc/agentshim/policy.strict.json"]
    assert os.stat(cfg).st_mode & 0o777 == 0o600
    backups = glob.glob(str(cfg) + ".agentshim-backup-*")
    assert len(backups) == 1 and json.load(open(backups[0])) == original
    # Idempotent: a second run changes nothing and makes no backup.
    before = cfg.read_text()
    r = install("docker", "--config", str(cfg))
    assert r.returncode == 0 and b"nothing to do" in r.stdout
    assert cfg.read_text() == before
    assert len(glob.glob(str(cfg) + ".agentshim-backup-*")) == 1


def test_docker_refuses_differing_entry_and_bad_json(tmp_path):
    cfg = tmp_path / "daemon.json"
    text = json.dumps({"runtimes": {"agentshim": {"path": "/opt/other/agentshim"}}})
    cfg.write_text(text)
    r = install("docker", "--config", str(cfg))
    assert r.returncode != 0 and b"differs" in r.stderr
    assert cfg.read_text() == text and not glob.glob(str(cfg) + ".agentshim-backup-*")
    cfg.write_text("{not json")
    r = install("docker", "--config", str(cfg))
    assert r.returncode != 0 and b"not valid JSON" in r.stderr
    assert cfg.read_text() == "{not json"


def test_docker_new_file_and_dry_run(tmp_path):
    cfg = tmp_path / "etc" / "docker" / "daemon.json"
    r = install("docker", "--config", str(cfg), "--dry-run")
    assert r.returncode == 0 and not cfg.exists()
    assert json.loads(r.stdout)["runtimes"]["agentshim"]["path"] == BIN
    r = install("docker", "--config", str(cfg))
    assert r.returncode == 0 and json.loads(cfg.read_text())["runtimes"]["agentshim"]["path"] == BIN


def test_containerd_append_once_and_load(tmp_path):
    cfg = tmp_path / "config.toml"
    original = ('version = 2\nroot = "/var/lib/containerd"\n\n'
                '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]\n'
                '  runtime_type = "io.containerd.runc.v2"\n')
    cfg.write_text(original)
    r = install("containerd", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    text = cfg.read_text()
    assert text.startswith(original)  # existing content untouched, block appended
    assert text.count("# BEGIN agentshim") == 1 and text.count("# END agentshim") == 1
    assert f'BinaryName = "{BIN}"' in text
    assert len(glob.glob(str(cfg) + ".agentshim-backup-*")) == 1
    r = install("containerd", "--config", str(cfg))
    assert r.returncode == 0 and cfg.read_text() == text
    # The merged file is valid for a real containerd.
    if os.access("/usr/bin/containerd", os.X_OK):
        dump = run(["/usr/bin/containerd", "--config", str(cfg), "config", "dump"], check=True).stdout.decode()
        assert "runtimes.agentshim]" in dump and 'pod_annotations = ["dev.agentshim.*"]' in dump
        assert "runtimes.runc]" in dump


def test_containerd_refuses_differing_handler_and_v1(tmp_path):
    cfg = tmp_path / "config.toml"
    text = ('version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.agentshim]\n'
            '  runtime_type = "io.containerd.runsc.v1"\n')
    cfg.write_text(text)
    r = install("containerd", "--config", str(cfg))
    assert r.returncode != 0 and b"differs" in r.stderr and cfg.read_text() == text
    cfg.write_text("[plugins.cri]\n")  # version 1
    r = install("containerd", "--config", str(cfg))
    assert r.returncode != 0 and b"version = 1" in r.stderr and cfg.read_text() == "[plugins.cri]\n"
