#!/usr/bin/env python3
"""`docker run --rm busybox true` with --runtime=agentshim vs --runtime=runc,
side by side in one run (interleaved A B A B ...), medians and the ratio.

Starts its own dockerd (private config, data root, exec root, socket;
--bridge=none --iptables=false), imports busybox from busybox-static, and
removes everything at the end. Needs root and Debian's docker.io.
"""
import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--agentshim", required=True)
    ap.add_argument("-n", type=int, default=15, help="runs per runtime")
    a = ap.parse_args()
    os.environ["AGENTSHIM_BIN"] = os.path.realpath(a.agentshim)
    import clients  # after AGENTSHIM_BIN is set (conftest reads it)

    if clients.ensure_packages():
        sys.exit("docker.io is not installed (scripts/deps.sh)")
    d = clients.Dockerd(clients.short_tmpdir("bdk"))
    try:
        d.start()
        with open(clients.busybox_tar(d.base), "rb") as f:
            d("import", "-", "busybox:bench", input=f.read(), check=True, timeout=120)
        times = {"runc": [], "agentshim": []}
        for rt in times:  # warm-up: images, caches, the runtime digest cache
            d("run", "--rm", f"--runtime={rt}", "busybox:bench", "true", check=True)
        for _ in range(a.n):
            for rt in times:
                t0 = time.perf_counter()
                d("run", "--rm", f"--runtime={rt}", "busybox:bench", "true", check=True)
                times[rt].append(time.perf_counter() - t0)
        med = {rt: statistics.median(v) for rt, v in times.items()}
        print(f"docker run --rm busybox true, {a.n} runs each, interleaved")
        for rt, v in times.items():
            print(f"  {rt:10s} median {med[rt] * 1000:7.1f} ms  min {min(v) * 1000:7.1f} ms  max {max(v) * 1000:7.1f} ms")
        print(f"  ratio agentshim/runc: {med['agentshim'] / med['runc']:.2f}x")
    finally:
        d.stop()


if __name__ == "__main__":
    main()
