#!/usr/bin/env python3
"""Per-exec cost of the exec observer: an exec storm, agentshim vs runc.

The container's shell runs /bin/true N times (fork + execve each), and the
same shell with N = 0; each runtime's per-exec time is
(median T(N) - median T(0)) / N, taken over interleaved runs (A B A B ...).
Under agentshim every execve is one seccomp notification (path, session,
PATH misses) plus one fanotify FAN_OPEN_EXEC_PERM event whose file is
hashed (a cache hit for a file on a read-only root) and recorded.
Timing assertions do not belong in tests; this prints numbers.

    bench/exec_storm.py [--agentshim PATH] [-n RUNS] [--execs N]
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile

from lifecycle import REPO, lifecycle, sh


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--agentshim", default=os.path.join(REPO, "build", "shim", "agentshim"))
    ap.add_argument("-n", type=int, default=7, help="runs per runtime and size")
    ap.add_argument("--execs", type=int, default=1000)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="asexec-")
    try:
        bundles = {}
        rootfs = os.path.join(work, "rootfs")
        sh(["bash", os.path.join(REPO, "scripts", "mkrootfs.sh"), rootfs], check=True)
        for n in (0, args.execs):
            b = os.path.join(work, f"bundle{n}")
            os.makedirs(b)
            os.symlink(rootfs, os.path.join(b, "rootfs"))
            sh(["runc", "spec", "--bundle", b], check=True)
            cfg = json.load(open(os.path.join(b, "config.json")))
            cfg["process"]["terminal"] = False
            cfg["root"]["path"] = rootfs
            cfg["process"]["args"] = ["sh", "-c", f"i=0; while [ $i -lt {n} ]; do /bin/true; i=$((i+1)); done"]
            json.dump(cfg, open(os.path.join(b, "config.json"), "w"))
            bundles[n] = b
        runtimes = {"agentshim": (args.agentshim, ["--audit-dir", os.path.join(work, "audit")]),
                    "runc": (shutil.which("runc"), [])}
        times = {(k, n): [] for k in runtimes for n in bundles}
        for name, (b, extra) in runtimes.items():  # warm-up
            lifecycle(b, os.path.join(work, name), bundles[args.execs], f"warm-{name}", extra)
        for i in range(args.n):
            for n, bundle in bundles.items():
                for name, (b, extra) in runtimes.items():
                    times[(name, n)].append(lifecycle(b, os.path.join(work, name), bundle, f"e{i}-{n}-{name}", extra))
        med = {f"{k}/{n}": statistics.median(v) * 1000 for (k, n), v in times.items()}
        per = {k: (med[f"{k}/{args.execs}"] - med[f"{k}/0"]) / args.execs * 1000 for k in runtimes}
        print(f"exec storm: {args.execs} x fork+execve of /bin/true in the container's shell, runs={args.n}")
        for k, v in med.items():
            print(f"  {k:16s} {v:9.1f} ms (median)")
        for k, v in per.items():
            print(f"  {k:10s} {v:7.1f} us per exec")
        result = {"median_ms": med, "per_exec_us": per,
                  "observer_cost_us": per["agentshim"] - per["runc"],
                  "agentshim_vs_runc": per["agentshim"] / per["runc"]}
        print(f"  agentshim / runc per exec = {result['agentshim_vs_runc']:.2f}; "
              f"observer cost {result['observer_cost_us']:.1f} us per exec")
        print(json.dumps(result))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
