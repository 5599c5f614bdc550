"""configs/kubernetes/: there is no cluster here, so the manifests are parsed
(python3-yaml) and checked against the Kubernetes object shapes they claim:
apiVersion/kind, required fields, names that the API server would accept,
quantities, cross references (selector vs template labels, volumes vs
mounts, ConfigMap keys, RBAC roleRef, RuntimeClass handler vs the containerd
snippet, Pod runtimeClassName), and the installer script's shell syntax."""
import os
import re
import subprocess

import pytest

yaml = pytest.importorskip("yaml", reason="python3-yaml (scripts/deps.sh installs it)")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K8S = os.path.join(REPO, "configs", "kubernetes")

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")

KNOWN = {
    ("v1", "Namespace"), ("v1", "ServiceAccount"), ("v1", "ConfigMap"), ("v1", "Pod"),
    ("apps/v1", "DaemonSet"), ("node.k8s.io/v1", "RuntimeClass"),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"), ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
}
NAMESPACED = {"ServiceAccount", "ConfigMap", "Pod", "DaemonSet"}


def load_all():
    objs = []
    for name in sorted(os.listdir(K8S)):
        if name.endswith((".yaml", ".yml")):
            with open(os.path.join(K8S, name)) as f:
                for doc in yaml.safe_load_all(f):
                    if doc is not None:
                        objs.append((name, doc))
    return objs


OBJS = load_all()


def by_kind(kind):
    return [o for _, o in OBJS if o["kind"] == kind]


def check_key(key):
    """A label/annotation key: optional DNS subdomain prefix, '/', qualified name <= 63."""
    prefix, _, name = key.rpartition("/")
    if prefix:
        assert len(prefix) <= 253 and DNS1123_SUBDOMAIN.match(prefix), key
    assert len(name) <= 63 and QUALIFIED_NAME.match(name), key


def check_label_value(v):
    assert isinstance(v, str) and len(v) <= 63 and (v == "" or QUALIFIED_NAME.match(v)), v


def check_meta(obj):
    md = obj["metadata"]
    assert DNS1123_SUBDOMAIN.match(md["name"]) and len(md["name"]) <= 253, md["name"]
    for k, v in md.get("labels", {}).items():
        check_key(k)
        check_label_value(v)
    for k, v in md.get("annotations", {}).items():
        check_key(k)
        assert isinstance(v, str), (k, v)


def check_resources(res):
    for section in ("requests", "limits"):
        for k, v in res.get(section, {}).items():
            assert k in ("cpu", "memory", "ephemeral-storage"), k
            assert QUANTITY.match(str(v)), (k, v)


def check_pod_spec(spec, where):
    assert spec["containers"], where
    vols = {v["name"] for v in spec.get("volumes", [])}
    for v in spec.get("volumes", []):
        assert DNS1123_LABEL.match(v["name"])
        kinds = set(v) - {"name"}
        assert len(kinds) == 1 and kinds <= {"hostPath", "configMap", "emptyDir", "secret", "projected"}, v
        if "emptyDir" in v and "sizeLimit" in v["emptyDir"]:
            assert QUANTITY.match(v["emptyDir"]["sizeLimit"])
    names = set()
    for c in spec["containers"]:
        assert DNS1123_LABEL.match(c["name"]) and c["name"] not in names
        names.add(c["name"])
        assert isinstance(c["image"], str) and c["image"]
        for m in c.get("volumeMounts", []):
            assert m["name"] in vols, f"{where}: mount of undefined volume {m['name']}"
            assert m["mountPath"].startswith("/")
        check_resources(c.get("resources", {}))
        for e in c.get("env", []):
            assert re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", e["name"])
            assert ("value" in e) != ("valueFrom" in e)
        for key in ("command", "args"):
            assert all(isinstance(a, str) for a in c.get(key, []))
    for t in spec.get("tolerations", []):
        assert t.get("operator", "Equal") in ("Exists", "Equal")
        assert t.get("effect", "") in ("", "NoSchedule", "PreferNoSchedule", "NoExecute")
    for k, v in spec.get("nodeSelector", {}).items():
        check_key(k)
        check_label_value(v)


def test_every_object_is_known_and_well_formed():
    assert OBJS, "no manifests"
    for name, o in OBJS:
        assert (o.get("apiVersion"), o.get("kind")) in KNOWN, (name, o.get("apiVersion"), o.get("kind"))
        check_meta(o)
        if o["kind"] in NAMESPACED and o["kind"] != "Pod":
            assert DNS1123_LABEL.match(o["metadata"]["namespace"]), name


def test_runtimeclass_matches_containerd_handler():
    rcs = by_kind("RuntimeClass")
    assert len(rcs) == 1
    rc = rcs[0]
    assert DNS1123_LABEL.match(rc["handler"]) and rc["handler"] == "agentshim"
    with open(os.path.join(REPO, "configs", "containerd", "config.toml")) as f:
        toml = f.read()
    assert f'containerd.runtimes.{rc["handler"]}]' in toml
    pf = rc["overhead"]["podFixed"]
    assert set(pf) <= {"cpu", "memory"} and pf
    assert all(QUANTITY.match(str(v)) for v in pf.values())
    sch = rc["scheduling"]
    for k, v in sch["nodeSelector"].items():
        check_key(k)
        check_label_value(v)
    for t in sch.get("tolerations", []):
        assert t["operator"] in ("Exists", "Equal") and t["effect"] in ("NoSchedule", "PreferNoSchedule", "NoExecute")


def test_installer_daemonset():
    (ds,) = by_kind("DaemonSet")
    spec = ds["spec"]
    sel = spec["selector"]["matchLabels"]
    tmpl_labels = spec["template"]["metadata"]["labels"]
    assert sel and all(tmpl_labels.get(k) == v for k, v in sel.items()), "selector must match the template"
    pod = spec["template"]["spec"]
    check_pod_spec(pod, "installer")
    sa = {o["metadata"]["name"] for o in by_kind("ServiceAccount")}
    assert pod["serviceAccountName"] in sa
    # The script comes from a ConfigMap in the same namespace with that key.
    cms = {o["metadata"]["name"]: o for o in by_kind("ConfigMap")}
    vol = next(v for v in pod["volumes"] if "configMap" in v)
    cm = cms[vol["configMap"]["name"]]
    assert cm["metadata"]["namespace"] == ds["metadata"]["namespace"]
    script = cm["data"]["install.sh"]
    cmd = pod["containers"][0]["command"]
    assert cmd[-1].endswith("/install.sh")
    # Valid POSIX shell, and it does what the docs say.
    r = subprocess.run(["sh", "-n"], input=script.encode(), capture_output=True)
    assert r.returncode == 0, r.stderr
    assert "agentshim install containerd" in script and "/usr/local/bin/agentshim" in script
    assert "policy" in script and "restart containerd" in script
    # The RuntimeClass schedules onto nodes the installer labels.
    (rc,) = by_kind("RuntimeClass")
    for k, v in rc["scheduling"]["nodeSelector"].items():
        assert f"{k}={v}" in script
    # RBAC: the binding names the role and the service account that exist.
    (crb,) = by_kind("ClusterRoleBinding")
    assert crb["roleRef"]["kind"] == "ClusterRole"
    assert crb["roleRef"]["name"] in {o["metadata"]["name"] for o in by_kind("ClusterRole")}
    assert any(s["kind"] == "ServiceAccount" and s["name"] in sa for s in crb["subjects"])


def test_example_pod_uses_runtimeclass_and_egress_annotations():
    (pod,) = by_kind("Pod")
    (rc,) = by_kind("RuntimeClass")
    assert pod["spec"]["runtimeClassName"] == rc["metadata"]["name"]
    check_pod_spec(pod["spec"], "example pod")
    ann = pod["metadata"]["annotations"]
    allow = ann["dev.agentshim.egress.allow"]
    for entry in allow.split(","):
        host, _, port = entry.strip().rpartition(":")
        assert host and 0 < int(port) < 65536, entry
        assert re.match(r"^(\*\.)?[a-z0-9.-]+$", host), entry
    # Annotations under the prefix the containerd snippet passes through.
    assert all(k.startswith("dev.agentshim.") for k in ann)
    # Works with agentshim's enforced read-only root: writes go to volumes.
    c = pod["spec"]["containers"][0]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert any(m["mountPath"] == c["workingDir"] for m in c["volumeMounts"])


def test_shape_checks_reject_broken_objects():
    """The checks above can fail: a selector that does not match, a mount of
    an undefined volume, a bad quantity, a bad annotation key."""
    (ds,) = by_kind("DaemonSet")
    import copy
    bad = copy.deepcopy(ds["spec"]["template"]["spec"])
    bad["containers"][0]["volumeMounts"].append({"name": "nope", "mountPath": "/x"})
    with pytest.raises(AssertionError):
        check_pod_spec(bad, "bad")
    with pytest.raises(AssertionError):
        check_resources({"limits": {"memory": "2 GB"}})
    with pytest.raises(AssertionError):
        check_key("dev.agentshim./egress")
    with pytest.raises(AssertionError):
        check_meta({"metadata": {"name": "Agent_Pod"}})
