#!/usr/bin/env python3
"""``fastlkm hash`` on a whole tree against decompressing and recompressing the same files
with xz alone, both on every core.

Usage: benchmarks/hash.py [--runs N] [--json FILE] [--kernel NAME] [--style S]

The tree is the ``kernel/`` directory of a corpus kernel (default 6.12-amd64: 4,230
``.ko.xz``).  fastlkm runs ``fastlkm hash --style sysv --undef-hash --strip-signature
--output DIR TREE``: decompress, parse, build the tables, append them, recompress (xz,
CRC32, 1 MiB dictionary), write atomically (temporary file, fsync, rename).  The
baseline runs ``xz -dc FILE | xz -T1 --check=crc32 --lzma2=dict=1MiB > OUT`` for each
file, as many at once as there are cores (xargs -P), without fsync.  Runs alternate; the
medians of wall time and their ratio (fastlkm/xz; the target is 1.5 or less) are printed
with the machine, and the CPU time of each (user + system), which a busy machine
disturbs less.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import corpus, machine

XZ_LOOP = ('for f; do xz -dc "$f" | xz -T1 --check=crc32 --lzma2=dict=1MiB '
           '> "$OUT/$(printf %s "$f" | tr / _)"; done')



def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system, every process of the run)."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
    wall = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--kernel", default="6.12-amd64")
    ap.add_argument("--style", default="sysv")
    ap.add_argument("--json")
    a = ap.parse_args()
    fastlkm = shutil.which("fastlkm") or sys.exit("fastlkm is not installed")
    shutil.which("xz") or sys.exit("xz is not installed (Debian package xz-utils)")
    root, release = corpus.fetch(a.kernel)
    moddir = next(Path(root, d, release) for d in ("lib/modules", "usr/lib/modules")
                  if Path(root, d, release, "kernel").is_dir())
    tree = moddir / "kernel"
    files = sorted(str(p) for p in tree.rglob("*.ko.xz"))
    size = sum(os.path.getsize(f) for f in files)
    cores = os.cpu_count() or 1
    print(f"machine: {machine()}")
    print(f"tree: {tree} ({len(files)} .ko.xz, {size / 2**20:.0f} MiB)")
    f_times: list[float] = []
    x_times: list[float] = []
    f_cpu: list[float] = []
    x_cpu: list[float] = []
    with tempfile.TemporaryDirectory(prefix="fastlkm-bench-hash-") as tmp:
        listing = Path(tmp) / "files"
        listing.write_text("\0".join(files) + "\0")
        for run in range(a.runs):
            out = Path(tmp) / "fastlkm"
            shutil.rmtree(out, ignore_errors=True)
            w, c = timed([fastlkm, "hash", "--style", a.style, "--undef-hash",
                          "--strip-signature", "--output", str(out), str(tree)])
            f_times.append(w)
            f_cpu.append(c)
            xout = Path(tmp) / "xz"
            shutil.rmtree(xout, ignore_errors=True)
            xout.mkdir()
            env = {**os.environ, "OUT": str(xout)}
            w, c = timed(["sh", "-c", f"xargs -0 -P {cores} -n 16 sh -c '{XZ_LOOP}' "
                          f"sh < {listing}"], env)
            x_times.append(w)
            x_cpu.append(c)
            print(f"run {run + 1}: fastlkm {f_times[-1]:.1f} s ({f_cpu[-1]:.1f} s CPU), "
                  f"xz {x_times[-1]:.1f} s ({x_cpu[-1]:.1f} s CPU)", flush=True)
        done = sum(1 for _ in out.rglob("*.ko.xz"))
    f, x = statistics.median(f_times), statistics.median(x_times)
    fc, xc = statistics.median(f_cpu), statistics.median(x_cpu)
    print(f"median of {a.runs}: fastlkm hash {f:.1f} s, xz -d | xz {x:.1f} s, "
          f"ratio {f / x:.2f} (target <= 1.5); CPU {fc:.1f} s against {xc:.1f} s, ratio "
          f"{fc / xc:.2f}; {done} files written by fastlkm")
    if a.json:
        Path(a.json).write_text(json.dumps({
            "machine": machine(), "kernel": a.kernel, "release": release,
            "files": len(files), "style": a.style, "fastlkm_s": f_times, "xz_s": x_times,
            "fastlkm_cpu_s": f_cpu, "xz_cpu_s": x_cpu, "fastlkm_median_s": f,
            "xz_median_s": x, "ratio": f / x, "cpu_ratio": fc / xc}, indent=1))
    return 0 if done == len(files) else 1


if __name__ == "__main__":
    sys.exit(main())
