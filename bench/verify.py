#!/usr/bin/env python3
"""`agentshim verify` of a 1,000,000-event log (target: seconds)."""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(REPO, "build"))
    ap.add_argument("-n", type=int, default=1_000_000)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="asbench-verify-")
    try:
        t = time.perf_counter()
        rd = subprocess.run([os.path.join(a.build, "bench", "gen_record"), work, str(a.n)], check=True,
                            stdout=subprocess.PIPE).stdout.decode().strip()
        gen = time.perf_counter() - t
        size = os.path.getsize(os.path.join(rd, "events.ndjson"))
        t = time.perf_counter()
        r = subprocess.run([os.path.join(a.build, "shim", "agentshim"), "--audit-dir", work, "verify", rd],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        ver = time.perf_counter() - t
        print(f"events: {a.n}, log {size / 1e6:.0f} MB; written in {gen:.2f} s; "
              f"verify: {r.stdout.decode().strip()} in {ver:.2f} s ({a.n / ver / 1e6:.2f} M events/s)")
        return 0 if r.returncode == 0 else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
