#!/usr/bin/env python3
"""Real-image benchmark: agentshim vs runc vs crun on a Debian root (issue 16).

Builds (once; cached outside the repository) a Debian bookworm root with
  mmdebstrap --variant=apt --include=python3,git,gcc,nodejs,npm bookworm OUT.tar
unpacks it into a bundle (read-only root, `true`) and runs, interleaved
(A B C A B C ...):
  - lifecycle: create, start, wait, delete (what containerd drives);
  - run: `RUNTIME run` of `true` (agentshim's waits for the signed record);
with agentshim's hash cache warm, then agentshim's `run` with the cache
removed before every iteration (cold). Prints medians, ratios, the image's
size and entry count, and the record's phases from the supervisor's debug
log (before-walk, after-walk, exit fsync, finalize: signing and the durable
writes of session, attestation and ledger).

Between agentshim iterations the benchmark waits (untimed) for the previous
record to be finalized, so a background walk or signing never runs during
another runtime's timed iteration.

Then the clients (unless --no-clients): `docker run --rm IMAGE true` and
`podman run --rm IMAGE true` (containers/storage's overlay driver), each
with --runtime=agentshim and --runtime=runc, interleaved, on the same image
imported into a private dockerd and a private podman store; and the
`fs.root` facts of the last client record (how the overlay root's layers
were read: walked, checked, proven; docs/FORMATS.md "Overlay roots").

--load N: N background processes that behave like a build (hash a buffer,
write and fsync a file, over and over) run during every measurement, so the
phases show what a loaded host pays (durable writes wait behind the others').

--smoke: a busybox root and two iterations (a check that the benchmark runs;
integration/test_realimage.py runs it). Timing assertions do not belong in
tests; this prints numbers.
"""
import argparse
import fcntl
import glob
import json
import os
import re
import shutil
import stat
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from lifecycle import crun_usable, lifecycle, sh  # noqa: E402

CACHE_DIR = "/var/cache/agentshim-bench"
PACKAGES = "python3,git,gcc,libc6-dev,make,nodejs,npm,ca-certificates"
# The cached tarball's name carries the package list: a new list builds a new image.
TARBALL = os.path.join(CACHE_DIR, "bookworm-" + PACKAGES.replace(",", "-").replace("ca-certificates", "ca") + ".tar")


def ensure_tarball(path):
    if os.path.exists(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # mmdebstrap picks its output format from the name: keep ".tar" last.
    part = path[:-len(".tar")] + ".part.tar" if path.endswith(".tar") else path + ".part.tar"
    print(f"building {path} with mmdebstrap (a few minutes, once)...", flush=True)
    subprocess.run(["mmdebstrap", "--format=tar", "--variant=apt", f"--include={PACKAGES}", "bookworm", part],
                   check=True)
    os.rename(part, path)
    return path


def image_stats(root):
    """Entries (every name under the root, and the root) and bytes of regular files."""
    entries, size = 1, 0
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            entries += 1
            st = os.lstat(os.path.join(d, n))
            if os.path.isfile(os.path.join(d, n)) and not os.path.islink(os.path.join(d, n)):
                size += st.st_size
    return entries, size


def read_all(root):
    """Reads every regular file once (untimed), so a cold run measures hashing
    rather than the disk: the warm runs never read contents, and the kernel
    (here DAMON's proactive reclaim) may have evicted some since the unpack."""
    for d, _, files in os.walk(root):
        for n in files:
            p = os.path.join(d, n)
            try:
                fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:
                continue
            try:
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    while os.read(fd, 1 << 20):
                        pass
            finally:
                os.close(fd)


def make_bundle(work, tarball, smoke):
    bundle = os.path.join(work, "bundle")
    rootfs = os.path.join(bundle, "rootfs")
    os.makedirs(rootfs)
    if smoke:
        sh(["bash", os.path.join(REPO, "scripts", "mkrootfs.sh"), rootfs], check=True)
    else:
        t = time.perf_counter()
        subprocess.run(["tar", "-xf", tarball, "-C", rootfs, "--numeric-owner"], check=True)
        print(f"unpacked {tarball} in {time.perf_counter() - t:.1f} s")
    sh(["runc", "spec", "--bundle", bundle], check=True)
    cfg = json.load(open(os.path.join(bundle, "config.json")))
    cfg["process"]["terminal"] = False
    cfg["process"]["args"] = ["true"]
    cfg["root"]["readonly"] = True  # agentshim's default policy forces it; the same for every runtime
    json.dump(cfg, open(os.path.join(bundle, "config.json"), "w"))
    return bundle


def make_overlay_bundle(work, bundle):
    """The same root as containerd gives a container: an overlay whose lower
    layer is an unpacked image snapshot (content-addressed by its place,
    .../io.containerd.snapshotter.v1.overlayfs/snapshots/N/fs) and whose
    upper layer is the container's own, empty snapshot. Returns (bundle, umount)."""
    snaps = os.path.join(work, "io.containerd.snapshotter.v1.overlayfs", "snapshots")
    lower = os.path.join(snaps, "1", "fs")
    upper, wd = os.path.join(snaps, "2", "fs"), os.path.join(snaps, "2", "work")
    for d in (upper, wd):
        os.makedirs(d)
    os.makedirs(os.path.dirname(lower))
    os.rename(os.path.join(bundle, "rootfs"), lower)  # the unpacked image becomes the layer
    os.makedirs(os.path.join(bundle, "rootfs"))
    ov = os.path.join(work, "bundle-overlay")
    os.makedirs(os.path.join(ov, "rootfs"))
    shutil.copy(os.path.join(bundle, "config.json"), ov)
    sh(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lower},upperdir={upper},workdir={wd}",
        os.path.join(ov, "rootfs")], check=True)
    return ov, lambda: sh(["umount", os.path.join(ov, "rootfs")])


def measure(runtimes, roots, bundle, audit, n, tag):
    """Lifecycle and run of every runtime, interleaved; a warm-up first."""
    for name, (b, extra) in runtimes.items():  # warm-up (and agentshim's hash cache)
        lifecycle(b, roots[name], bundle, f"{tag}warm-{name}", extra)
        if name == "agentshim":
            wait_finalized(audit)
    life = {k: [] for k in runtimes}
    run = {k: [] for k in runtimes}
    for i in range(n):
        for name, (b, extra) in runtimes.items():
            life[name].append(lifecycle(b, roots[name], bundle, f"{tag}l{i}-{name}", extra))
            if name == "agentshim":
                wait_finalized(audit)
        for name, (b, extra) in runtimes.items():
            run[name].append(run_once(b, roots[name], bundle, f"{tag}r{i}-{name}", extra))
            if name == "agentshim":
                wait_finalized(audit)
    return life, run


def print_ratios(result, prefix, life, run):
    for what, d, tgt_runc, tgt_crun in (("lifecycle", life, 1.2, 1.5), ("run", run, 2.0, None)):
        m = {k: med(v) for k, v in d.items()}
        result[f"{prefix}{what}_ms"] = m
        print(f"{prefix}{what} of `true`, warm, median ms: " + ", ".join(f"{k} {v:.1f}" for k, v in m.items()))
        for other, tgt in (("runc", tgt_runc), ("crun", tgt_crun)):
            if other in m and m[other] > 0:
                r = m["agentshim"] / m[other]
                result[f"{prefix}{what}_agentshim_vs_{other}"] = r
                print(f"  {prefix}{what}: agentshim / {other} = {r:.2f}" + (f"  (target <= {tgt})" if tgt else ""))


def newest_run_dir(audit):
    runs = glob.glob(os.path.join(audit, "runs", "*"))
    return max(runs, key=os.path.getmtime) if runs else None


def wait_finalized(audit):
    """The supervisor holds an exclusive flock on the run directory until the
    record is signed and in the ledger (attest::wait_finalized)."""
    rd = newest_run_dir(audit)
    if not rd:
        return
    fd = os.open(rd, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    finally:
        os.close(fd)


def run_once(binary, root, bundle, cid, extra):
    t = time.perf_counter()
    r = sh([binary, "--root", root, *extra, "run", "--bundle", bundle, cid])
    dt = time.perf_counter() - t
    if r.returncode:
        raise RuntimeError(f"{binary} run: {r.stdout.decode()}")
    return dt


PHASE_RE = re.compile(r'record phase ([a-z-]+) ([0-9.]+) ms')


def phases_from_log(path):
    """Per-run phase durations from the supervisor's debug log (one dict per run)."""
    runs, cur = [], {}
    if not os.path.exists(path):
        return runs
    for line in open(path, errors="replace"):
        m = PHASE_RE.search(line)
        if not m:
            continue
        name, ms = m.group(1), float(m.group(2))
        cur[name] = cur.get(name, 0.0) + ms
        if name == "finalize":
            runs.append(cur)
            cur = {}
    return runs


def fs_root_facts(audit):
    """bytes_hashed / cache_hits / walk of the newest run's fs.root events."""
    rd = newest_run_dir(audit)
    out = {}
    for line in open(os.path.join(rd, "events.ndjson")):
        e = json.loads(line)
        if e["type"] == "fs.root":
            for t in e["data"]["trees"]:
                out[(e["data"]["phase"], t["name"])] = t
    return out


def med(v):
    return statistics.median(v) * 1000


def overlay_podman(clients):
    """clients.Podman with containers/storage's overlay driver (the default
    outside the test suites), so a root is an overlay of image layers."""

    class OverlayPodman(clients.Podman):
        def __call__(self, *args, runtime=None, timeout=120, input=None, check=False, policy=None):
            cmd = [clients.PODMAN, "--root", self.root, "--runroot", self.runroot, "--storage-driver", "overlay",
                   "--cgroup-manager", "cgroupfs", "--events-backend", "file"]
            if runtime == "agentshim":
                cmd += ["--runtime", os.environ["AGENTSHIM_BIN"], "--runtime-flag", "policy=" + (policy or self.policy),
                        "--runtime-flag", "audit-dir=" + self.audit]
            elif runtime == "runc":
                cmd += ["--runtime", clients.RUNC]
            return clients.run(cmd + list(args), timeout=timeout, input=input, check=check, env=self.env())
    return OverlayPodman


def client_layers(audit):
    """The rootfs "before" fs.root entry of the newest finalized record."""
    rd = newest_run_dir(audit)
    wait_finalized(audit)
    for line in open(os.path.join(rd, "events.ndjson")):
        e = json.loads(line)
        if e["type"] == "fs.root" and e["data"]["phase"] == "before":
            for t in e["data"]["trees"]:
                if t["name"] == "rootfs":
                    return t
    return {}


def bench_clients(agentshim, tar, n, result):
    """docker/podman run --rm IMAGE true, agentshim vs runc, interleaved."""
    os.environ["AGENTSHIM_BIN"] = os.path.realpath(agentshim)
    sys.path.insert(0, os.path.join(REPO, "integration"))
    try:
        import clients  # after AGENTSHIM_BIN is set (conftest reads it)
    except ModuleNotFoundError as e:  # the integration helpers need pytest
        print(f"clients: skipped: {e} in {sys.executable}; run with /usr/bin/python3 "
              "(Debian's python3-pytest, installed by scripts/deps.sh)")
        return
    if clients.ensure_packages():
        print("clients: docker/podman not installed (scripts/deps.sh); skipped")
        return
    img = "realimage:bench"

    def timed(call, rt):
        t = time.perf_counter()
        r = call(rt)
        if r.returncode:
            raise RuntimeError(f"{rt}: {r.stderr.decode(errors='replace')}")
        return time.perf_counter() - t

    def side_by_side(name, call, audit):
        times = {"runc": [], "agentshim": []}
        for rt in times:  # warm-up: the image's layers into agentshim's store
            timed(call, rt)
            if rt == "agentshim":
                wait_finalized(audit)
        for _ in range(n):
            for rt in times:
                times[rt].append(timed(call, rt))
                if rt == "agentshim":
                    wait_finalized(audit)  # (untimed) no record work during runc's turn
        m = {rt: med(v) for rt, v in times.items()}
        result[f"{name}_ms"] = m
        result[f"{name}_agentshim_vs_runc"] = m["agentshim"] / m["runc"]
        t = client_layers(audit)
        result[f"{name}_rootfs"] = t
        print(f"{name} run --rm IMAGE true, n={n}, median ms: agentshim {m['agentshim']:.1f}, runc {m['runc']:.1f}"
              f", ratio {m['agentshim'] / m['runc']:.2f} (target <= 1.2)")
        print(f"    rootfs before: entries={t.get('entries')} bytes_hashed={t.get('bytes_hashed')} "
              f"reused={t.get('reused')} layers=" +
              ", ".join(f"{l['role']}:{l['walk']}:{l['entries']}" for l in t.get("layers", [])))

    d = clients.Dockerd(clients.short_tmpdir("bdk"))
    try:
        d.start()
        with open(tar, "rb") as f:
            d("import", "-", img, input=f.read(), check=True, timeout=600)
        side_by_side("docker", lambda rt: d("run", "--rm", "--network", "none", f"--runtime={rt}", img, "true",
                                            timeout=300), d.audit)
    finally:
        d.stop()
    p = overlay_podman(clients)(clients.short_tmpdir("bpd"))
    try:
        p.out("import", tar, img, timeout=600)
        side_by_side("podman", lambda rt: p("run", "--rm", "--network", "none", *p.ulimits(), img, "true",
                                            runtime=rt, timeout=300), p.audit)
    finally:
        p.stop()


BURNER = r"""
import hashlib, os, sys
buf = os.urandom(1 << 20)
path = sys.argv[1]
while True:
    for _ in range(20):
        buf = hashlib.sha256(buf).digest() * (1 << 15)
    with open(path, "wb") as f:
        f.write(buf)
        f.flush()
        os.fsync(f.fileno())
"""


def start_load(n, work):
    """n build-like background processes (CPU, then a 1 MiB durable write)."""
    procs = []
    for i in range(n):
        procs.append(subprocess.Popen([sys.executable, "-c", BURNER, os.path.join(work, f"load{i}")]))
    return procs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--agentshim", default=os.path.join(REPO, "build", "shim", "agentshim"))
    ap.add_argument("-n", type=int, default=10)
    ap.add_argument("--tar", default=TARBALL)
    ap.add_argument("--smoke", action="store_true", help="busybox root, 2 iterations")
    ap.add_argument("--workdir", default="/var/tmp", help="where the bundle is unpacked")
    ap.add_argument("--no-clients", action="store_true", help="skip docker and podman")
    ap.add_argument("--load", type=int, default=0, metavar="N",
                    help="N build-like background processes during the measurements")
    args = ap.parse_args()
    n = 2 if args.smoke else args.n
    tarball = None if args.smoke else ensure_tarball(args.tar)
    work = tempfile.mkdtemp(prefix="asreal-", dir=args.workdir)
    undo = None
    load = []
    try:
        if args.load:
            load = start_load(args.load, work)
            print(f"under load: {args.load} build-like background processes")
        bundle = make_bundle(work, tarball, args.smoke)
        entries, size = image_stats(os.path.join(bundle, "rootfs"))
        print(f"image: {'busybox (smoke)' if args.smoke else 'Debian bookworm ' + PACKAGES}, "
              f"{size / 1e6:.0f} MB in regular files, {entries} entries")
        audit = os.path.join(work, "audit")
        log = os.path.join(work, "agentshim.log")
        runtimes = {"agentshim": (args.agentshim, ["--audit-dir", audit, "--log", log, "--debug"]),
                    "runc": (shutil.which("runc"), [])}
        if shutil.which("crun"):
            undo = crun_usable()
            if undo:
                runtimes["crun"] = (shutil.which("crun"), [])
        roots = {k: os.path.join(work, "state-" + k) for k in runtimes}
        # The warm-up's phases are not counted (measure() clears nothing:
        # the log is emptied after a first lifecycle of each).
        for name, (b, extra) in runtimes.items():
            lifecycle(b, roots[name], bundle, f"pre-{name}", extra)
            if name == "agentshim":
                wait_finalized(audit)
        open(log, "w").close()
        life, run = measure(runtimes, roots, bundle, audit, n, "")
        warm_phases = phases_from_log(log)
        warm_facts = fs_root_facts(audit)
        # Cold: no hash cache, the files' data in the page cache (read_all
        # before each run: this measures hashing, not the disk).
        open(log, "w").close()
        cold = []
        b, extra = runtimes["agentshim"]
        for i in range(max(1, n // 2)):
            shutil.rmtree(os.path.join(audit, "cache"), ignore_errors=True)
            read_all(os.path.join(bundle, "rootfs"))
            cold.append(run_once(b, roots["agentshim"], bundle, f"c{i}-agentshim", extra))
        cold_phases = phases_from_log(log)
        cold_facts = fs_root_facts(audit)

        result = {"image_bytes": size, "image_entries": entries, "n": n, "load": args.load,
                  "lifecycle_ms": {k: med(v) for k, v in life.items()},
                  "run_ms": {k: med(v) for k, v in run.items()},
                  "run_cold_ms": med(cold)}
        # The plain directory root (a `runc spec` bundle; no client makes
        # one): its only proof is the stat-only check, which `delete` waits
        # for (the caller removes the root after it), so the targets
        # are reported against the overlay root below, how Docker,
        # containerd, CRI and Podman run the same image.
        print("plain directory root (bounded by the stat-only check; the targets apply to the overlay root below)")
        print(f"lifecycle (create, start, wait, delete of `true`), warm, n={n}, median ms:")
        for k, v in result["lifecycle_ms"].items():
            print(f"  {k:10s} {v:8.1f}")
        print(f"run of `true` (agentshim's waits for the signed record), warm, n={n}, median ms:")
        for k, v in result["run_ms"].items():
            print(f"  {k:10s} {v:8.1f}")
        print(f"  agentshim, cold hash cache: {result['run_cold_ms']:.1f} ms (n={len(cold)})")
        for what, tgt_runc, tgt_crun in (("lifecycle", 1.2, 1.5), ("run", 2.0, None)):
            d = result[what + "_ms"]
            for other, tgt in (("runc", tgt_runc), ("crun", tgt_crun)):
                if other in d and d[other] > 0:
                    r = d["agentshim"] / d[other]
                    result[f"{what}_agentshim_vs_{other}"] = r
                    print(f"  {what}: agentshim / {other} = {r:.2f}  (plain directory root)")

        def summarize(label, ph, facts):
            if not ph:
                print(f"{label}: no phases in the debug log")
                return {}
            names = sorted({k for p in ph for k in p})
            s = {k: statistics.median([p.get(k, 0.0) for p in ph]) for k in names}
            print(f"{label} record phases (median ms over {len(ph)} runs): " +
                  ", ".join(f"{k} {v:.1f}" for k, v in s.items()))
            for (phase, tree), t in sorted(facts.items()):
                print(f"    fs.root {phase:6s} {tree:12s} entries={t.get('entries')} "
                      f"bytes_hashed={t.get('bytes_hashed')} cache_hits={t.get('cache_hits')} reused={t.get('reused')}"
                      + (f" walk={t['walk']}" if "walk" in t else ""))
            return s
        result["phases_warm_ms"] = summarize("warm", warm_phases, warm_facts)
        result["phases_cold_ms"] = summarize("cold", cold_phases, cold_facts)
        # The before-walk's two parts: the trees walked before the container
        # starts, and the read-only root walked while it runs.
        bw = result["phases_cold_ms"].get("before-walk", 0.0) + result["phases_cold_ms"].get(
            "before-walk-concurrent", 0.0)
        hashed = sum(t.get("bytes_hashed", 0) for (ph, _), t in cold_facts.items() if ph == "before")
        if bw:
            result["cold_hash_gb_s"] = hashed / 1e9 / (bw / 1000)
            print(f"  cold before-walk: {hashed / 1e6:.0f} MB hashed at {result['cold_hash_gb_s']:.2f} GB/s "
                  "(target >= 1 GB/s)")
        if not args.smoke:
            # The same image as containerd gives it to a container (a plain
            # directory root has nothing better than the stat-only check;
            # an image layer is proven from the store).
            ov, umount = make_overlay_bundle(work, bundle)
            # The layer directory was just renamed into place: the store
            # keeps no entry changed within 2 s of a walk (racy_ns), so a
            # layer is proven only by a run that starts later. Real image
            # layers are unpacked long before they run.
            time.sleep(2.5)
            try:
                olife, orun = measure(runtimes, roots, ov, audit, n, "ov")
                print("containerd-style overlay root (image snapshot as the lower layer, an empty upper):")
                print_ratios(result, "overlay_", olife, orun)
                t = client_layers(audit)
                result["overlay_rootfs"] = t
                print("    rootfs before: layers=" +
                      ", ".join(f"{l['role']}:{l['walk']}:{l['entries']}" for l in t.get("layers", [])))
            finally:
                umount()
        cache = os.path.join(audit, "cache", "fs-hash.lmdb")
        if os.path.exists(cache):
            result["hash_cache_bytes"] = os.stat(cache).st_blocks * 512
            print(f"  hash cache store: {result['hash_cache_bytes'] / 1e6:.1f} MB on disk")
        if not args.no_clients:
            tar = tarball
            if args.smoke:
                tar = os.path.join(work, "busybox.tar")
                sh(["tar", "-C", os.path.join(bundle, "rootfs"), "-cf", tar, "."], check=True)
            bench_clients(args.agentshim, tar, n, result)
        print(json.dumps(result))
    finally:
        for p in load:
            p.kill()
            p.wait()
        if undo:
            undo()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
