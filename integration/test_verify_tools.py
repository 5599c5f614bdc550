"""Records that standard tools verify as shipped (docs/VERIFYING.md): fresh
records of both key types, signed with the global --signing-key/--key-type
flags, checked with the documented openssl, sigstore-js (@sigstore/verify,
pinned in integration/verify-js/package-lock.json) and Python recipes, run
exactly as the document gives them, and with `agentshim verify`; every
statement validates against configs/attestation/predicate-v2.schema.json; a
one-byte change of each record file fails every recipe that reads it."""
import base64
import hashlib
import json
import os
import re
import shutil

import jsonschema
import pytest

import formats_verifier
from conftest import REPO, run
from test_record import WORKLOAD, run_dir_of, with_workspace

DOC = os.path.join(REPO, "docs", "VERIFYING.md")
SCHEMA = os.path.join(REPO, "configs", "attestation", "predicate-v2.schema.json")
VERIFY_JS = os.path.join(REPO, "integration", "verify-js")
V2 = "https://agentshim.dev/attestation/run/v2"
RECORD_FILES = ("events.ndjson", "changes.ndjson", "session.json", "attestation.intoto.json",
                "attestation.sigstore.json")
# The carrier each recipe reads (the other one is checked by agentshim verify
# and the ledger, docs/VERIFYING.md).
READS = {
    "agentshim": set(RECORD_FILES),
    "openssl": {"events.ndjson", "changes.ndjson", "session.json", "attestation.intoto.json"},
    "python": {"events.ndjson", "changes.ndjson", "session.json", "attestation.intoto.json"},
    "sigstore-js": {"events.ndjson", "changes.ndjson", "session.json", "attestation.sigstore.json"},
}


def recipe(name):
    """The fenced block after `<!-- recipe: NAME -->` in docs/VERIFYING.md."""
    text = open(DOC).read()
    m = re.search(r"<!-- recipe: " + re.escape(name) + r" -->\n```\w+\n(.*?)\n```", text, re.S)
    assert m, f"no {name} recipe in {DOC}"
    return m.group(1)


@pytest.fixture(scope="session")
def sigstore_js():
    """`npm ci` of the pinned @sigstore/verify and @sigstore/bundle, once."""
    if not (shutil.which("node") and shutil.which("npm")):
        pytest.fail("node and npm are required (scripts/deps.sh installs them)")
    if not os.path.isdir(os.path.join(VERIFY_JS, "node_modules", "@sigstore", "verify")):
        # The host's TLS may go through an intercepting proxy whose CA is in
        # the system bundle: npm is told to trust that bundle.
        env = dict(os.environ, npm_config_cafile="/etc/ssl/certs/ca-certificates.crt")
        r = run(["npm", "ci", "--no-audit", "--no-fund"], cwd=VERIFY_JS, timeout=300, env=env)
        assert r.returncode == 0, r.stdout + r.stderr
    return VERIFY_JS


def run_recipe(name, rd, key):
    env = dict(os.environ, RUN=rd, KEY=key)
    if name == "openssl":
        return run(["bash", "-c", recipe("openssl")], env=env, cwd=REPO)
    if name == "python":
        return run(["/usr/bin/python3", "-c", recipe("python")], env=env, cwd=REPO)
    if name == "sigstore-js":
        # The documented command (its `npm ci` done once by the fixture).
        cmd = [l for l in recipe("sigstore-js").splitlines() if l.startswith("node ")]
        assert cmd == ['node integration/verify-js/verify.js "$RUN" "$KEY"'], cmd
        return run(["bash", "-c", cmd[0]], env=env, cwd=REPO)
    raise AssertionError(name)


def ok(name, r):
    if name == "sigstore-js":
        return r.returncode == 0 and r.stdout == b"VERIFIED\n"
    if name == "python":
        return r.returncode == 0 and r.stdout == b"VERIFIED\n"
    return r.returncode == 0


@pytest.fixture(params=["ed25519", "ecdsa-p256"])
def record(request, shim, bundle, cid, tmp_path):
    """A fresh run signed with `--signing-key FILE --key-type TYPE`."""
    kt = request.param
    keys = tmp_path / "team-keys"
    shim("keygen", "--type", kt, "--out", str(keys), check=True)
    shim.extra += ["--signing-key", str(keys / "signing.pem"), "--key-type", kt]
    ws = tmp_path / "workspace"
    ws.mkdir()
    (ws / "modify.txt").write_text("modify\n")
    (ws / "delete.txt").write_text("delete\n")
    with_workspace(bundle, str(ws), WORKLOAD)
    r = shim("run", "--bundle", bundle.path, cid)
    assert r.returncode == 0, r.stderr
    rd = run_dir_of(shim, cid)
    assert shim("verify", "--public-key", str(keys / "signing.pem.pub"), rd).stdout == b"VERIFIED\n"
    return kt, rd, str(keys / "signing.pem.pub")


def statement_of(rd):
    env = json.load(open(os.path.join(rd, "attestation.intoto.json")))
    return json.loads(base64.b64decode(env["payload"]))


def test_fresh_record_verifies_with_every_recipe(record, sigstore_js, shim):
    kt, rd, key = record
    st = statement_of(rd)
    # The shipped schema.
    jsonschema.validate(st, json.load(open(SCHEMA)))
    assert st["predicateType"] == V2
    assert st["predicate"]["signer"]["algorithm"] == {"ed25519": "ed25519", "ecdsa-p256": "ecdsa-p256-sha256"}[kt]
    # The subjects' digests are sha256sum of the named files.
    sums = run(["sha256sum", "events.ndjson", "changes.ndjson", "session.json"], cwd=rd, check=True).stdout.decode()
    want = {line.split()[1]: line.split()[0] for line in sums.splitlines()}
    assert {s["name"]: s["digest"]["sha256"] for s in st["subject"]} == want
    # The bundle: the envelope, the key hint; both bound by the ledger.
    b = json.load(open(os.path.join(rd, "attestation.sigstore.json")))
    env = json.load(open(os.path.join(rd, "attestation.intoto.json")))
    assert b["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    assert b["dsseEnvelope"] == env
    assert b["verificationMaterial"]["publicKey"]["hint"] == formats_verifier.keyid(open(key, "rb").read())
    audit = shim.extra[1]
    problems, _, _ = formats_verifier.verify(rd, open(key, "rb").read(), os.path.join(audit, "ledger.ndjson"))
    assert problems == []
    for name in ("openssl", "python", "sigstore-js"):
        r = run_recipe(name, rd, key)
        assert ok(name, r), (name, r.stdout, r.stderr)
    # The openssl recipe really ran the signature check of this key type.
    r = run_recipe("openssl", rd, key)
    assert (b"Signature Verified Successfully" if kt == "ed25519" else b"Verified OK") in r.stdout, r.stdout
    # Another key fails every recipe.
    other = os.path.join(os.path.dirname(key), "..", "other")
    shim("keygen", "--type", kt, "--out", other, check=True)
    for name in ("openssl", "python", "sigstore-js"):
        assert not ok(name, run_recipe(name, rd, os.path.join(other, "signing.pem.pub"))), name
    assert shim("verify", "--public-key", os.path.join(other, "signing.pem.pub"), rd).returncode == 1


def test_one_byte_change_of_each_file_fails_each_recipe(record, sigstore_js, shim):
    kt, rd, key = record
    missed = []
    for f in RECORD_FILES:
        path = os.path.join(rd, f)
        orig = open(path, "rb").read()
        assert orig, f
        # Three positions: start, middle (inside the payload or a hash), near the end.
        for at in (1, len(orig) // 2, len(orig) - 3):
            b = bytearray(orig)
            b[at] ^= 0x01
            open(path, "wb").write(bytes(b))
            try:
                for name in ("agentshim", "openssl", "python", "sigstore-js"):
                    if f not in READS[name]:
                        continue
                    if name == "agentshim":
                        r = shim("verify", "--public-key", key, rd)
                        good = r.returncode == 0
                    else:
                        good = ok(name, run_recipe(name, rd, key))
                    if good:
                        missed.append(f"{name}: {f} byte {at}")
            finally:
                open(path, "wb").write(orig)
    assert missed == [], missed
    for name in ("openssl", "python", "sigstore-js"):
        assert ok(name, run_recipe(name, rd, key)), name


def test_export_formats(record, sigstore_js, shim, tmp_path):
    kt, rd, key = record
    env_bytes = open(os.path.join(rd, "attestation.intoto.json"), "rb").read()
    assert shim("export", rd, "--format", "dsse", check=True).stdout == env_bytes
    line = shim("export", rd, "--format", "intoto-jsonl", check=True).stdout
    assert line.endswith(b"\n") and line.count(b"\n") == 1 and json.loads(line) == json.loads(env_bytes)
    assert shim("export", rd, check=True).stdout == open(os.path.join(rd, "attestation.sigstore.json"), "rb").read()
    # A record made before the bundle existed (removed here): export makes
    # the same bundle from the envelope, and sigstore-js verifies it.
    own = open(os.path.join(rd, "attestation.sigstore.json"), "rb").read()
    os.unlink(os.path.join(rd, "attestation.sigstore.json"))
    made = shim("export", rd, "--format", "sigstore-bundle", check=True).stdout
    assert json.loads(made) == json.loads(own)
    shim("export", rd, "-o", str(tmp_path / "b.json"), check=True)
    assert json.loads(open(tmp_path / "b.json", "rb").read()) == json.loads(own)
    open(os.path.join(rd, "attestation.sigstore.json"), "wb").write(made)
    assert ok("sigstore-js", run_recipe("sigstore-js", rd, key))
    assert shim("export", rd, "--format", "pdf").returncode != 0
    assert shim("export", "no-such-run").returncode == 2


def test_key_type_mismatch_is_an_error(shim, bundle, cid, tmp_path):
    keys = tmp_path / "k"
    shim("keygen", "--type", "ecdsa-p256", "--out", str(keys), check=True)
    shim.ids.add(cid)
    r = shim("--signing-key", str(keys / "signing.pem"), "--key-type", "ed25519", "run", "--bundle",
             bundle.args("/bin/true").path, cid)
    assert r.returncode != 0
    assert b"ecdsa-p256" in r.stderr and str(keys / "signing.pem").encode() in r.stderr, r.stderr
    # The same through the policy: audit.key_type is checked against audit.signing_key.
    pol = tmp_path / "policy.json"
    pol.write_text(json.dumps({"audit": {"signing_key": str(keys / "signing.pem"), "key_type": "ed25519"}}))
    r = shim("--policy", str(pol), "run", "--bundle", bundle.path, cid + "p")
    shim.ids.add(cid + "p")
    assert r.returncode != 0 and b"ecdsa-p256" in r.stderr, r.stderr
    assert shim("--key-type", "rsa", "run", "--bundle", bundle.path, cid + "q").returncode != 0


TSA_CNF = """
[ tsa ]
default_tsa = tsa1
[ tsa1 ]
dir = {dir}
serial = $dir/serial
signer_cert = $dir/tsa.crt
certs = $dir/tsa.crt
signer_key = $dir/tsa.key
signer_digest = sha256
default_policy = 1.3.6.1.4.1.99999.1
digests = sha256
accuracy = secs:1
ordering = no
tsa_name = yes
ess_cert_id_chain = no
ess_cert_id_alg = sha256
"""


@pytest.fixture
def tsa(tmp_path):
    """A local RFC 3161 time-stamping authority: `openssl ts -reply` behind
    an HTTP server on loopback; yields (url, CA file, TSA cert, requests)."""
    import http.server
    import threading
    d = tmp_path / "tsa"
    d.mkdir()
    sh = lambda *a: run(list(a), cwd=str(d), check=True)  # noqa: E731
    sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
       "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=agentshim test TSA root", "-days", "2",
       "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    sh("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
       "-keyout", "tsa.key", "-out", "tsa.csr", "-subj", "/CN=agentshim test TSA")
    (d / "ext.cnf").write_text("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                               "extendedKeyUsage=critical,timeStamping\n")
    sh("openssl", "x509", "-req", "-in", "tsa.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
       "-out", "tsa.crt", "-days", "2", "-extfile", "ext.cnf")
    (d / "serial").write_text("01\n")
    (d / "tsa.cnf").write_text(TSA_CNF.format(dir=d))
    requests = []
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with lock:
                requests.append((self.path, self.headers.get("Content-Type"), body))
                (d / "q.tsq").write_bytes(body)
                r = run(["openssl", "ts", "-reply", "-config", str(d / "tsa.cnf"), "-queryfile", str(d / "q.tsq"),
                         "-out", str(d / "r.tsr")], cwd=str(d))
                reply = (d / "r.tsr").read_bytes() if r.returncode == 0 else b""
            self.send_response(200 if reply else 500)
            self.send_header("Content-Type", "application/timestamp-reply")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/tsa", str(d / "ca.crt"), str(d / "tsa.crt"), requests
    srv.shutdown()
    srv.server_close()


def test_rfc3161_timestamp_from_the_policy_tsa(shim, bundle_factory, tmp_path, tsa, sigstore_js):
    url, ca, tsa_crt, requests = tsa
    pol = tmp_path / "policy.json"
    pol.write_text(json.dumps({"audit": {"tsa_url": url}}))
    shim.extra += ["--policy", str(pol)]
    cid = "tsa1"
    shim.ids.add(cid)
    r = shim("run", "--bundle", bundle_factory().args("/bin/true").path, cid)
    assert r.returncode == 0, r.stderr
    rd = run_dir_of(shim, cid)
    assert shim("verify", rd).stdout == b"VERIFIED\n"
    assert len(requests) == 1 and requests[0][:2] == ("/tsa", "application/timestamp-query")
    b = json.load(open(os.path.join(rd, "attestation.sigstore.json")))
    stamps = b["verificationMaterial"]["timestampVerificationData"]["rfc3161Timestamps"]
    assert len(stamps) == 1
    resp = tmp_path / "resp.tsr"
    resp.write_bytes(base64.b64decode(stamps[0]["signedTimestamp"]))
    sig = tmp_path / "sig.bin"
    sig.write_bytes(base64.b64decode(b["dsseEnvelope"]["signatures"][0]["sig"]))
    # The documented check: the TSA signed SHA-256(signature) at that time.
    v = run(["openssl", "ts", "-verify", "-in", str(resp), "-data", str(sig), "-CAfile", ca, "-untrusted", tsa_crt])
    assert v.returncode == 0 and b"Verification: OK" in v.stdout, v.stdout + v.stderr
    # ...and not any other signature.
    sig.write_bytes(b"another signature")
    assert run(["openssl", "ts", "-verify", "-in", str(resp), "-data", str(sig), "-CAfile", ca,
                "-untrusted", tsa_crt]).returncode != 0
    # sigstore-js with the TSA as trust material and tsaThreshold 1.
    chain = tmp_path / "tsa-chain.pem"
    chain.write_bytes(open(tsa_crt, "rb").read() + open(ca, "rb").read())
    key = os.path.join(shim.extra[1], "keys", "signing.pem.pub")
    js = run(["node", os.path.join(VERIFY_JS, "verify.js"), rd, key, str(chain)])
    assert js.returncode == 0 and js.stdout == b"VERIFIED\n", js.stdout + js.stderr
    # ...which a bundle without a time-stamp does not pass.
    saved = open(os.path.join(rd, "attestation.sigstore.json"), "rb").read()
    nots = json.loads(saved)
    nots["verificationMaterial"]["timestampVerificationData"]["rfc3161Timestamps"] = []
    open(os.path.join(rd, "attestation.sigstore.json"), "w").write(json.dumps(nots))
    js = run(["node", os.path.join(VERIFY_JS, "verify.js"), rd, key, str(chain)])
    assert js.returncode == 1 and b"tsa timestamps" in js.stdout, js.stdout
    open(os.path.join(rd, "attestation.sigstore.json"), "wb").write(saved)
    # A time-stamp over something else in the bundle: besides the ledger's
    # bundle_sha256, verify names the time-stamp itself.
    other = run(["openssl", "ts", "-query", "-data", "/etc/hostname", "-sha256", "-cert"], check=True).stdout
    (tmp_path / "o.tsq").write_bytes(other)
    run(["openssl", "ts", "-reply", "-config", os.path.join(os.path.dirname(ca), "tsa.cnf"), "-queryfile",
         str(tmp_path / "o.tsq"), "-out", str(tmp_path / "o.tsr")], check=True)
    stamps[0]["signedTimestamp"] = base64.b64encode((tmp_path / "o.tsr").read_bytes()).decode()
    open(os.path.join(rd, "attestation.sigstore.json"), "w").write(json.dumps(b, indent=2) + "\n")
    r = shim("verify", rd)
    assert r.returncode == 1 and b"imprint" in r.stdout, r.stdout
    # A TSA that is down: the run and its record are unaffected, the bundle has no time-stamp.
    pol.write_text(json.dumps({"audit": {"tsa_url": "http://127.0.0.1:9/tsa"}}))
    shim.ids.add("tsa2")
    r = shim("run", "--bundle", bundle_factory().args("/bin/true").path, "tsa2")
    assert r.returncode == 0, r.stderr
    rd2 = run_dir_of(shim, "tsa2")
    assert shim("verify", rd2).stdout == b"VERIFIED\n"
    b2 = json.load(open(os.path.join(rd2, "attestation.sigstore.json")))
    assert b2["verificationMaterial"]["timestampVerificationData"]["rfc3161Timestamps"] == []
