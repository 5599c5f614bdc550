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
- CPU accounting per transfer: the sender's own user+sys time, the upstream
  server's and the relaying process's CPU time (/proc/PID/stat, all
  threads), and the whole machine's user / sys / softirq / idle time from
  /proc/stat (includes any other work running on the machine), all in
  seconds per GiB.

Same sender, same receiver, same write size (--wsize) and the same socket
buffer settings (--sockbuf, default kernel autotuning) for every path; only
the path in between differs. --relay MODE adds bare relays from
proxy_bench (poll / threads / copy / copypoll) to compare relay strategies, --rate
throttles every sender to the same MiB/s (to see the cost when the machine
is not CPU bound), --no-latency skips the latency samples.

--tls adds the HTTPS case (docs/CREDENTIALS.md, "TLS"): an HTTPS upstream
(proxy_bench tlsserver, HTTP/1.1 keep-alive), reached directly, through an
opaque CONNECT tunnel of agentshim's proxy, and through the same proxy
intercepting it (a request rule on the destination: the proxy terminates
TLS with the run's CA and opens its own verified TLS upstream). Per path:
connection setup (CONNECT + TLS handshake(s) + one GET), one request on a
kept-alive connection, and a --tls-mib MiB POST body's throughput.
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


def start_tinyproxy(work, prefix=()):
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
    p = subprocess.Popen(list(prefix) + [exe, "-d", "-c", conf], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    if not wait_port(port):
        p.kill()
        print("note: tinyproxy did not start; skipping it")
        return None, None
    return p, port


TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid):
    """utime+stime of a process (all its threads, live and exited), seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def sys_cpu():
    """Whole machine: user(+nice), system, softirq(+irq), idle seconds from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return {"user": (v[0] + v[1]) / TICK, "sys": v[2] / TICK, "softirq": (v[5] + v[6]) / TICK, "idle": (v[3] + v[4]) / TICK}


def tls_case(exe, work, procs, args, ends, middle):
    up_ca, run_ca = os.path.join(work, "upstream-ca.pem"), os.path.join(work, "run-ca.pem")
    srv, sport = start(ends + [exe, "tlsserver", "--port", "0", "--ca-out", up_ca])
    procs.append(srv)
    allow = ["--allow", f"127.0.0.1:{sport}", "--tls-upstream-ca", up_ca]
    opaque, oport = start(middle + [exe, "proxy", "--port", "0"] + allow)
    procs.append(opaque)
    inter, iport = start(middle + [exe, "proxy", "--port", "0", "--run-ca-out", run_ca, "--intercept", str(sport)]
                         + allow)
    procs.append(inter)
    cands = [("https direct", 0, up_ca), ("opaque tunnel", oport, up_ca), ("intercepted", iport, run_ca)]
    res = {c[0]: [] for c in cands}
    for _ in range(args.rounds):
        for name, via, ca in cands:
            res[name].append(run_json(ends + [exe, "tlsclient", "--to", str(sport), "--via", str(via), "--ca", ca,
                                              "-n", str(min(args.n, 300)), "--bytes", str(args.tls_mib << 20)]))
    print(f"HTTPS: {min(args.n, 300)} connections / requests per sample, {args.tls_mib} MiB POST, "
          f"{args.rounds} rounds (interleaved), medians over rounds")
    print(f"{'path':<15}{'setup us':>10}{'added':>9}{'request us':>12}{'added':>9}{'MiB/s':>8}{'vs opaque':>11}")
    med = {n: {k: statistics.median(r[k] for r in res[n]) for k in ("setup_us", "request_us", "mib_s")}
           for n in res}
    base = med["opaque tunnel"]
    for name, _, _ in cands:
        m = med[name]
        print(f"{name:<15}{m['setup_us']:>10.0f}{m['setup_us'] - base['setup_us']:>9.0f}{m['request_us']:>12.1f}"
              f"{m['request_us'] - base['request_us']:>9.1f}{m['mib_s']:>8.0f}{m['mib_s'] / base['mib_s']:>10.1%}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(REPO, "build"))
    ap.add_argument("--gib", type=float, default=1.0, help="GiB per throughput transfer")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-n", type=int, default=500, help="connections per latency sample")
    ap.add_argument("--relay", action="append", default=[], choices=["poll", "threads", "copy", "copypoll"],
                    help="add a bare proxy_bench relay of this strategy as a candidate")
    ap.add_argument("--only", default="", help="comma-separated candidate names to run (direct always runs)")
    ap.add_argument("--rate", type=float, default=0, help="throttle every sender to this many MiB/s")
    ap.add_argument("--sockbuf", type=int, default=0, help="SO_SNDBUF/SO_RCVBUF for every socket (0 = autotuning)")
    ap.add_argument("--wsize", type=int, default=1 << 20, help="sender write size")
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--pin", action="store_true",
                    help="taskset: sender and upstream server on CPU 0, every proxy/relay on CPU 1 (the proxy's "
                         "own cost, with the machine's two vCPUs split between the ends and the middle)")
    ap.add_argument("--tls", action="store_true", help="also the HTTPS case: opaque tunnel vs intercepted")
    ap.add_argument("--tls-mib", type=int, default=256, help="MiB per HTTPS throughput sample")
    ap.add_argument("--base", action="append", default=[],
                    help="another proxy_bench binary (e.g. an older build): its proxy runs as a candidate named "
                         "after the file")
    args = ap.parse_args()
    exe = os.path.join(args.build, "bench", "proxy_bench")
    if not os.path.exists(exe):
        sys.exit(f"{exe} missing: cmake --build {args.build} --target proxy_bench")
    work = tempfile.mkdtemp(prefix="asproxybench-")
    procs = []
    try:
        ends = ["taskset", "-c", "0"] if args.pin else []
        middle = ["taskset", "-c", "1"] if args.pin else []
        only = set(filter(None, args.only.split(",")))
        want = lambda name: not only or name in only or name == "direct"  # noqa: E731
        sb = ["--sockbuf", str(args.sockbuf)]
        server, sport = start(ends + [exe, "server", "--port", "0"] + sb)
        procs.append(server)
        cands = [("direct", 0, None)]
        if want("agentshim"):
            proxy, pport = start(middle + [exe, "proxy", "--port", "0", "--allow", f"127.0.0.1:{sport}"])
            procs.append(proxy)
            cands.append(("agentshim", pport, proxy.pid))
        if want("agentshim+attr"):
            # The same proxy asking the kernel who is behind each connection,
            # as a pod's sandbox does (sandbox/sockowner.h), over every
            # process of the host's namespace.
            ap_, aport = start(middle + [exe, "proxy", "--port", "0", "--allow", f"127.0.0.1:{sport}",
                                         "--attribute", "1"])
            procs.append(ap_)
            cands.append(("agentshim+attr", aport, ap_.pid))
        for base in args.base:
            bp, bport = start(middle + [base, "proxy", "--port", "0", "--allow", f"127.0.0.1:{sport}"])
            procs.append(bp)
            cands.append((os.path.basename(base).replace("proxy_bench_", "")[:14], bport, bp.pid))
        for mode in args.relay:
            rp, rport = start(middle + [exe, "relay", "--port", "0", "--to", str(sport), "--mode", mode,
                               "--wsize", str(args.wsize)] + sb)
            procs.append(rp)
            cands.append((f"relay-{mode}", rport, rp.pid))
        tiny = None
        if want("tinyproxy"):
            tiny, tport = start_tinyproxy(work, middle)
            if tiny:
                procs.append(tiny)
                cands.append(("tinyproxy", tport, tiny.pid))
        if args.tls:
            tls_case(exe, work, procs, args, ends, middle)
            if args.only == "tls":
                return
        nbytes = int(args.gib * (1 << 30))
        gib = nbytes / (1 << 30)
        thr = {c[0]: [] for c in cands}
        lat = {c[0]: [] for c in cands}
        p99 = {c[0]: [] for c in cands}
        cpu = {c[0]: [] for c in cands}
        extra = sb + ["--wsize", str(args.wsize)] + (["--rate", str(args.rate)] if args.rate else [])
        for _ in range(args.rounds):
            for name, via, mid in cands:
                s0, m0, k0 = proc_cpu(server.pid), proc_cpu(mid) if mid else 0.0, sys_cpu()
                r = run_json(ends + [exe, "send", "--to", str(sport), "--via", str(via), "--bytes", str(nbytes)] + extra)
                s1, m1, k1 = proc_cpu(server.pid), proc_cpu(mid) if mid else 0.0, sys_cpu()
                thr[name].append(nbytes / r["seconds"] / (1 << 20))
                cpu[name].append({"sender": (r["user_s"] + r["sys_s"]) / gib, "server": (s1 - s0) / gib,
                                  "relay": (m1 - m0) / gib,
                                  **{k: (k1[k] - k0[k]) / gib for k in k0}})
            if args.no_latency:
                continue
            for name, via, _ in cands:
                r = run_json(ends + [exe, "latency", "--to", str(sport), "--via", str(via), "-n", str(args.n)])
                lat[name].append(r["median_us"])
                p99[name].append(r["p99_us"])
        print(f"{args.gib:g} GiB transfer, {args.n} sequential connections per sample, {args.rounds} rounds "
              f"(interleaved), medians over rounds; sockbuf {args.sockbuf or 'auto'}, write size {args.wsize}"
              + (f", senders throttled to {args.rate:g} MiB/s" if args.rate else "")
              + (", pinned: sender+server CPU 0, proxies CPU 1" if args.pin else ""))
        print(f"{'path':<14}{'MiB/s':>8}{'vs direct':>11}{'setup us':>10}{'p99 us':>9}{'added us':>10}")
        d_thr = statistics.median(thr["direct"])
        d_lat = statistics.median(lat["direct"]) if lat["direct"] else 0
        for name, _, _ in cands:
            t = statistics.median(thr[name])
            if lat[name]:
                m = statistics.median(lat[name])
                print(f"{name:<14}{t:>8.0f}{t / d_thr:>10.1%}{m:>10.1f}{statistics.median(p99[name]):>9.1f}"
                      f"{m - d_lat:>10.1f}")
            else:
                print(f"{name:<14}{t:>8.0f}{t / d_thr:>10.1%}")
        keys = ["sender", "server", "relay", "user", "sys", "softirq", "idle"]
        print("CPU seconds per GiB (medians; user/sys/softirq/idle: whole machine, both vCPUs, other work included)")
        print(f"{'path':<14}" + "".join(f"{k:>9}" for k in keys))
        for name, _, _ in cands:
            print(f"{name:<14}" + "".join(f"{statistics.median(c[k] for c in cpu[name]):>9.2f}" for k in keys))
        if tiny and lat["agentshim"]:
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
