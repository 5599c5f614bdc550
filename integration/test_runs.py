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
