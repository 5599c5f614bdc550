#!/usr/bin/env python3
"""Egress proxy benchmark: agentshim's proxy vs a direct loopback connection
vs Debian's tinyproxy, side by side.

Everything listens on 127.0.0.1 (ephemeral ports). bench/proxy_bench (built
from bench/proxy_bench.cpp) is the upstream server, the clients, and runs
agentshim's Proxy outside a container. Candidates are interleaved
(A B C A B C ...) and the report gives medians and ratios; no assertions.

- throughput: a --gib GiB transfer client -> upstream, through CONNECT (or
  direct), timed until the upstream confirms it received every byte;
- connection setup latency: -n sequential connects (+ CONNECT handshake)
  each followed by a 1-byte round trip, median and p99.
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


def start(cmd, **kw):
    """Start a helper that prints `port N` once listening; return (proc, port)."""
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    line = p.stdout.readline()
    if not line.startswith("port "):
        p.kill()
        raise RuntimeError(f"{cmd[0]} did not start: {line!r} {p.stderr.read()}")
    return p, int(line.split()[1])


def wait_port(port, timeout=10):
    import socket
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def run_json(cmd):
    r = subprocess.run(cmd, input="", capture_output=True, text=True, timeout=600)
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")
    return json.loads(r.stdout)


def start_tinyproxy(work):
    exe = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"
    if not os.path.exists(exe):
        print("note: tinyproxy not installed (scripts/deps.sh installs it); skipping it")
        return None, None
    port = free_port()
    conf = os.path.join(work, "tinyproxy.conf")
    with open(conf, "w") as f:
        # No ConnectPort line: CONNECT to every port is allowed. Loopback only.
        f.write(f"Port {port}\nListen 127.0.0.1\nAllow 127.0.0.1\nTimeout 600\nMaxClients 1024\n"
                f"LogLevel Critical\nLogFile \"{work}/tinyproxy.log\"\nPidFile \"{work}/tinyproxy.pid\"\n"
                "DisableViaHeader Yes\n")
        if os.getuid() == 0:
            f.write("User nobody\nGroup nogroup\n")
    p = subprocess.Popen([exe, "-d", "-c", conf], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    if not wait_port(port):
        p.kill()
        print("note: tinyproxy did not start; skipping it")
        return None, None
    return p, port


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(REPO, "build"))
    ap.add_argument("--gib", type=float, default=1.0, help="GiB per throughput transfer")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-n", type=int, default=500, help="connections per latency sample")
    args = ap.parse_args()
    exe = os.path.join(args.build, "bench", "proxy_bench")
    if not os.path.exists(exe):
        sys.exit(f"{exe} missing: cmake --build {args.build} --target proxy_bench")
    work = tempfile.mkdtemp(prefix="asproxybench-")
    procs = []
    try:
        server, sport = start([exe, "server", "--port", "0"])
        procs.append(server)
        proxy, pport = start([exe, "proxy", "--port", "0", "--allow", f"127.0.0.1:{sport}"])
        procs.append(proxy)
        tiny, tport = start_tinyproxy(work)
        if tiny:
            procs.append(tiny)
        cands = [("direct", 0), ("agentshim", pport)] + ([("tinyproxy", tport)] if tiny else [])
        nbytes = int(args.gib * (1 << 30))
        thr = {c: [] for c, _ in cands}
        lat = {c: [] for c, _ in cands}
        p99 = {c: [] for c, _ in cands}
        for _ in range(args.rounds):
            for name, via in cands:
                r = run_json([exe, "send", "--to", str(sport), "--via", str(via), "--bytes", str(nbytes)])
                thr[name].append(nbytes / r["seconds"] / (1 << 20))
            for name, via in cands:
                r = run_json([exe, "latency", "--to", str(sport), "--via", str(via), "-n", str(args.n)])
                lat[name].append(r["median_us"])
                p99[name].append(r["p99_us"])
        print(f"{args.gib:g} GiB transfer, {args.n} sequential connections per sample, {args.rounds} rounds "
              "(interleaved), medians over rounds")
        print(f"{'path':<12}{'MiB/s':>10}{'vs direct':>11}{'setup us':>11}{'p99 us':>9}{'added us':>10}")
        d_thr = statistics.median(thr["direct"])
        d_lat = statistics.median(lat["direct"])
        for name, _ in cands:
            t = statistics.median(thr[name])
            m = statistics.median(lat[name])
            print(f"{name:<12}{t:>10.0f}{t / d_thr:>10.1%}{m:>11.1f}{statistics.median(p99[name]):>9.1f}"
                  f"{m - d_lat:>10.1f}")
        if tiny:
            a, t = statistics.median(thr["agentshim"]), statistics.median(thr["tinyproxy"])
            la, lt = statistics.median(lat["agentshim"]), statistics.median(lat["tinyproxy"])
            print(f"agentshim / tinyproxy: throughput x{a / t:.2f}, setup latency x{la / lt:.2f}")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                out, _ = p.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
