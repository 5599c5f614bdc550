"""Containers that share namespaces, driven through the runtime's own CLI as
containerd's shim and Docker drive it: every client derives a container's
namespaces from the pid in --pid-file (issue 14).

- The pid-file pid (agentshim's sentinel) is the container as far as
  namespaces go: /proc/<pid>/ns/{net,ipc,uts,mnt,cgroup} are the container
  init's, so nsenter, CNI plugins and `podman top` see the container.
- A config naming /proc/<that pid>/ns/<type> joins that container's
  namespace, pid included (a pod's app joining its sandbox, Docker's
  `container:` modes), under the default policy, and the record says which
  container it joined.
- A pid that is not an agentshim container in the host's namespaces is the
  host's namespace: refused.
"""
import json
import os
import time

import pytest

from conftest import Bundle, wait_records

TYPES = ("net", "ipc", "uts", "mnt", "cgroup")


def ns_ids(pid, types=TYPES):
    return {t: os.readlink(f"/proc/{pid}/ns/{t}") for t in types}


def start_detached(shim, bundle, cid, tmp_path, script):
    bundle.sh(script)
    pidfile = str(tmp_path / f"{cid}.pid")
    shim.ids.add(cid)
    r = shim("create", "--bundle", bundle.path, "--pid-file", pidfile, cid)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    r = shim("start", cid)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    with open(pidfile) as f:
        return int(f.read())


def test_pid_file_pid_is_the_container_for_namespaces(shim, bundle, cid, tmp_path):
    pid = start_detached(shim, bundle, cid, tmp_path, "exec sleep 600")
    init = shim.json("state", cid)["pid"]
    assert init != pid  # the sentinel is not the init...
    assert ns_ids(pid) == ns_ids(init)  # ...but shares every namespace it can enter
    for t in ("net", "ipc", "uts", "mnt"):
        assert os.readlink(f"/proc/{pid}/ns/{t}") != os.readlink(f"/proc/self/ns/{t}"), t
    # What monitoring agents read through the pid: the container's network.
    with open(f"/proc/{pid}/net/dev") as f:
        ifaces = sorted(l.split(":")[0].strip() for l in f if ":" in l)
    assert ifaces == ["lo"], ifaces
    # The sentinel still exits when the container does.
    shim("kill", cid, "KILL", check=True)
    deadline = time.monotonic() + 20
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{pid}")


def test_joining_another_container_by_its_pid_file_pid(shim, bundle_factory, tmp_path):
    """B names A's pid-file pid for net, ipc, uts and pid: it shares A's
    loopback, namespaces and processes, under the default policy."""
    a, b = bundle_factory(), bundle_factory()
    apid = start_detached(shim, a, "pod-a", tmp_path, "while true; do echo from-a | nc -l -p 8088; done")
    a_init = shim.json("state", "pod-a")["pid"]
    for e in b.config["linux"]["namespaces"]:
        if e["type"] in ("network", "ipc", "uts", "pid"):
            e["path"] = f"/proc/{apid}/ns/" + {"network": "net"}.get(e["type"], e["type"])
    b.sh("for t in net ipc uts pid; do readlink /proc/self/ns/$t; done; "
         "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 1 | nc -w 3 127.0.0.1 8088 && break; sleep 0.3; done; "
         "ps -o args")
    shim.ids.add("pod-b")
    r = shim("run", "--bundle", b.path, "pod-b", timeout=60)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    lines = r.stdout.decode().splitlines()
    want = [os.readlink(f"/proc/{a_init}/ns/{t}") for t in ("net", "ipc", "uts", "pid")]
    assert lines[:4] == want, (lines, want, r.stderr.decode(errors="replace"))
    assert "from-a" in lines, lines
    assert any(l.startswith("nc -l -p 8088") for l in lines), lines
    # The record names the container joined (A stopped first: every run of
    # the audit directory must be finalized).
    shim("delete", "--force", "pod-a", check=True)
    shim.ids.discard("pod-a")
    audit = shim.extra[shim.extra.index("--audit-dir") + 1]
    wait_records(audit)
    found = []
    for d in os.listdir(os.path.join(audit, "runs")):
        with open(os.path.join(audit, "runs", d, "events.ndjson")) as f:
            first = json.loads(f.readline())
        if first["data"]["container_id"] == "pod-b":
            found = [x for x in first["data"]["policy_decisions"]
                     if x["rule"] == "namespaces" and x["action"] == "kept"]
    assert len(found) == 4 and all("agentshim container pod-a" in x["detail"] for x in found), found


@pytest.mark.parametrize("t", ["net", "ipc", "uts", "pid"])
def test_naming_a_host_process_is_refused(shim, bundle, cid, t):
    """Our own pid is not an agentshim container: its namespaces are the
    host's, and joining them stays refused."""
    for e in bundle.config["linux"]["namespaces"]:
        if {"network": "net"}.get(e["type"], e["type"]) == t:
            e["path"] = f"/proc/{os.getpid()}/ns/{t}"
    bundle.args("true")
    shim.ids.add(cid)
    r = shim("run", "--bundle", bundle.path, cid)
    assert r.returncode != 0
    kind = {"net": "network"}.get(t, t)
    assert f"the host's {kind} namespace".encode() in r.stderr, r.stderr


def test_a_stale_pid_index_entry_redirects_nothing(shim, bundle_factory, tmp_path):
    """After A is deleted its pid-file pid may be reused by any process: a
    config naming it is then checked as any other path (here: the pid is gone,
    so the join fails with a clear error)."""
    a, b = bundle_factory(), bundle_factory()
    apid = start_detached(shim, a, "gone-a", tmp_path, "exec sleep 600")
    assert os.path.exists(f"/run/agentshim.pids/{apid}")
    shim("delete", "--force", "gone-a", check=True)
    shim.ids.discard("gone-a")
    try:  # a subreaper (the test runner) may hold the exited sentinel as a zombie
        os.waitpid(apid, 0)
    except ChildProcessError:
        pass
    assert not os.path.exists(f"/run/agentshim.pids/{apid}")
    for e in b.config["linux"]["namespaces"]:
        if e["type"] == "ipc":
            e["path"] = f"/proc/{apid}/ns/ipc"
    b.args("true")
    shim.ids.add("gone-b")
    r = shim("run", "--bundle", b.path, "gone-b")
    if os.path.exists(f"/proc/{apid}") and open(f"/proc/{apid}/stat").read().split(") ")[1][0] != "Z":
        pytest.skip(f"the pid was reused meanwhile: {open(f'/proc/{apid}/stat').read()}")
    assert r.returncode != 0 and f"/proc/{apid}/ns/ipc".encode() in r.stderr, r.stderr
