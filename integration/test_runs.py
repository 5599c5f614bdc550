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
