#!/usr/bin/env python3
"""fastlkm depmod against kmod's depmod, side by side on the same trees in one run.

Usage: benchmarks/depmod.py [--runs N] [--json FILE] [KERNEL...]

Each tree of the corpus (scripts/corpus.py) gets a shadow root whose modules directory
links to the real files, so both tools read the same bytes and write their own outputs.
Runs alternate between the tools; the table gives the median wall time of each, the
ratio fastlkm/kmod (below 1 is faster), and the peak resident memory of each.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
spec = importlib.util.spec_from_file_location("fastlkm_corpus", HERE.parent / "scripts/corpus.py")
assert spec is not None and spec.loader is not None
corpus = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = corpus
spec.loader.exec_module(corpus)


def shadow(root: Path, release: str, dest: Path) -> Path:
    for d in ("lib/modules", "usr/lib/modules"):
        src = root / d / release
        if src.is_dir() and not src.is_symlink():
            break
    moddir = dest / "lib/modules" / release
    moddir.mkdir(parents=True)
    keep = ("modules.order", "modules.builtin", "modules.builtin.modinfo")
    for e in src.iterdir():
        if e.name.startswith("modules.") and e.name not in keep:
            continue
        (moddir / e.name).symlink_to(e)
    return dest


def timed(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB, the largest process of the run) of *cmd*."""
    with tempfile.NamedTemporaryFile("r") as f:
        t = time.perf_counter()
        subprocess.run(["/usr/bin/time", "-f", "%M", "-o", f.name, *cmd], check=True,
                       stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t
        return wall, int(f.read().split()[-1])


def machine() -> str:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node()}: {os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json")
    ap.add_argument("kernels", nargs="*", default=list(corpus.KERNELS))
    a = ap.parse_args()
    fastlkm = shutil.which("fastlkm") or sys.exit("fastlkm is not installed")
    depmod = shutil.which("depmod") or sys.exit("kmod's depmod is not installed")
    rows = []
    print(f"machine: {machine()}")
    print(f"{'tree':18} {'modules':>7} {'kmod s':>8} {'fastlkm s':>9} {'ratio':>6} "
          f"{'kmod MiB':>8} {'fastlkm MiB':>11}")
    for name in a.kernels:
        root, release = corpus.fetch(name)
        with tempfile.TemporaryDirectory() as tmp:
            sh = shadow(root, release, Path(tmp) / "root")
            out = Path(tmp) / "out"
            k_times, f_times, k_mem, f_mem = [], [], [], []
            for _ in range(a.runs):
                w, m = timed([depmod, "-b", str(sh), release])
                k_times.append(w)
                k_mem.append(m)
                w, m = timed([fastlkm, "depmod", "-b", str(sh), release, "--kmod-compat",
                              "-o", str(out)])
                f_times.append(w)
                f_mem.append(m)
            same = all((out / f).read_bytes() == (sh / "lib/modules" / release / f).read_bytes()
                       for f in ("modules.dep", "modules.symbols"))
            nmods = (out / "modules.dep").read_text().count("\n")
        k, f = statistics.median(k_times), statistics.median(f_times)
        row = {"tree": name, "release": release, "modules": nmods, "kmod_s": k,
               "fastlkm_s": f, "ratio": f / k, "kmod_peak_kib": max(k_mem),
               "fastlkm_peak_kib": max(f_mem), "identical": same, "runs": a.runs}
        rows.append(row)
        print(f"{name:18} {nmods:7} {k:8.2f} {f:9.2f} {f / k:6.2f} {max(k_mem) / 1024:8.0f} "
              f"{max(f_mem) / 1024:11.0f}" + ("" if same else "  OUTPUT DIFFERS"))
    if a.json:
        Path(a.json).write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))
    return 0 if all(r["identical"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
