#!/usr/bin/env python3
"""The lookup strategies against the 2009 baseline (linear) and mainline (bsearch), in one
run, on the 6.12 amd64 kernel; checks the issue's targets and prints the ratios.

Usage: benchmarks/lookup.py [--repeats N] [--json FILE] [--plot FILE] [TARGET]

TARGET defaults to the Debian 6.12 amd64 snapshot shipped with fastlkm (the same facts as
the 6.12 tree of scripts/corpus.py).  Scenario "all" loads every module in dependency
order, "boot" the closure of the shipped desktop-like list.  Times come from the native
engine (median of the repeats); the machine is printed with them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fastlkm.bench.report import print_report
from fastlkm.bench.run import BenchResult, run_bench
from fastlkm.lookup import native
from fastlkm.target import open_system, shipped_snapshot


def speedup(b: BenchResult, name: str, base: str) -> float:
    r = {s.name: s for s in b.strategies}
    return r[base].ns_total / r[name].ns_total  # type: ignore[operator]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("target", nargs="?", default=str(shipped_snapshot()))
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json")
    ap.add_argument("--plot")
    a = ap.parse_args()
    if not native.available():
        sys.exit("the native engine is not built: no timings")
    system = open_system(a.target)
    results = {sc: run_bench(system, sc, repeats=a.repeats) for sc in ("all", "boot")}
    for b in results.values():
        print_report(b, sys.stdout, rich=False)
        print()
    al, bo = results["all"], results["boot"]
    best = max((s for s in al.strategies if s.ns_total),
               key=lambda s: speedup(al, s.name, "linear"))
    checks = [
        (f"all: best ({best.name}) >= 200x faster than linear",
         speedup(al, best.name, "linear"), 200),
        (f"all: best ({best.name}) >= 20x faster than bsearch",
         speedup(al, best.name, "bsearch"), 20),
    ]
    for n in ("sysv", "gnu"):
        checks.append((f"boot: {n} >= 96% less time than linear (25x)",
                       speedup(bo, n, "linear"), 25))
        checks.append((f"boot: {n} >= 2x faster than bsearch", speedup(bo, n, "bsearch"), 2))
    small = [s for s in bo.strategies if s.memory_per_export <= 3.0 and s.ns_total
             and s.name not in ("linear", "bsearch")]
    if small:
        s = max(small, key=lambda s: speedup(bo, s.name, "bsearch"))
        checks.append((f"boot: {s.name} ({s.memory_per_export:.2f} B/export) >= 2x faster "
                       "than bsearch", speedup(bo, s.name, "bsearch"), 2))
    print(f"machine: {al.machine}")
    ok = True
    for label, got, want in checks:
        met = got >= want
        ok &= met
        print(f"{'met ' if met else 'MISS'}  {label}: {got:,.1f}x")
    if a.json:
        Path(a.json).write_text(json.dumps({k: v.as_dict() for k, v in results.items()},
                                           indent=1))
    if a.plot:
        from fastlkm.bench.plot import plot

        plot([bo, al], a.plot)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
