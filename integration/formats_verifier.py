"""An independent verifier for agentshim run records, written from
docs/FORMATS.md alone: it shares no code with agentshim (Python's hashlib,
json, the `cryptography` package and, for v2 statements, `jsonschema` with
configs/attestation/predicate-v2.schema.json).

verify(run_dir, public_key_pem, ledger_path) returns (problems, events,
predicate); problems empty = good. Reads v1 and v2 records.
"""
import base64
import hashlib
import json
import os

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519


def canonical(v):
    """Canonical JSON as FORMATS.md defines it."""
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        raise ValueError("float in canonical JSON")
    if isinstance(v, str):
        out = ['"']
        for ch in v:
            o = ord(ch)
            if ch == '"':
                out.append('\\"')
            elif ch == "\\":
                out.append("\\\\")
            elif ch == "\b":
                out.append("\\b")
            elif ch == "\f":
                out.append("\\f")
            elif ch == "\n":
                out.append("\\n")
            elif ch == "\r":
                out.append("\\r")
            elif ch == "\t":
                out.append("\\t")
            elif o < 0x20:
                out.append("\\u%04x" % o)
            else:
                out.append(ch)
        out.append('"')
        return "".join(out)
    if isinstance(v, list):
        return "[" + ",".join(canonical(x) for x in v) + "]"
    if isinstance(v, dict):
        keys = sorted(v.keys(), key=lambda k: k.encode("utf-8"))
        return "{" + ",".join(canonical(k) + ":" + canonical(v[k]) for k in keys) + "}"
    raise ValueError(f"unsupported {type(v)}")


def sha256(b):
    return hashlib.sha256(b).digest()


def mth(leaves):
    """RFC 6962 Merkle Tree Hash over leaf hashes."""
    n = len(leaves)
    if n == 0:
        return sha256(b"")
    if n == 1:
        return leaves[0]
    k = 1
    while k * 2 < n:
        k *= 2
    return sha256(b"\x01" + mth(leaves[:k]) + mth(leaves[k:]))


def check_events(path):
    problems, leaves = [], []
    chain = bytes(32)
    data = open(path, "rb").read()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    else:
        problems.append("events: last line has no newline")
    events = []
    for i, raw in enumerate(lines):
        try:
            ev = json.loads(raw)
        except ValueError:
            problems.append(f"events line {i + 1}: not JSON")
            break
        if canonical(ev).encode() != raw:
            problems.append(f"events line {i + 1}: not canonical")
            break
        if ev.get("seq") != i:
            problems.append(f"events line {i + 1}: seq {ev.get('seq')} != {i}")
            break
        body = canonical({"data": ev["data"], "seq": ev["seq"], "time": ev["time"], "type": ev["type"]})
        leaf = sha256(b"\x00" + b"agentshim-event-v1\n" + body.encode())
        if leaf.hex() != ev["leaf"]:
            problems.append(f"events line {i + 1}: leaf mismatch")
            break
        chain = sha256(b"agentshim-chain-v1\n" + chain + leaf)
        if chain.hex() != ev["chain"]:
            problems.append(f"events line {i + 1}: chain mismatch")
            break
        leaves.append(leaf)
        events.append(ev)
    problems += check_exec_sessions(events)
    return problems, events, mth(leaves).hex(), chain.hex()


def check_run_events(events):
    """FORMATS.md "Mandatory events of a complete run", each rule apart."""
    problems = []
    types = [e["type"] for e in events]
    idx = lambda t: [i for i, x in enumerate(types) if x == t]  # noqa: E731
    phase = lambda p: [i for i, e in enumerate(events) if e["type"] == "fs.root" and e["data"].get("phase") == p]  # noqa: E731
    if not types or types[0] != "run.created":
        problems.append("complete run: run.created is not the first event")
    if len(idx("run.finalized")) != 1 or types[-1] != "run.finalized":
        problems.append("complete run: run.finalized is not the last event, once")
    exits, started = idx("run.exit"), idx("run.started")
    if len(exits) != 1:
        problems.append(f"complete run: run.exit appears {len(exits)} times")
    if len(started) > 1:
        problems.append(f"complete run: run.started appears {len(started)} times")
    execs = [i for i, t in enumerate(types) if t in ("process.exec", "process.exec_failed", "caller.exec")]
    if execs and not started:
        problems.append(f"complete run: seq {execs[0]} ({types[execs[0]]}) in a run without run.started")
    elif execs and execs[0] < started[0]:
        problems.append(f"complete run: seq {execs[0]} ({types[execs[0]]}) comes before run.started")
    before, after, changes = phase("before"), phase("after"), idx("fs.changes")
    if len(before) > 1 or len(after) > 1:
        problems.append("complete run: fs.root: more than one before or after")
    if before and after and after[0] < before[0]:
        problems.append("complete run: fs.root after comes before fs.root before")
    if changes and (not after or changes[0] < after[0]):
        problems.append("complete run: fs.changes comes before fs.root after")
    return problems


def check_exec_sessions(events):
    """FORMATS.md: `session` (1-64 lowercase hex digits) in caller.exec and in
    the process.exec events of that exec session (a session whose process
    failed to start has process.exec events but no caller.exec)."""
    problems = []
    for ev in events:
        if ev["type"] == "process.exec_failed" and ev["data"].get("errno") not in ("ENOENT", "ENOTDIR", "ETXTBSY",
                                                                                   "unknown"):
            problems.append(f"event seq {ev['seq']}: process.exec_failed errno {ev['data'].get('errno')!r}")
        if ev["type"] == "process.exec":
            d = ev["data"]
            if d.get("observed") not in ("kernel", "after", "seccomp"):
                problems.append(f"event seq {ev['seq']}: process.exec observed {d.get('observed')!r}")
            if d.get("observed") in ("kernel", "after"):
                if d.get("argv_source") not in ("bpf", "image", "caller"):
                    problems.append(f"event seq {ev['seq']}: process.exec argv_source {d.get('argv_source')!r}")
                if "argv_fallback" in d and (not isinstance(d["argv_fallback"], str) or
                                             d.get("argv_source") == "bpf"):
                    problems.append(f"event seq {ev['seq']}: process.exec argv_fallback {d['argv_fallback']!r}")
                files = d.get("files")
                if not isinstance(files, list) or not files or not all(
                        isinstance(f, dict) and isinstance(f.get("path"), str) and
                        (("sha256" in f and len(f["sha256"]) == 64 and isinstance(f.get("size"), int)) or
                         isinstance(f.get("error"), str)) for f in files):
                    problems.append(f"event seq {ev['seq']}: process.exec files {files!r}")
                elif d.get("resolved") != files[0]["path"] or d.get("sha256") != files[0].get("sha256"):
                    problems.append(f"event seq {ev['seq']}: process.exec resolved/sha256 are not files[0]'s")
        if ev["type"] == "exec.watch":
            d = ev["data"]
            if d.get("mechanism") == "fanotify":
                if not isinstance(d.get("mounts"), int) or not isinstance(d.get("unmarked"), list):
                    problems.append(f"event seq {ev['seq']}: exec.watch {d!r}")
                # argv: the BPF program's copy, or cmdline with why not.
                if not (d.get("argv") == "bpf" and "argv_error" not in d or
                        d.get("argv") == "cmdline" and isinstance(d.get("argv_error"), str)):
                    problems.append(f"event seq {ev['seq']}: exec.watch argv {d!r}")
                # How the program was obtained; a private copy says why.
                if d.get("argv") == "bpf" and not (
                        d.get("argv_program") in ("loaded", "pinned") and "argv_pin_error" not in d or
                        d.get("argv_program") == "private" and isinstance(d.get("argv_pin_error"), str)):
                    problems.append(f"event seq {ev['seq']}: exec.watch argv_program {d!r}")
            elif (d.get("mechanism") != "seccomp" or not isinstance(d.get("error"), str) or
                  d.get("argv") != "caller"):
                problems.append(f"event seq {ev['seq']}: exec.watch {d!r}")
        if ev["type"] not in ("caller.exec", "process.exec", "process.exec_failed") or "session" not in ev["data"]:
            continue
        s = ev["data"]["session"]
        if not (isinstance(s, str) and 1 <= len(s) <= 64 and all(c in "0123456789abcdef" for c in s)):
            problems.append(f"event seq {ev['seq']}: session {s!r} is not 1-64 hex digits")
    return problems


def check_coverage(events, changes):
    """What FORMATS.md "What the record does not cover" says a verifier
    reads: per tree of the after fs.root, `writes` and `not_hashed`; the
    unverified lines of changes.ndjson; fs.changes counting every kind."""
    problems = []
    after = [e["data"] for e in events if e["type"] == "fs.root" and e["data"]["phase"] == "after"]
    counts = {}
    for c in changes:
        kind = c.get("change")
        if kind not in ("added", "modified", "removed", "unverified"):
            problems.append(f"changes.ndjson {c.get('path')}: unknown change {kind!r}")
            continue
        counts[kind] = counts.get(kind, 0) + 1
        if kind == "unverified":
            if (c.get("old") is None or c.get("old") != c.get("new") or "old_sha256" in c or "new_sha256" in c
                    or "content not hashed: larger than" not in c.get("reason", "")):
                problems.append(f"changes.ndjson {c.get('path')}: malformed unverified line {c}")
    fc = [e["data"] for e in events if e["type"] == "fs.changes"]
    for f in fc:
        for kind in ("added", "modified", "removed", "unverified"):
            if kind in f and f[kind] != counts.get(kind, 0):
                problems.append(f"fs.changes {kind} {f[kind]} but changes.ndjson has {counts.get(kind, 0)}")
    for r in (e["data"] for e in events if e["type"] == "fs.root"):
        for t in r["trees"]:
            if ("layers" in t) != (t.get("assembled") in ("stack", "merge")):
                problems.append(f"tree {t['name']}: layers {'layers' in t} but assembled {t.get('assembled')}")
    for a in after:
        for t in a["trees"]:
            if t.get("walk") in ("failed", "skipped"):
                continue
            un = sum(1 for c in changes if c.get("change") == "unverified" and c.get("tree") == t["name"])
            if "not_hashed" in t and un > t["not_hashed"]:
                problems.append(f"tree {t['name']}: {un} unverified lines but not_hashed {t['not_hashed']}")
            w = t.get("writes")
            if w is None:
                if "not_hashed" in t:  # records from before write tracking have neither
                    problems.append(f"tree {t['name']}: no writes account in the after root")
                continue
            if w.get("watch") not in ("mount", "mount+entries", "none") or not isinstance(w.get("reread"), int):
                problems.append(f"tree {t['name']}: malformed writes {w}")
            if w.get("watch") == "none" and not w.get("reread_all"):
                problems.append(f"tree {t['name']}: not watched, yet not read in full")
            if w.get("events_lost") and not w.get("reread_all"):
                problems.append(f"tree {t['name']}: write events lost, yet not read in full")
    # Entry events: fs.watch says where they come from; an LSM one says so.
    for w in (e["data"] for e in events if e["type"] == "fs.watch" and "marked" in e["data"]):
        if "entries" in w and not (w["entries"] == "lsm" and "entries_error" not in w or
                                   w["entries"] == "fanotify" and isinstance(w.get("entries_error"), str) and
                                   isinstance(w.get("entries_unwatched"), list) and
                                   all(isinstance(x, str) for x in w["entries_unwatched"])):
            problems.append(f"fs.watch: malformed entries {w}")
    lsm = any(e["type"] == "fs.watch" and e["data"].get("entries") == "lsm" for e in events)
    for e in events:
        if e["type"] in ("file.created", "file.removed", "file.moved") and "via" in e["data"]:
            if e["data"]["via"] != "lsm" or not lsm:
                problems.append(f"seq {e['seq']}: {e['type']} via {e['data']['via']!r} without fs.watch entries lsm")
    return problems


def verify_signature(pub_pem, pae, sig):
    key = serialization.load_pem_public_key(pub_pem)
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(sig, pae)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(sig, pae, ec.ECDSA(hashes.SHA256()))
        else:
            return False
    except InvalidSignature:
        return False
    return True


def keyid(pub_pem):
    key = serialization.load_pem_public_key(pub_pem)
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def pae(payload_type, payload):
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


PREDICATE_V1 = "https://agentshim.dev/attestation/run/v1"
PREDICATE_V2 = "https://agentshim.dev/attestation/run/v2"
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"


def file_sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def verify(run_dir, public_key_pem, ledger_path=None):
    """Every check FORMATS.md's "What agentshim verify checks" lists, for
    v1 and v2 records. Returns (problems, events, predicate)."""
    problems, events, root, head = check_events(f"{run_dir}/events.ndjson")
    if not events or events[-1]["type"] != "run.finalized":
        problems.append("events: the log does not end with run.finalized")
    session_bytes = open(f"{run_dir}/session.json", "rb").read()
    session = json.loads(session_bytes)
    if canonical(session).encode() + b"\n" != session_bytes:
        problems.append("session.json is not canonical JSON plus a newline")
    if session["merkle_root"] != root:
        problems.append("session merkle_root differs from recomputed root")
    if session["chain_head"] != head:
        problems.append("session chain_head differs")
    if session["event_count"] != len(events):
        problems.append("session event_count differs")
    if session["complete"] is not True:
        problems.append("session: the run is not complete")
    else:
        problems += check_run_events(events)
    env_bytes = open(f"{run_dir}/attestation.intoto.json", "rb").read()
    env = json.loads(env_bytes)
    payload = base64.b64decode(env["payload"], validate=True)
    if env["payloadType"] != "application/vnd.in-toto+json":
        problems.append("payloadType")
    kid = keyid(public_key_pem)
    sigs = [s for s in env["signatures"] if s["keyid"] == kid]
    # PAE over the decoded payload bytes.
    if not any(verify_signature(public_key_pem, pae(env["payloadType"], payload), base64.b64decode(s["sig"]))
               for s in sigs):
        problems.append("DSSE signature does not verify with the given public key")
    st = json.loads(payload)
    if canonical(st).encode() != payload:
        problems.append("payload is not canonical JSON")
    if st["_type"] != "https://in-toto.io/Statement/v1":
        problems.append("statement _type")
    pred = st["predicate"]
    v1 = st["predicateType"] == PREDICATE_V1
    if not v1 and st["predicateType"] != PREDICATE_V2:
        problems.append("unknown predicateType " + st["predicateType"])
    if not v1:
        # The published schema (docs/PREDICATE.md).
        import jsonschema
        schema = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "attestation",
                              "predicate-v2.schema.json")
        try:
            jsonschema.validate(st, json.load(open(schema)))
        except jsonschema.ValidationError as e:
            problems.append(f"statement does not validate against {schema}: {e.message}")
    if pred["signer"]["keyid"] != kid or keyid(pred["signer"]["public_key"].encode()) != kid:
        problems.append("signer: the predicate names another key")
    if pred["run_id"] != session["run_id"]:
        problems.append("run_id: session and predicate differ")
    if pred["complete"] != session["complete"]:
        problems.append("complete: session and predicate differ")
    el = pred["event_log"]
    if (el["merkle_root"], el["chain_head"], el["event_count"]) != (root, head, len(events)):
        problems.append("predicate event_log differs from the recomputed log")
    trees = {t["name"]: t for t in pred["filesystem"]["trees"]}
    for ev in events:
        if ev["type"] == "fs.root":
            for t in ev["data"]["trees"]:
                if t["name"] in trees and trees[t["name"]].get(ev["data"]["phase"]) != t["root"]:
                    problems.append(f"fs.root {t['name']} ({ev['data']['phase']}) differs from the predicate")
    changes = open(f"{run_dir}/changes.ndjson", "rb").read()
    problems += check_coverage(events, [json.loads(line) for line in changes.splitlines()])
    for line in changes.splitlines():
        c = json.loads(line)
        for side in ("old_sha256", "new_sha256"):
            if side in c and not (isinstance(c[side], str) and len(c[side]) == 64 and
                                  all(ch in "0123456789abcdef" for ch in c[side])):
                problems.append(f"changes.ndjson {c.get('path')}: {side} {c[side]!r}")
        if (c.get("change") == "added" and "old_sha256" in c) or (c.get("change") == "removed" and "new_sha256" in c):
            problems.append(f"changes.ndjson {c.get('path')}: a content hash on the side that does not exist")
    if v1:
        run_subject = [s for s in st["subject"] if s["name"] == "run:" + pred["run_id"]]
        if not run_subject or run_subject[0]["digest"]["sha256"] != root:
            problems.append("run subject digest is not the event log's Merkle root")
        for s in st["subject"]:
            if s["name"].startswith("fs:"):
                t = trees.get(s["name"][3:])
                if t is None or t.get("after") != s["digest"]["sha256"]:
                    problems.append(f"subject {s['name']} is not the tree's post-run root")
        if pred["session_sha256"] != hashlib.sha256(session_bytes).hexdigest():
            problems.append("session.json hash differs from the signed one")
        if pred["filesystem"]["changes_sha256"] != hashlib.sha256(changes).hexdigest():
            problems.append("changes.ndjson hash differs from the signed one")
    else:
        names = [s["name"] for s in st["subject"]]
        for need in ("events.ndjson", "changes.ndjson", "session.json"):
            if need not in names:
                problems.append(f"no subject for {need}")
        for s in st["subject"]:
            path = f"{run_dir}/{s['name']}"
            if "/" in s["name"] or not os.path.isfile(path):
                problems.append(f"subject {s['name']} is not a file of the run")
            elif file_sha256(path) != s["digest"]["sha256"]:
                problems.append(f"subject {s['name']}: sha256 differs from the file")
    bundle_bytes = None
    if os.path.exists(f"{run_dir}/attestation.sigstore.json") or not v1:
        bundle_bytes = open(f"{run_dir}/attestation.sigstore.json", "rb").read()
        b = json.loads(bundle_bytes)
        if b.get("mediaType") != BUNDLE_MEDIA_TYPE:
            problems.append("bundle mediaType")
        if b.get("verificationMaterial", {}).get("publicKey", {}).get("hint") != kid:
            problems.append("bundle publicKey.hint is not the keyid")
        if b.get("dsseEnvelope") != env:
            problems.append("bundle dsseEnvelope is not the envelope")
    if ledger_path:
        prev = "0" * 64
        found = None
        for i, line in enumerate(open(ledger_path, "rb").read().split(b"\n")[:-1]):
            row = json.loads(line)
            if canonical(row).encode() != line or row["index"] != i or row["prev"] != prev:
                problems.append(f"ledger row {i} broken")
                break
            body = {k: v for k, v in row.items() if k != "row_hash"}
            if hashlib.sha256(b"agentshim-ledger-v1\n" + canonical(body).encode()).hexdigest() != row["row_hash"]:
                problems.append(f"ledger row {i} hash")
                break
            prev = row["row_hash"]
            if row["run_id"] == pred["run_id"]:
                found = row
        if not found:
            problems.append("run not in ledger")
        else:
            if found["attestation_sha256"] != hashlib.sha256(env_bytes).hexdigest():
                problems.append("ledger attestation hash differs")
            if (found["index"], found["prev"]) != (pred["ledger"]["index"], pred["ledger"]["prev"]):
                problems.append("ledger: the row is not at the position the predicate names")
            if found["keyid"] != kid:
                problems.append("ledger: keyid differs")
            if found["merkle_root"] != root:
                problems.append("ledger: merkle_root differs")
            if not v1 or "bundle_sha256" in found:
                if bundle_bytes is None or found.get("bundle_sha256") != hashlib.sha256(bundle_bytes).hexdigest():
                    problems.append("ledger bundle hash differs")
    return problems, events, pred
