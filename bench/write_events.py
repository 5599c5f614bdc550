#!/usr/bin/env python3
"""The cost of write tracking per event, side by side in one run
(interleaved): a container that creates, writes and closes N distinct files
on a tmpfs (each is one FAN_CLOSE_WRITE event, recorded as file.written, and
one FAN_CREATE event, recorded as file.created) and then removes them (N
FAN_DELETE events, file.removed), under this build and under a baseline
build without write tracking (--baseline), and the same container writing
nothing. Reports medians and the extra time per recorded event. Timing
assertions do not belong in tests; this prints numbers.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(binary, root, audit, bundle, cid):
    t = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        r = subprocess.run([binary, "--root", root, "--audit-dir", audit, "run", "--bundle", bundle, cid],
                           input=b"", stdout=out, stderr=subprocess.STDOUT)
    if r.returncode:
        raise RuntimeError(f"{binary} run failed ({r.returncode})")
    dt = time.perf_counter() - t
    subprocess.run([binary, "--root", root, "delete", "--force", cid], input=b"", capture_output=True)
    return dt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--agentshim", default=os.path.join(REPO, "build", "shim", "agentshim"))
    ap.add_argument("--baseline", required=True, help="an agentshim build without write tracking")
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("-n", type=int, default=7)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="aswrite-")
    try:
        bundles = {}
        for kind, script in (("write", f"i=0; while [ $i -lt {a.files} ]; do echo x > /tmp/f$i; i=$((i+1)); done; "
                                       "rm -f /tmp/f*"),
                             ("idle", f"i=0; while [ $i -lt {a.files} ]; do : ; i=$((i+1)); done")):
            b = os.path.join(work, kind)
            os.makedirs(b)
            subprocess.run(["bash", os.path.join(REPO, "scripts", "mkrootfs.sh"), os.path.join(b, "rootfs")],
                           check=True, capture_output=True)
            subprocess.run(["runc", "spec", "--bundle", b], check=True)
            cfg = json.load(open(os.path.join(b, "config.json")))
            cfg["process"]["terminal"] = False
            cfg["process"]["args"] = ["sh", "-c", script]
            cfg["mounts"].append({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                                  "options": ["size=64m", "mode=1777"]})
            json.dump(cfg, open(os.path.join(b, "config.json"), "w"))
            bundles[kind] = b
        cands = {"agentshim": a.agentshim, "baseline": a.baseline}
        times = {(c, k): [] for c in cands for k in bundles}
        n = 0
        for i in range(a.n + 1):  # the first round warms up
            for c, binary in cands.items():
                for k, b in bundles.items():
                    n += 1
                    dt = run(binary, os.path.join(work, "root-" + c), os.path.join(work, "audit-" + c), b,
                             f"w{n}")
                    if i:
                        times[(c, k)].append(dt)
        med = {f"{c}/{k}": statistics.median(v) * 1000 for (c, k), v in times.items()}
        events = 3 * a.files  # file.created, file.written, file.removed per file
        extra = (med["agentshim/write"] - med["agentshim/idle"]) - (med["baseline/write"] - med["baseline/idle"])
        print(f"write tracking, {a.files} files created, written and removed on a tmpfs, n={a.n}, median ms:")
        for k, v in med.items():
            print(f"  {k:18s} {v:9.2f} ms")
        print(f"  extra for the writes under write tracking: {extra:.2f} ms = {extra * 1000 / events:.2f} us "
              f"per recorded event ({events} events)")
        print(json.dumps({"median_ms": med, "extra_ms": extra, "us_per_event": extra * 1000 / events}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
