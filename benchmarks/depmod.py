#!/usr/bin/env python3
"""fastlkm depmod against kmod's depmod, side by side on the same trees in one run.

Usage: benchmarks/depmod.py [--runs N] [--json FILE] [KERNEL...]

Each tree of the corpus (scripts/corpus.py) gets a shadow root whose modules directory
links to the real files, so both tools read the same bytes and write their own outputs.
Runs alternate between kmod, fastlkm cold (an empty cache directory every run) and
fastlkm warm (the cache a previous run left); the table gives the median wall time of
each, the ratios fastlkm/kmod (below 1 is faster) and the peak resident memory.

Every run's output is checked, outside the timing: after each kmod run the files it
wrote (every modules.* file but the inputs modules.order, .builtin, .builtin.modinfo)
must equal its first run's, and after each fastlkm run, cold or warm, every one of them
must have been written anew by that run (a new inode: writes replace files) and equal
kmod's byte for byte.  The exit status is 1 if any run's output differs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import corpus, machine


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB, the largest process of the run) of *cmd*."""
    with tempfile.NamedTemporaryFile("r") as f:
        t = time.perf_counter()
        subprocess.run(["/usr/bin/time", "-f", "%M", "-o", f.name, *cmd], check=True,
                       stdout=subprocess.DEVNULL, env=env)
        wall = time.perf_counter() - t
        return wall, int(f.read().split()[-1])


INPUTS = ("modules.order", "modules.builtin", "modules.builtin.modinfo")


def outputs(d: Path) -> dict[str, tuple[int, bytes]]:
    """The depmod outputs in *d*: name -> (inode, bytes)."""
    return {p.name: (p.stat().st_ino, p.read_bytes()) for p in sorted(d.iterdir())
            if p.name.startswith("modules.") and p.name not in INPUTS
            and p.is_file() and not p.is_symlink()}


def differences(got: dict[str, tuple[int, bytes]], want: dict[str, tuple[int, bytes]],
                before: dict[str, tuple[int, bytes]]) -> list[str]:
    """Why *got*, written by one run over *before*, is not *want*; [] if it is."""
    why = [f"{n} missing" for n in sorted(set(want) - set(got))]
    why += [f"{n} extra" for n in sorted(set(got) - set(want))]
    why += [f"{n} differs" for n in sorted(set(got) & set(want)) if got[n][1] != want[n][1]]
    why += [f"{n} not rewritten" for n in sorted(got) if n in before
            and before[n][0] == got[n][0]]
    return why


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json")
    ap.add_argument("kernels", nargs="*", default=list(corpus.KERNELS))
    a = ap.parse_args()
    # the entry script beside this Python (a version manager's shim would add its own
    # start-up to every run)
    here = Path(sys.executable).parent / "fastlkm"
    fastlkm = str(here) if here.exists() else shutil.which("fastlkm")
    if fastlkm is None:
        sys.exit("fastlkm is not installed")
    depmod = shutil.which("depmod") or sys.exit("kmod's depmod is not installed")
    version = subprocess.run([depmod, "--version"], capture_output=True, text=True).stdout
    if not version.startswith("kmod version 30"):   # the outputs compared are kmod 30's
        sys.exit(f"{depmod} is not kmod 30: {version.splitlines()[:1]}")
    # byte-compile fastlkm once, so that no run pays for compiling its sources (this
    # machine sets PYTHONDONTWRITEBYTECODE; an installed package has its .pyc)
    import fastlkm as package

    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(package.__file__).parent)],
                   check=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": ""})
    rows = []
    print(f"machine: {machine()}")
    print(f"{'tree':18} {'modules':>7} {'kmod s':>7} {'cold s':>7} {'warm s':>7} "
          f"{'cold/kmod':>9} {'warm/kmod':>9} {'kmod MiB':>8} {'cold MiB':>8} {'warm MiB':>8}")
    for name in a.kernels:
        root, release = corpus.fetch(name)
        with tempfile.TemporaryDirectory() as tmp:
            sh = corpus.shadow_root(root, release, Path(tmp) / "root")
            out = Path(tmp) / "out"
            cache = Path(tmp) / "cache"
            warm_env = {**os.environ, "XDG_CACHE_HOME": str(cache / "warm")}
            ours = [fastlkm, "depmod", "-b", str(sh), release, "--kmod-compat=30", "--into",
                    str(out)]
            subprocess.run(ours, check=True, env=warm_env)   # fills the warm cache
            moddir = sh / "lib/modules" / release
            t: dict[str, list[float]] = {"kmod": [], "cold": [], "warm": []}
            m: dict[str, list[int]] = {"kmod": [], "cold": [], "warm": []}
            bad: list[str] = []
            theirs: dict[str, tuple[int, bytes]] = {}
            for i in range(a.runs):
                cold_env = {**os.environ, "XDG_CACHE_HOME": str(cache / f"cold{i}")}
                for kind, cmd, env, where in (
                        ("kmod", [depmod, "-b", str(sh), release], None, moddir),
                        ("cold", ours, cold_env, out), ("warm", ours, warm_env, out)):
                    before = outputs(where)
                    w, k = timed(cmd, env)
                    t[kind].append(w)
                    m[kind].append(k)
                    got = outputs(where)
                    if not theirs:   # kmod's first run: what every later run must equal
                        theirs = got
                        continue
                    bad.extend(f"{kind} run {i + 1}: {why}"
                               for why in differences(got, theirs, before))
            same = not bad and bool(theirs)
            for why in bad[:20]:
                print(f"{name}: {why}", file=sys.stderr)
            nmods = (out / "modules.dep").read_text().count("\n")
        med = {k: statistics.median(v) for k, v in t.items()}
        row = {"tree": name, "release": release, "modules": nmods, "runs": a.runs,
               "kmod_s": med["kmod"], "cold_s": med["cold"], "warm_s": med["warm"],
               "cold_ratio": med["cold"] / med["kmod"], "warm_ratio": med["warm"] / med["kmod"],
               "kmod_peak_kib": max(m["kmod"]), "cold_peak_kib": max(m["cold"]),
               "warm_peak_kib": max(m["warm"]), "identical": same,
               "files_compared": sorted(theirs)}
        rows.append(row)
        print(f"{name:18} {nmods:7} {med['kmod']:7.2f} {med['cold']:7.2f} {med['warm']:7.2f} "
              f"{row['cold_ratio']:9.2f} {row['warm_ratio']:9.2f} "
              f"{max(m['kmod']) / 1024:8.0f} {max(m['cold']) / 1024:8.0f} "
              f"{max(m['warm']) / 1024:8.0f}" + ("" if same else "  OUTPUT DIFFERS"))
    if a.json:
        Path(a.json).write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))
    return 0 if all(r["identical"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
