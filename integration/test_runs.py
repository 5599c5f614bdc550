"""`agentshim runs`, `verify` and `export` find records where `create` wrote
them: a policy's audit.dir is honoured by both (issue 13 item 6)."""
import json

from conftest import AGENTSHIM, run, wait_records


def test_runs_list_honours_the_policys_audit_dir(tmp_path, bundle, cid):
    audit = tmp_path / "policy-audit"
    pol = tmp_path / "policy.json"
    pol.write_text(json.dumps({"audit": {"dir": str(audit)}}))
    base = [AGENTSHIM, "--root", str(tmp_path / "root"), "--policy", str(pol)]
    r = run(base + ["run", "--bundle", bundle.args("true").path, cid])
    assert r.returncode == 0, r.stderr
    wait_records(str(audit))
    lst = run(base + ["runs", "list", "--json"], check=True)
    rows = json.loads(lst.stdout)
    assert [x["container_id"] for x in rows] == [cid], rows
    # The other record commands resolve a container id in the same place.
    assert run(base + ["verify", cid]).returncode == 0
    show = json.loads(run(base + ["runs", "show", "--json", cid], check=True).stdout)
    assert show["container_id"] == cid
    # --audit-dir still wins over the policy.
    other = tmp_path / "elsewhere"
    lst = run(base + ["--audit-dir", str(other), "runs", "list", "--json"], check=True)
    assert json.loads(lst.stdout) == []


def test_runs_list_shows_and_filters_the_kubernetes_identity(tmp_path, shim, bundle, cid):
    """The io.kubernetes.cri.* annotations containerd's CRI plugin writes
    (here written by hand, as any caller can: they are claims) reach the
    signed record, and runs list shows and filters by them (issue 14 item 5;
    test_cri.py checks the same through CRI once agentshim is a handler)."""
    uid = "0b5e3c1a-7d2f-4f5e-9c1b-2a3d4e5f6a7b"
    bundle.config["annotations"] = {
        "io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.container-name": "app",
        "io.kubernetes.cri.sandbox-id": "a" * 64, "io.kubernetes.cri.sandbox-name": "agent-7",
        "io.kubernetes.cri.sandbox-namespace": "team-a", "io.kubernetes.cri.sandbox-uid": uid}
    r = shim("run", "--bundle", bundle.args("true").path, cid)
    assert r.returncode == 0, r.stderr
    other = cid + "-plain"
    bundle.config["annotations"] = {}
    assert shim("run", "--bundle", bundle.args("true").path, other).returncode == 0
    audit = shim.extra[1]
    wait_records(audit)
    want = {"namespace": "team-a", "pod_name": "agent-7", "pod_uid": uid, "sandbox_id": "a" * 64,
            "container_name": "app", "container_type": "container"}
    rows = json.loads(shim("runs", "list", "--json", check=True).stdout)
    assert {r["container_id"]: r.get("kubernetes") for r in rows} == {cid: want, other: None}
    for flags in (["--pod", "agent-7"], ["--namespace", "team-a", "--k8s-container", "app"], ["--pod-uid", uid],
                  ["--sandbox-id", "a" * 64]):
        rows = json.loads(shim("runs", "list", "--json", *flags, check=True).stdout)
        assert [r["container_id"] for r in rows] == [cid], flags
    assert json.loads(shim("runs", "list", "--json", "--pod", "agent-8", check=True).stdout) == []
    table = shim("runs", "list", check=True).stdout.decode()
    assert "POD" in table.splitlines()[0] and "team-a/agent-7 app" in table, table
    show = json.loads(shim("runs", "show", "--json", cid, check=True).stdout)
    assert show["verified"] is True and show["kubernetes"] == want


def test_runs_show_of_a_running_container_answers_at_once(shim, bundle, cid, tmp_path):
    """Issue 15 item 7: `runs show` of a running container does not wait for
    the record: it says the container is running and shows what ran so far;
    `--follow` streams the events until the run is finalized, then prints
    the verified account; `--full` prints whole hashes; signals, failed exec
    attempts, the interpreter of a #! script and the proxy's denials (with
    their reason) are in the human output as in --json."""
    import os
    import subprocess
    import time
    bundle.config["mounts"].append({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                                    "options": ["nosuid", "nodev"]})
    with open(os.path.join(bundle.rootfs, "s.sh"), "w") as f:
        f.write("#!/bin/sh\necho from-script\n")
    os.chmod(os.path.join(bundle.rootfs, "s.sh"), 0o755)
    bundle.sh("/s.sh; /no/such/program 2>/dev/null; wget -q -O /dev/null http://denied.example/x 2>/dev/null; "
              "trap 'echo got-usr1' USR1; "
              "while [ ! -e /tmp/stop ]; do sleep 0.1; done")
    shim.ids.add(cid)
    assert shim("run", "--detach", "--bundle", bundle.path, cid).returncode == 0
    init = shim.json("state", cid)["pid"]
    deadline = time.time() + 20
    time.sleep(1)
    shim("kill", cid, "USR1")
    time.sleep(0.5)  # the event log's writer drains every 100 ms
    t0 = time.monotonic()
    r = shim("runs", "show", cid, timeout=30)
    assert time.monotonic() - t0 < 10 and r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert "status     running" in out and "record     " not in out, out
    # The interpreter as the kernel opened it (/bin/sh is a link to busybox).
    assert "/s.sh" in out and "interpreter: /bin/busybox" in out, out
    assert "exec attempts that failed" in out and "/no/such/program" in out, out
    assert "SIGUSR1" in out, out
    # Issue 16 item 3: the proxy's last denials, with the reason, while it runs.
    assert "denied   GET denied.example:80" in out, out
    j = json.loads(shim("runs", "show", "--json", cid).stdout)
    assert j["running"] is True and "exit" not in j
    full = shim("runs", "show", "--full", cid).stdout.decode()
    sha = next(p["sha256"] for p in j["processes"] if p["path"] == "/s.sh")
    assert len(sha) == 64 and sha in full and sha not in out
    # --follow: streams until the run is finalized, then the verified account.
    p = subprocess.Popen([shim.binary, "--root", shim.root, *shim.extra, "runs", "show", "--follow", cid],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(1)
    with open(f"/proc/{init}/root/tmp/stop", "w"):
        pass
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    out = out.decode()
    assert "events (following)" in out and "run.exit" in out and "run.finalized" in out, out
    assert out.rstrip().endswith("VERIFIED") or "record     VERIFIED" in out, out


def test_a_deleted_record_is_reported_as_deleted(shim, bundle, cid, tmp_path):
    """A run signed into the ledger whose directory was removed since is
    reported as deleted by `runs list` and `runs show`, never as unknown."""
    import shutil
    shim.ids.add(cid)
    assert shim("run", "--bundle", bundle.args("true").path, cid).returncode == 0
    audit = str(tmp_path / "audit")
    wait_records(audit)
    rows = json.loads(shim("runs", "list", "--json").stdout)
    run_id = rows[0]["run_id"]
    shutil.rmtree(f"{audit}/runs/{run_id}")
    rows = json.loads(shim("runs", "list", "--json").stdout)
    assert rows == [{"run_id": run_id, "container_id": cid, "complete": False, "deleted": True,
                     "finished": rows[0]["finished"]}], rows
    assert "DELETED" in shim("runs", "list").stdout.decode()
    for key in (run_id, cid):
        r = shim("runs", "show", key)
        assert r.returncode == 1 and b"is in the ledger" in r.stderr and b"the record was deleted" in r.stderr, \
            r.stderr
