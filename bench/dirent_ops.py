#!/usr/bin/env python3
"""The per-operation cost of recording names created and removed on a
volume: the entry LSM programs (sandbox/bpf/dirent.bpf.c) where the kernel
loads them, else the fanotify fallback (sandbox/fanotify_entries.h).

1. In the container: a static program does N mkdir+rmdir pairs in a volume
   (a directory of a host tmpfs, so the disk does not set the pace; a
   subdirectory, so the volume is not a tmpfs the container has whole, which
   the fanotify entry group would take) and prints the nanoseconds per pair
   it measured itself.
2. On the host, beside a running container: the same program does N pairs
   in another directory of that tmpfs (not the volume). The fanotify
   fallback marks the whole filesystem and drops the host's events in user
   space; this is what that costs the host.

Columns, interleaved: `with` (this build) and `without` (the same build with
AGENTSHIM_DIRENT_BPF=off and AGENTSHIM_DIRENT_FANOTIFY=off: no entry
events for the volume). Says which mechanism each run had (fs.watch
`entries`). Timing assertions do not belong in tests; this prints numbers.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LOOP = r"""
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
int main(int c, char** v) {
  long n = atol(v[1]);
  const char* d = c > 2 ? v[2] : "/vol/d";
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  for (long i = 0; i < n; i++)
    if (mkdir(d, 0755) < 0 || rmdir(d) < 0) return 1;
  clock_gettime(CLOCK_MONOTONIC, &b);
  printf("%.1f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n);
  return 0;
}
"""


def mechanism(audit, cid):
    for d in os.listdir(os.path.join(audit, "runs")):
        with open(os.path.join(audit, "runs", d, "events.ndjson")) as f:
            evs = [json.loads(line) for line in f]
        if evs[0]["data"].get("container_id") == cid:
            w = next((e["data"] for e in evs if e["type"] == "fs.watch" and "marked" in e["data"]), {})
            vol = [u for u in w.get("entries_unwatched", []) if u.startswith("/vol")]
            return "none" if vol else w.get("entries", "?")
    return "?"


def run(binary, root, audit, bundle, cid, env):
    r = subprocess.run([binary, "--root", root, "--audit-dir", audit, "run", "--bundle", bundle, cid],
                       input=b"", capture_output=True, env=env)
    if r.returncode:
        raise RuntimeError(f"run failed ({r.returncode}): {r.stderr.decode()}")
    subprocess.run([binary, "--root", root, "delete", "--force", cid], capture_output=True)
    return float(r.stdout.decode().split()[-1]), mechanism(audit, cid)


def run_beside(binary, root, audit, bundle, cid, env, host_loop, ops, host_dir, done):
    """The host's pairs while a container (waiting for `done`) runs."""
    p = subprocess.Popen([binary, "--root", root, "--audit-dir", audit, "run", "--bundle", bundle, cid],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            st = subprocess.run([binary, "--root", root, "state", cid], capture_output=True)
            if st.returncode == 0 and b'"running"' in st.stdout:
                break
            time.sleep(0.02)
        r = subprocess.run([host_loop, str(ops), os.path.join(host_dir, "d")], capture_output=True, check=True)
        open(done, "w").close()
        p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
        if os.path.exists(done):
            os.unlink(done)
    subprocess.run([binary, "--root", root, "delete", "--force", cid], capture_output=True)
    return float(r.stdout.decode().split()[-1]), mechanism(audit, cid)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--agentshim", default=os.path.join(REPO, "build", "shim", "agentshim"))
    ap.add_argument("-n", type=int, default=5, help="runs per column")
    ap.add_argument("--ops", type=int, default=100000, help="mkdir+rmdir pairs per run")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="asdirent-")
    try:
        bundle = os.path.join(work, "bundle")
        rootfs = os.path.join(bundle, "rootfs")
        os.makedirs(bundle)
        subprocess.run(["bash", os.path.join(REPO, "scripts", "mkrootfs.sh"), rootfs], check=True)
        with open(os.path.join(work, "loop.c"), "w") as f:
            f.write(LOOP)
        subprocess.run(["gcc", "-static", "-O2", "-o", os.path.join(rootfs, "loop"), os.path.join(work, "loop.c")],
                       check=True)
        fs = os.path.join(work, "fs")
        os.makedirs(fs)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", fs], check=True)
        vol = os.path.join(fs, "vol")
        os.makedirs(vol)
        subprocess.run(["runc", "spec", "--bundle", bundle], check=True)
        with open(os.path.join(bundle, "config.json")) as f:
            cfg = json.load(f)
        cfg["process"]["terminal"] = False
        cfg["process"]["args"] = ["/loop", str(args.ops)]
        cfg["mounts"].append({"destination": "/vol", "type": "bind", "source": vol, "options": ["rbind", "rw"]})
        with open(os.path.join(bundle, "config.json"), "w") as f:
            json.dump(cfg, f)
        cols = {"with": dict(os.environ),
                "without": dict(os.environ, AGENTSHIM_DIRENT_BPF="off", AGENTSHIM_DIRENT_FANOTIFY="off")}
        got = {k: [] for k in cols}
        mechs = {k: set() for k in cols}
        for i in range(args.n):
            for k, env in cols.items():
                ns, mech = run(args.agentshim, os.path.join(work, "root"), os.path.join(work, "audit-" + k), bundle,
                               f"d{i}-{k}", env)
                got[k].append(ns)
                mechs[k].add(mech)
        print(f"{args.ops} mkdir+rmdir pairs in a volume by the container, n={args.n}, median ns per pair:")
        for k in cols:
            print(f"  {k:8s} {statistics.median(got[k]):10.1f}  (entries of /vol: {', '.join(sorted(mechs[k]))})")
        print(f"  extra per pair: {statistics.median(got['with']) - statistics.median(got['without']):.1f} ns")
        # 2. The host beside a running container.
        host_loop = os.path.join(work, "loop")
        shutil.copy(os.path.join(rootfs, "loop"), host_loop)
        host_dir = os.path.join(fs, "host")
        os.makedirs(host_dir)
        done = os.path.join(vol, "done")
        cfg["process"]["args"] = ["/bin/sh", "-c", "while [ ! -e /vol/done ]; do sleep 0.02; done"]
        with open(os.path.join(bundle, "config.json"), "w") as f:
            json.dump(cfg, f)
        got = {k: [] for k in cols}
        mechs = {k: set() for k in cols}
        for i in range(args.n):
            for k, env in cols.items():
                ns, mech = run_beside(args.agentshim, os.path.join(work, "root"), os.path.join(work, "audit-" + k),
                                      bundle, f"h{i}-{k}", env, host_loop, args.ops, host_dir, done)
                got[k].append(ns)
                mechs[k].add(mech)
        print(f"{args.ops} mkdir+rmdir pairs by the host on the volume's filesystem, outside the volume, "
              f"a container running, n={args.n}, median ns per pair:")
        for k in cols:
            print(f"  {k:8s} {statistics.median(got[k]):10.1f}  (entries of /vol: {', '.join(sorted(mechs[k]))})")
        print(f"  extra per pair: {statistics.median(got['with']) - statistics.median(got['without']):.1f} ns")
    finally:
        subprocess.run(["umount", "-l", os.path.join(work, "fs")], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
