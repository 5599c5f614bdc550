#!/usr/bin/env python3
"""Filesystem root benchmark, side by side in one run (interleaved):

cold (no hash cache, page cache warm):
  agentshim fs-root DIR            vs  find | xargs -P<cores> openssl dgst -sha256
                                   vs  find | xargs sha256sum (coreutils)
  and the CPU limit: openssl speed -evp sha256 x cores
warm (hash cache hit):
  agentshim fs-root --cache F DIR  vs  a bare stat walk (find -printf %s)
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(cmd, shell=False):
    t = time.perf_counter()
    r = subprocess.run(cmd, shell=shell,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, input=b"")
    if r.returncode != 0:
        raise RuntimeError(f"{cmd}: {r.stderr.decode()[-400:]}")
    return time.perf_counter() - t, r.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--agentshim", default=os.path.join(REPO, "build", "shim", "agentshim"))
    ap.add_argument("--dir", default="/usr/lib/x86_64-linux-gnu")
    ap.add_argument("-n", type=int, default=3)
    a = ap.parse_args()
    cores = os.cpu_count()
    d = a.dir
    size = int(subprocess.run(["du", "-sb", d], stdout=subprocess.PIPE).stdout.split()[0])
    nfiles = int(subprocess.run(f"find {d} -type f | wc -l", shell=True, stdout=subprocess.PIPE).stdout)
    out = subprocess.run(["openssl", "speed", "-evp", "sha256", "-seconds", "2"], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL).stdout.decode()
    per_core = float(re.findall(r"sha256\s+.*\s([\d.]+)k\s*$", out, re.M)[-1]) * 1000
    limit = per_core * cores
    cache = tempfile.mktemp(prefix="asbench-cache-")
    # warm the page cache
    timed(["find", d, "-type", "f", "-exec", "cat", "{}", "+"])
    cand = {
        "agentshim (cold cache)": [a.agentshim, "fs-root", d],
        f"openssl dgst, xargs -P{cores}": f"find {d} -type f -print0 | xargs -0 -P{cores} -n 64 openssl dgst -sha256",
        "sha256sum (coreutils)": f"find {d} -type f -print0 | xargs -0 sha256sum",
    }
    times = {k: [] for k in cand}
    for _ in range(a.n):
        for k, c in cand.items():
            times[k].append(timed(c, shell=isinstance(c, str))[0])
    subprocess.run([a.agentshim, "fs-root", "--cache", cache, d], stdout=subprocess.PIPE)
    warm = {"agentshim (warm cache)": [a.agentshim, "fs-root", "--cache", cache, d],
            "bare stat walk (find -printf)": ["find", d, "-printf", "%s %T@ %C@ %i\n"]}
    wt = {k: [] for k in warm}
    for _ in range(a.n):
        for k, c in warm.items():
            wt[k].append(timed(c)[0])
    os.unlink(cache)
    med = {k: statistics.median(v) for k, v in {**times, **wt}.items()}
    print(f"tree: {d}: {size / 1e9:.2f} GB in {nfiles} files; {cores} cores; n={a.n}; median seconds")
    for k, v in med.items():
        print(f"  {k:34s} {v:7.3f} s   {size / v / 1e9:6.2f} GB/s")
    print(f"  CPU limit (openssl speed x {cores})  {size / limit:7.3f} s   {limit / 1e9:6.2f} GB/s")
    res = {
        "agentshim_vs_openssl_xargs": med["agentshim (cold cache)"] / med[f"openssl dgst, xargs -P{cores}"],
        "agentshim_vs_sha256sum": med["agentshim (cold cache)"] / med["sha256sum (coreutils)"],
        "agentshim_fraction_of_cpu_limit": (size / med["agentshim (cold cache)"]) / limit,
        "warm_vs_stat_walk": med["agentshim (warm cache)"] / med["bare stat walk (find -printf)"],
    }
    print(f"  cold: agentshim / openssl-xargs = {res['agentshim_vs_openssl_xargs']:.2f} (target < 1.0); "
          f"agentshim / sha256sum = {res['agentshim_vs_sha256sum']:.2f}; "
          f"{res['agentshim_fraction_of_cpu_limit'] * 100:.0f}% of the SHA-256 CPU limit")
    print(f"  warm: agentshim / stat walk = {res['warm_vs_stat_walk']:.2f} (target <= 3)")
    print(json.dumps(res))


if __name__ == "__main__":
    sys.exit(main())
