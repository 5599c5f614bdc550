#!/usr/bin/env python3
"""Container lifecycle benchmark: agentshim vs runc vs crun, side by side.

Each iteration runs, for every runtime in turn (A B C A B C ...), the
lifecycle containerd drives: create, start, wait for exit, delete, of `true`
in a busybox bundle. Reports the median wall time per runtime and the
ratios. Timing assertions do not belong in tests; this prints numbers.
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


def sh(cmd, **kw):
    """stdin is a pipe (never the host's /dev/null, which some runtimes chown);
    output goes to a file: a created container keeps its stdio open, so a
    pipe would never reach EOF."""
    with tempfile.TemporaryFile() as out:
        p = subprocess.run(cmd, input=b"", stdout=out, stderr=subprocess.STDOUT, **kw)
        out.seek(0)
        data = out.read()
    return subprocess.CompletedProcess(cmd, p.returncode, data, data)


def lifecycle(binary, root, bundle, cid, extra):
    t = time.perf_counter()
    base = [binary, "--root", root, *extra]
    r = sh(base + ["create", "--bundle", bundle, cid])
    if r.returncode:
        raise RuntimeError(f"{binary} create: {r.stderr.decode()}")
    sh(base + ["start", cid])
    while True:
        st = sh(base + ["state", cid])
        if st.returncode or json.loads(st.stdout)["status"] == "stopped":
            break
        time.sleep(0.001)
    r = sh(base + ["delete", cid])
    if r.returncode:
        raise RuntimeError(f"{binary} delete: {r.stderr.decode()}")
    return time.perf_counter() - t


def crun_usable():
    """crun 1.8 refuses a hybrid layout while hugetlb sits on v2; a v1 hugetlb
    mount fixes that. Returns a cleanup function or None."""
    ctrl = "/sys/fs/cgroup/unified/cgroup.controllers"
    if not os.path.exists(ctrl) or "hugetlb" not in open(ctrl).read():
        return lambda: None
    os.makedirs("/sys/fs/cgroup/hugetlb", exist_ok=True)
    r = sh(["mount", "-t", "cgroup", "-o", "hugetlb", "cgroup", "/sys/fs/cgroup/hugetlb"])
    if r.returncode:
        print(f"note: could not mount a v1 hugetlb hierarchy for crun: {r.stderr.decode().strip()}")
        return None
    print("note: mounted a v1 hugetlb hierarchy at /sys/fs/cgroup/hugetlb so crun 1.8 runs (undone afterwards)")
    return lambda: sh(["umount", "/sys/fs/cgroup/hugetlb"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--agentshim", default=os.path.join(REPO, "build", "shim", "agentshim"))
    ap.add_argument("-n", type=int, default=30)
    ap.add_argument("--baseline", help="another agentshim binary (an earlier build), interleaved as agentshim-base")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="asbench-")
    try:
        bundle = os.path.join(work, "bundle")
        os.makedirs(bundle)
        sh(["bash", os.path.join(REPO, "scripts", "mkrootfs.sh"), os.path.join(bundle, "rootfs")], check=True)
        sh(["runc", "spec", "--bundle", bundle], check=True)
        cfg = json.load(open(os.path.join(bundle, "config.json")))
        cfg["process"]["terminal"] = False
        cfg["process"]["args"] = ["true"]
        json.dump(cfg, open(os.path.join(bundle, "config.json"), "w"))
        runtimes = {"agentshim": (args.agentshim, ["--audit-dir", os.path.join(work, "audit")]),
                    "runc": (shutil.which("runc"), [])}
        if args.baseline:
            runtimes["agentshim-base"] = (args.baseline, ["--audit-dir", os.path.join(work, "audit-base")])
        undo = None
        if shutil.which("crun"):
            undo = crun_usable()
            if undo:
                runtimes["crun"] = (shutil.which("crun"), [])
        times = {k: [] for k in runtimes}
        try:
            for name, (b, extra) in runtimes.items():  # warm-up
                lifecycle(b, os.path.join(work, name), bundle, f"warm-{name}", extra)
            for i in range(args.n):
                for name, (b, extra) in runtimes.items():
                    times[name].append(lifecycle(b, os.path.join(work, name), bundle, f"b{i}-{name}", extra))
        finally:
            if undo:
                undo()
        med = {k: statistics.median(v) * 1000 for k, v in times.items()}
        print(f"lifecycle (create, start, wait, delete of `true`), n={args.n}, median ms:")
        for k, v in med.items():
            print(f"  {k:10s} {v:8.2f} ms")
        result = {"median_ms": med}
        if "runc" in med:
            result["agentshim_vs_runc"] = med["agentshim"] / med["runc"]
            print(f"  agentshim / runc = {result['agentshim_vs_runc']:.2f}  (target < 1.0)")
        if "agentshim-base" in med:
            result["agentshim_vs_base"] = med["agentshim"] / med["agentshim-base"]
            print(f"  agentshim / agentshim-base = {result['agentshim_vs_base']:.2f}")
        if "crun" in med:
            result["agentshim_vs_crun"] = med["agentshim"] / med["crun"]
            print(f"  agentshim / crun = {result['agentshim_vs_crun']:.2f}  (target <= 1.3)")
        print(json.dumps(result))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
