"""The internal-only network and its egress allowlist proxy, end to end.

Everything is real: the kernel's network namespaces, agentshim's supervisor
serving the proxy and the DNS stub, curl (copied with its libraries into the
busybox rootfs) inside the container, Python and openssl s_server upstreams.

No test traffic leaves a network namespace this module creates: agentshim
itself runs inside a test namespace ("the lab") via `ip netns exec`, so the
lab is the "host" side of the proxy. The lab's loopback carries, besides
127.0.0.1, a public-looking upstream address (198.18.0.10, RFC 2544
benchmarking space), a private one (10.77.0.10) and the cloud metadata
address (169.254.169.254), each with real listeners, so a refusal is the
proxy's decision and not an unreachable address. `ip netns exec` binds
/etc/netns/<lab>/hosts over /etc/hosts, which gives the proxy's resolver the
test names.
"""
import glob
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.parse
import uuid

import pytest

from conftest import AGENTSHIM, Bundle, at_once, run, wait_records

UPSTREAM = "198.18.0.10"
PRIVATE = "10.77.0.10"
METADATA = "169.254.169.254"
HOSTS = f"""127.0.0.1 localhost
{UPSTREAM} allowed.test api.allowed.test other.test
{PRIVATE} private.allowed.test
{METADATA} metadata.allowed.test
127.0.0.1 loop.allowed.test
"""

SERVER = r"""
import http.server, json, socketserver, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def reply(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        out = json.dumps({"line": self.requestline, "headers": [[k, v] for k, v in self.headers.items()],
                          "body": body.decode(errors="replace"), "where": sys.argv[1]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    do_GET = do_POST = do_PUT = reply
    def log_message(self, *a): pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
S((sys.argv[1], int(sys.argv[2])), H).serve_forever()
"""


def sh(*cmd, check=True, **kw):
    return run(list(cmd), check=check, **kw)


class Lab:
    def __init__(self, tmp):
        self.name = "agt" + uuid.uuid4().hex[:10]
        self.tmp = tmp
        self.procs = []
        self.etc = f"/etc/netns/{self.name}"

    def ns(self, *cmd):
        return ["ip", "netns", "exec", self.name, *cmd]

    def runtime(self, *cmd):
        """The runtime under test with the lab as its host network (and the
        lab's hosts file), but the host's /sys and cgroups."""
        return ["/usr/bin/python3", os.path.join(os.path.dirname(__file__), "netlab_exec.py"),
                f"/var/run/netns/{self.name}", os.path.join(self.etc, "hosts"), *cmd]

    def start(self):
        sh("ip", "netns", "add", self.name)
        sh(*self.ns("ip", "link", "set", "lo", "up"))
        # Local addresses on the lab's own lo: reachable inside the lab only.
        for a in (f"{UPSTREAM}/32", f"{PRIVATE}/32", f"{METADATA}/32"):
            sh(*self.ns("ip", "addr", "add", a, "dev", "lo"))
        os.makedirs(self.etc, exist_ok=True)
        with open(os.path.join(self.etc, "hosts"), "w") as f:
            f.write(HOSTS)
        srv = os.path.join(self.tmp, "server.py")
        with open(srv, "w") as f:
            f.write(SERVER)
        for addr, port in ((UPSTREAM, 80), (UPSTREAM, 8080), (PRIVATE, 80), (METADATA, 80), ("127.0.0.1", 8081)):
            self.spawn(["/usr/bin/python3", srv, addr, str(port)])
        # HTTPS: openssl s_server with a certificate for allowed.test.
        self.ca = os.path.join(self.tmp, "cert.pem")
        key = os.path.join(self.tmp, "key.pem")
        sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
           "-keyout", key, "-out", self.ca, "-days", "2", "-subj", "/CN=allowed.test",
           "-addext", "subjectAltName=DNS:allowed.test,DNS:api.allowed.test")
        self.spawn(self.ns("openssl", "s_server", "-quiet", "-accept", f"{UPSTREAM}:443", "-cert", self.ca,
                           "-key", key, "-www"), wrap=False)
        for addr, port in ((UPSTREAM, 80), (UPSTREAM, 8080), (PRIVATE, 80), (METADATA, 80), ("127.0.0.1", 8081),
                           (UPSTREAM, 443)):
            self.wait_listening(addr, port)

    def spawn(self, cmd, wrap=True):
        full = self.ns(*cmd) if wrap else cmd
        self.procs.append(subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL, start_new_session=True))

    def wait_listening(self, addr, port):
        for _ in range(200):
            r = run(self.ns("ss", "-Htln", f"src {addr}:{port}"))
            if r.stdout.strip():
                return
            time.sleep(0.05)
        raise AssertionError(f"lab server {addr}:{port} did not start")

    def stop(self):
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
        run(["ip", "netns", "delete", self.name])
        shutil.rmtree(self.etc, ignore_errors=True)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = Lab(str(tmp_path_factory.mktemp("lab")))
    try:
        lab.start()
        yield lab
    finally:
        lab.stop()


def copy_with_libs(binary, rootfs):
    """Copy an ELF binary and every shared library ldd lists into rootfs."""
    out = run(["ldd", binary], check=True).stdout.decode()
    files = [binary]
    for line in out.splitlines():
        parts = line.split()
        for p in parts:
            if p.startswith("/"):
                files.append(p)
    for f in files:
        real = os.path.realpath(f)
        for dest in {f, real}:
            d = os.path.join(rootfs, dest.lstrip("/"))
            os.makedirs(os.path.dirname(d), exist_ok=True)
            if not os.path.exists(d):
                shutil.copy2(real, d)


@pytest.fixture(scope="module")
def net_rootfs(tmp_path_factory, rootfs_template, lab):
    d = str(tmp_path_factory.mktemp("netroot") / "rootfs")
    shutil.copytree(rootfs_template, d, symlinks=True)
    copy_with_libs(shutil.which("curl"), d)
    shutil.copy(lab.ca, os.path.join(d, "ca.pem"))
    return d


class NetRun:
    """agentshim inside the lab namespace, with a policy naming the allowlist."""

    def __init__(self, lab, tmp, rootfs, allow, extra_policy=None):
        self.lab = lab
        self.tmp = tmp
        self.root = os.path.join(tmp, "root")
        self.audit = os.path.join(tmp, "audit")
        self.policy = os.path.join(tmp, "policy.json")
        pol = {"network": {"mode": "internal", "allow": allow, "dns": "refuse"}}
        for k, v in (extra_policy or {}).items():
            pol.setdefault(k, {}).update(v)
        with open(self.policy, "w") as f:
            json.dump(pol, f)
        self.bundle = Bundle(os.path.join(tmp, "bundle"), rootfs)

    def cli(self, *args, timeout=60):
        return run(self.lab.runtime(AGENTSHIM, "--root", self.root, "--audit-dir", self.audit, "--policy", self.policy,
                               *args), timeout=timeout)

    def sh(self, script, timeout=60):
        cid = "t" + uuid.uuid4().hex[:12]
        self.bundle.sh(script)
        try:
            r = self.cli("run", "--bundle", self.bundle.path, cid, timeout=timeout)
        finally:
            self.cli("delete", "--force", cid)
        return r

    def events(self, types=None):
        wait_records(self.audit)
        out = []
        for f in sorted(glob.glob(os.path.join(self.audit, "runs", "*", "events.ndjson"))):
            for line in open(f):
                e = json.loads(line)
                if types is None or e["type"] in types:
                    out.append(e)
        return out

    def last_run_dir(self):
        wait_records(self.audit)
        dirs = sorted(glob.glob(os.path.join(self.audit, "runs", "*")), key=os.path.getmtime)
        return dirs[-1]


@pytest.fixture
def netrun(lab, net_rootfs, tmp_path):
    n = [0]

    def make(allow, extra_policy=None):
        n[0] += 1
        d = tmp_path / f"run{n[0]}"
        d.mkdir()
        return NetRun(lab, str(d), net_rootfs, allow, extra_policy)
    return make


def out(r):
    return r.stdout.decode(errors="replace")


def test_only_loopback_no_route(netrun):
    n = netrun([])
    r = n.sh("cat /proc/net/dev; echo ROUTES; ip route; ip -6 route; echo END")
    assert r.returncode == 0, r.stderr
    text = out(r)
    ifaces = [l.split(":")[0].strip() for l in text.split("ROUTES")[0].splitlines() if ":" in l]
    assert ifaces == ["lo"], text
    routes = text.split("ROUTES")[1].split("END")[0]
    assert "default" not in routes and UPSTREAM.rsplit(".", 1)[0] not in routes, routes
    ev = n.events({"net.namespace"})
    assert len(ev) == 1
    names = [i["name"] for i in ev[0]["data"]["interfaces"]]
    assert names == ["lo"] and ev[0]["data"]["interfaces"][0]["up"] == "yes"
    assert ev[0]["data"]["proxy"] == "127.0.0.1:3128"


def test_direct_connection_bypassing_proxy_fails(netrun):
    n = netrun(["allowed.test"])
    r = n.sh(f"curl -sS --noproxy '*' --max-time 5 http://{UPSTREAM}/; echo rc=$?")
    assert "rc=0" not in out(r), out(r)
    assert "rc=7" in out(r), out(r) + r.stderr.decode()  # couldn't connect: no route, no interface


def test_proxy_environment_and_resolver(netrun):
    n = netrun([])
    r = n.sh("env | grep -i _proxy | sort; cat /etc/resolv.conf")
    text = out(r)
    for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        assert f"{k}=http://127.0.0.1:3128" in text, text
    assert "NO_PROXY=localhost,127.0.0.1" in text or "no_proxy=localhost,127.0.0.1" in text, text
    assert "agentshim" in text and "nameserver 127.0.0.53" in text, text


def test_allowed_https_through_connect(netrun):
    n = netrun(["allowed.test:443"])
    r = n.sh("curl -sS --max-time 10 --cacert /ca.pem https://allowed.test/ | head -c 200; echo; echo rc=$?")
    text = out(r)
    assert "s_server" in text or "Ciphers" in text or "<HTML>" in text.upper(), text + r.stderr.decode()
    ev = n.events({"net.connection"})
    assert ev, "no net.connection event"
    c = ev[-1]["data"]
    assert c["method"] == "CONNECT" and c["host"] == "allowed.test" and c["port"] == 443
    assert c["decision"] == "allowed" and c["rule"] == "allowed.test:443"
    assert c["resolved"].startswith(UPSTREAM)
    assert c["bytes_up"] > 0 and c["bytes_down"] > 0


def test_allowed_plain_http_is_forwarded_in_origin_form(netrun):
    n = netrun(["*.allowed.test:8080"])
    r = n.sh("curl -sS --max-time 10 -H 'Proxy-Connection: keep-alive' -d hello http://api.allowed.test:8080/x?y=1")
    assert r.returncode == 0, r.stderr
    got = json.loads(out(r))
    assert got["line"] == "POST /x?y=1 HTTP/1.1", got
    names = [k.lower() for k, _ in got["headers"]]
    assert "proxy-connection" not in names and "via" not in names, got
    assert dict((k.lower(), v) for k, v in got["headers"])["host"] == "api.allowed.test:8080"
    assert got["body"] == "hello"
    c = n.events({"net.connection"})[-1]["data"]
    assert c["method"] == "POST" and c["decision"] == "allowed" and c["rule"] == "*.allowed.test:8080"


def test_denied_host_gets_403_with_reason(netrun):
    n = netrun(["allowed.test:443"])
    r = n.sh("curl -sS --max-time 10 -w 'status=%{http_code}' http://other.test/; echo;"
             "curl -sS --max-time 10 --cacert /ca.pem https://other.test/ 2>&1; echo rc=$?")
    text = out(r)
    assert "status=403" in text and "agentshim" in text and "denied" in text, text
    assert "rc=0" not in text, text
    denied = [e["data"] for e in n.events({"net.connection"}) if e["data"]["decision"] == "denied"]
    assert {d["method"] for d in denied} == {"GET", "CONNECT"}, denied
    assert all(d["host"] == "other.test" and d["reason"] for d in denied)


def test_denied_connect_names_the_reason_where_clients_show_it(netrun):
    """Clients print a failed CONNECT's status line, not its body: the reason
    is in the reason phrase and in a Proxy-Status header (RFC 9209)."""
    n = netrun(["allowed.test:443"])
    r = n.sh("curl -sS -v --max-time 10 --cacert /ca.pem https://other.test/ 2>&1 | grep -i -e '^< HTTP' -e "
             "'^< Proxy-Status'")
    text = out(r)
    assert "< HTTP/1.1 403 Forbidden (agentshim: CONNECT to other.test:443 denied: no allowlist rule matches)" \
        in text, text
    assert "< Proxy-Status: agentshim; error=http_request_denied;" in text, text


def test_wrong_port_denied(netrun):
    n = netrun(["allowed.test:443"])
    r = n.sh("curl -sS --max-time 10 -o /dev/null -w 'status=%{http_code}' http://allowed.test:8080/")
    assert "status=403" in out(r), out(r)


def test_host_loopback_unreachable_unless_explicit_rule(netrun):
    # The lab's 127.0.0.1:8081 is the supervisor side's loopback service.
    n = netrun(["*.allowed.test:8081", "loop.allowed.test:8081"])
    r = n.sh("curl -sS --max-time 5 -o /dev/null -w 'viaproxy=%{http_code}' -x http://127.0.0.1:3128 "
             "http://loop.allowed.test:8081/; echo;"
             "curl -sS --max-time 5 -o /dev/null -w 'direct=%{http_code}' --noproxy '*' http://127.0.0.1:8081/; echo")
    text = out(r)
    assert "viaproxy=403" in text, text
    assert "direct=000" in text, text  # the container's own loopback has nothing there
    n2 = netrun(["127.0.0.1:8081"])
    r = n2.sh("curl -sS --max-time 5 --noproxy '' -x http://127.0.0.1:3128 http://127.0.0.1:8081/hello")
    assert r.returncode == 0, r.stderr
    assert json.loads(out(r))["where"] == "127.0.0.1"


def test_metadata_and_private_refused_even_when_wildcard_matches(netrun):
    n = netrun(["*.allowed.test"])
    r = n.sh("for h in metadata.allowed.test private.allowed.test; do "
             "curl -sS --max-time 5 -o /dev/null -w \"$h=%{http_code}\\n\" http://$h/; done;"
             f"curl -sS --max-time 5 -o /dev/null -w 'ip=%{{http_code}}\\n' http://{METADATA}/")
    text = out(r)
    assert "metadata.allowed.test=403" in text and "private.allowed.test=403" in text and "ip=403" in text, text
    denied = [e["data"] for e in n.events({"net.connection"}) if e["data"]["decision"] == "denied"]
    meta = [d for d in denied if d["host"] == "metadata.allowed.test"]
    assert meta and meta[0]["resolved"].startswith(METADATA), denied
    # With an explicit address rule the private upstream is reachable.
    n2 = netrun([f"{PRIVATE}:80"])
    r = n2.sh(f"curl -sS --max-time 5 http://{PRIVATE}/")
    assert r.returncode == 0 and json.loads(out(r))["where"] == PRIVATE, r.stderr


def test_dns_queries_refused_and_recorded(netrun):
    n = netrun(["allowed.test"])
    r = n.sh("nslookup exfil-c2VjcmV0.allowed.test; echo rc=$?")
    assert "rc=0" not in out(r), out(r)
    dns = [e["data"] for e in n.events({"net.dns"})]
    assert any("exfil-c2VjcmV0.allowed.test" in d.get("name", "") for d in dns), dns
    assert all(d.get("decision", d.get("answer", "")) in ("refused", "REFUSED") or d.get("rcode") in ("REFUSED", 5)
               for d in dns if "name" in d), dns


def test_record_carries_network_totals_and_verifies(netrun):
    n = netrun(["allowed.test:80"])
    n.sh("curl -sS --max-time 5 http://allowed.test/ >/dev/null; curl -sS --max-time 5 http://other.test/ >/dev/null")
    rd = n.last_run_dir()
    v = run(n.lab.runtime(AGENTSHIM, "--audit-dir", n.audit, "verify", rd))
    assert v.returncode == 0 and b"VERIFIED" in v.stdout, v.stdout + v.stderr
    env = json.load(open(os.path.join(rd, "attestation.intoto.json")))
    import base64
    stmt = json.loads(base64.b64decode(env["payload"]))
    net = stmt["predicate"]["network"]
    assert net["allowed"] == 1 and net["denied"] == 1, net
    assert net["bytes_down"] > 0
    show = run(n.lab.runtime(AGENTSHIM, "--audit-dir", n.audit, "runs", "show", rd))
    assert b"other.test" in show.stdout and b"allowed.test" in show.stdout, show.stdout


def test_containers_started_at_once_on_a_fresh_host_each_work_and_get_their_own_record(netrun, net_rootfs):
    """Six containers started at once on a host with no agentshim state yet
    (no signing key, no DNS stub file, no hash cache, no ledger), as
    `docker compose up` or a node taking several pods does: the shared files
    are made once and whole, every container reaches its upstream through
    the proxy, and every record verifies and holds its own container's
    traffic only. (CI found two first runs racing on the host key: one
    record had no attestation.)"""
    n = netrun(["allowed.test:80"])
    shutil.rmtree("/run/agentshim.dns", ignore_errors=True)
    k = 6
    cids = [f"at-once-{i}-" + uuid.uuid4().hex[:6] for i in range(k)]
    # The containers end together (each waits for the test's "go" once all
    # are up), so their records are finalized, and the host key made, at
    # the same moment.
    sync = os.path.join(n.tmp, "sync")
    os.mkdir(sync)

    def one(i):
        b = Bundle(os.path.join(n.tmp, f"b{i}"), net_rootfs)
        b.config["mounts"].append({"destination": "/sync", "type": "bind", "source": sync, "options": ["rbind"]})
        b.sh(f"cat /etc/resolv.conf; curl -sS --max-time 20 http://allowed.test/only-{i}; "
             f"touch /sync/up-{i}; n=0; while [ ! -e /sync/go ] && [ $n -lt 3000000 ]; do n=$((n+1)); done")
        return n.cli("run", "--bundle", b.path, cids[i], timeout=180)

    def release(ts):
        deadline = time.monotonic() + 120
        while (len([f for f in os.listdir(sync) if f.startswith("up-")]) + sum(not t.is_alive() for t in ts) < k
               and time.monotonic() < deadline):  # (a container that failed is not waited for)
            time.sleep(0.01)
        open(os.path.join(sync, "go"), "w").close()

    try:
        results = at_once(k, one, release)
        keyids = set()
        for i, (cid, r) in enumerate(zip(cids, results)):
            text = out(r)
            assert r.returncode == 0, (i, text, r.stderr)
            assert "nameserver 127.0.0.53" in text, (i, text)
            assert json.loads(text[text.index("{"):])["line"] == f"GET /only-{i} HTTP/1.1", (i, text)
            v = n.cli("verify", "--json", cid)
            assert v.returncode == 0, (i, v.stdout, v.stderr)
            rep = json.loads(v.stdout)
            assert rep["verified"] and rep["mismatches"] == [], rep
            keyids.add(rep["report"]["keyid"])
        # Each record holds its own container's programs and traffic only.
        by_cid = {}
        for rd in glob.glob(os.path.join(n.audit, "runs", "*")):
            sess = json.load(open(os.path.join(rd, "session.json")))
            by_cid[sess["container_id"]] = [json.loads(l) for l in open(os.path.join(rd, "events.ndjson"))]
        assert sorted(by_cid) == sorted(cids)
        for i in range(k):
            evs = by_cid[cids[i]]
            argvs = [" ".join(urllib.parse.unquote(a) for a in e["data"].get("argv", []))
                     for e in evs if e["type"] == "process.exec"]
            assert any(f"/only-{i}" in a for a in argvs), (i, argvs)
            assert not any(f"/only-{j}" in a for a in argvs for j in range(k) if j != i), (i, argvs)
            conns = [e["data"] for e in evs if e["type"] == "net.connection"]
            assert [(c["host"], c["decision"]) for c in conns] == [("allowed.test", "allowed")], (i, conns)
        assert len(keyids) == 1, keyids  # one host key, made once
        assert open("/run/agentshim.dns/resolv.conf").read().startswith("# agentshim")
        assert sorted(os.listdir("/run/agentshim.dns")) == ["resolv.conf"]
        assert sorted(os.listdir(os.path.join(n.audit, "keys"))) == ["signing.pem", "signing.pem.pub"]
        ledger = [json.loads(l) for l in open(os.path.join(n.audit, "ledger.ndjson"))]
        assert [r["index"] for r in ledger] == list(range(k)), ledger
        assert sorted(r["container_id"] for r in ledger) == sorted(cids)
    finally:
        for cid in cids:
            n.cli("delete", "--force", cid)


@pytest.fixture
def pod_netns():
    """A namespace a caller prepared, as Docker or a CNI plugin would."""
    name = "agp" + uuid.uuid4().hex[:10]
    sh("ip", "netns", "add", name)
    sh("ip", "netns", "exec", name, "ip", "addr", "add", "198.51.100.7/32", "dev", "lo")
    yield f"/var/run/netns/{name}"
    run(["ip", "netns", "delete", name])


def set_netns_path(bundle, path):
    for e in bundle.config["linux"]["namespaces"]:
        if e["type"] == "network":
            e["path"] = path
    bundle.save()


def test_passthrough_uses_the_callers_namespace(netrun, pod_netns):
    n = netrun([], extra_policy={"network": {"mode": "passthrough"}})
    set_netns_path(n.bundle, pod_netns)
    r = n.sh("ip addr")
    assert "198.51.100.7" in out(r), out(r) + r.stderr.decode()
    ev = n.events({"net.namespace"})
    assert ev and ev[-1]["data"]["mode"] == "joined"
    assert "proxy" not in ev[-1]["data"]


def test_internal_mode_replaces_the_callers_namespace(netrun, pod_netns):
    n = netrun([], extra_policy={"network": {"mode": "internal"}})
    set_netns_path(n.bundle, pod_netns)
    r = n.sh("ip addr; env | grep -c _proxy=")
    assert "198.51.100.7" not in out(r) and "127.0.0.1" in out(r), out(r) + r.stderr.decode()
    created = n.events({"run.created"})[-1]["data"]
    assert any(d["rule"] == "network.mode" and d["action"] == "replaced" for d in created["policy_decisions"]), created


def test_confined_mode_keeps_the_callers_namespace(netrun, pod_netns):
    """The default mode keeps a namespace the caller prepared (its addresses
    stay: a pod IP, a Docker bridge), with the proxy environment and the DNS
    stub, and records the confinement it installed."""
    n = netrun([], extra_policy={"network": {"mode": "confined"}})
    set_netns_path(n.bundle, pod_netns)
    r = n.sh("ip addr; env | grep -c _proxy=; cat /etc/resolv.conf")
    assert "198.51.100.7" in out(r) and "nameserver 127.0.0.53" in out(r), out(r) + r.stderr.decode()
    ev = n.events({"net.namespace"})[-1]["data"]
    assert ev["mode"] == "confined" and ev["namespace"] == "caller" and ev["proxy"] == "127.0.0.1:3128", ev
    assert "policy drop" in urllib.parse.unquote(ev["confinement"]["nftables"]), ev
    created = n.events({"run.created"})[-1]["data"]
    assert any(d["rule"] == "network.mode" and d["action"] == "kept" for d in created["policy_decisions"]), created


SERVER6 = r"""
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(16)
while True:
    c, _ = s.accept()
    c.sendall(b"v6-direct\n")
    c.close()
"""


@pytest.fixture
def cni_netns(lab, tmp_path):
    """A namespace as a CNI bridge plugin leaves it: eth0 with an IPv4 and an
    IPv6 address, default routes to the lab (the node), where the upstream
    servers are; a v6 server on the lab's end of the link."""
    name = "agc" + uuid.uuid4().hex[:10]
    lab_if = "v" + name[3:12]
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "link", "add", lab_if, "netns", lab.name, "type", "veth", "peer", "name", "eth0", "netns", name)
        for cmd in (["ip", "link", "set", "lo", "up"], ["ip", "link", "set", "eth0", "up"],
                    ["ip", "addr", "add", "10.88.0.2/24", "dev", "eth0"],
                    ["ip", "addr", "add", "fd88::2/64", "dev", "eth0", "nodad"],
                    ["ip", "route", "add", "default", "via", "10.88.0.1"],
                    ["ip", "-6", "route", "add", "default", "via", "fd88::1"]):
            sh("ip", "netns", "exec", name, *cmd)
        for cmd in (["ip", "link", "set", lab_if, "up"], ["ip", "addr", "add", "10.88.0.1/24", "dev", lab_if],
                    ["ip", "addr", "add", "fd88::1/64", "dev", lab_if, "nodad"]):
            sh(*lab.ns(*cmd))
        srv = tmp_path / "server6.py"
        srv.write_text(SERVER6)
        p = subprocess.Popen(lab.ns("/usr/bin/python3", str(srv), "fd88::1", "8082"), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            lab.wait_listening("[fd88::1]", 8082)
            yield f"/var/run/netns/{name}"
        finally:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    finally:
        run(["ip", "netns", "delete", name])
        run(lab.ns("ip", "link", "delete", lab_if))


def test_confined_network_inbound_yes_outbound_only_through_the_proxy(netrun, cni_netns, lab):
    """In a CNI-style namespace: the same direct connections (IPv4 to the
    upstream, IPv6 to the node) that pass through with mode passthrough are
    refused at once when confined; the allowlisted destination works through
    the proxy; an inbound connection from the node to the pod IP is answered;
    the container cannot change its interfaces (no CAP_NET_ADMIN)."""
    direct = (f"curl -sS --noproxy '*' --max-time 5 http://{UPSTREAM}/ >/dev/null; echo v4=$?; "
              "echo | nc -w 3 fd88::1 8082; echo v6=$?")
    p = netrun(["allowed.test:80"], extra_policy={"network": {"mode": "passthrough"}})
    set_netns_path(p.bundle, cni_netns)
    r = p.sh(direct)
    assert "v4=0" in out(r) and "v6-direct" in out(r), out(r) + r.stderr.decode()

    n = netrun(["allowed.test:80"], extra_policy={"network": {"mode": "confined"}})
    set_netns_path(n.bundle, cni_netns)
    t0 = time.monotonic()
    r = n.sh(direct + "; curl -sS --max-time 10 http://allowed.test/; echo proxied=$?; "
             "ip link set eth0 down; echo admin=$?; ip addr show eth0 | grep -c 'inet 10.88.0.2/'")
    text = out(r)
    assert "v4=7" in text and "v6-direct" not in text, text + r.stderr.decode()
    assert time.monotonic() - t0 < 8, "a refused direct connection should fail at once, not time out"
    assert '"where": "198.18.0.10"' in text and "proxied=0" in text, text
    assert "admin=0" not in text and text.strip().endswith("1"), text

    # Inbound: the node connects to the pod IP; the container answers.
    n.bundle.sh("echo from-pod | nc -l -p 8090")
    got = []

    def knock():
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not got:
            r = run(lab.ns("/bin/busybox", "nc", "-w", "2", "10.88.0.2", "8090"), timeout=10)
            if r.stdout.strip():
                got.append(r.stdout.decode().strip())
            time.sleep(0.2)

    import threading
    t = threading.Thread(target=knock)
    t.start()
    cid = "t" + uuid.uuid4().hex[:12]
    try:
        r = n.cli("run", "--bundle", n.bundle.path, cid, timeout=60)
    finally:
        n.cli("delete", "--force", cid)
        t.join()
    assert got == ["from-pod"], (got, r.stderr)


def test_host_network_is_refused(netrun):
    # No network namespace in the config is the host's network (--network host).
    n = netrun([])
    n.bundle.config["linux"]["namespaces"] = [e for e in n.bundle.config["linux"]["namespaces"]
                                             if e["type"] != "network"]
    n.bundle.save()
    r = n.sh("true")
    assert r.returncode != 0
    assert b"no network namespace" in r.stderr and b"host" in r.stderr, r.stderr
