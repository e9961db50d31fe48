#!/usr/bin/env python3
"""The lookup strategies against the 2009 baseline (linear) and mainline (bsearch), in one
run, on the 6.12 amd64 kernel; checks the issue's targets and prints the ratios.

What a module load costs is the lookups plus keeping the index: inserting a module's
exports when it loads (and, for global, vmlinux's at boot) and removing them when it
unloads.  Each scenario ends by unloading every module, last first, so the engine times
both; the winner is the strategy with the least lookups-plus-upkeep time ("all-in"), per
scenario.  The lookup issue's targets are on lookup time alone and are labelled so.

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
    """Lookup time of *base* over that of *name*."""
    r = {s.name: s for s in b.strategies}
    return r[base].ns_total / r[name].ns_total  # type: ignore[operator]


def speedup_all(b: BenchResult, name: str, base: str) -> float:
    """Lookups plus index upkeep of *base* over those of *name*."""
    r = {s.name: s for s in b.strategies}
    return r[base].ns_all / r[name].ns_all  # type: ignore[operator]


def winner(b: BenchResult) -> str:
    """The strategy whose loads cost least in all."""
    return min((s for s in b.strategies if s.ns_all), key=lambda s: s.ns_all).name  # type: ignore[arg-type,return-value]


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
    results = {sc: run_bench(system, sc, repeats=a.repeats, unload=True)
               for sc in ("all", "boot")}
    for b in results.values():
        print_report(b, sys.stdout, rich=False)
        print()
    for sc, b in results.items():
        w = winner(b)
        per_load = {s.name: s.ns_per_load for s in b.strategies}
        print(f"{sc}: winner on lookups plus index upkeep: {w} "
              f"({per_load[w] / 1e3:,.1f} us per module load; "  # type: ignore[operator]
              f"{speedup_all(b, w, 'linear'):,.1f}x linear's, "
              f"{speedup_all(b, w, 'bsearch'):,.1f}x bsearch's)")
    al, bo = results["all"], results["boot"]
    fastest = max((s for s in al.strategies if s.ns_total),
                  key=lambda s: speedup(al, s.name, "linear"))
    checks = [
        (f"all: fastest lookups ({fastest.name}) >= 200x faster than linear, lookup time",
         speedup(al, fastest.name, "linear"), 200),
        (f"all: fastest lookups ({fastest.name}) >= 20x faster than bsearch, lookup time",
         speedup(al, fastest.name, "bsearch"), 20),
    ]
    for n in ("sysv", "gnu"):
        checks.append((f"boot: {n} >= 96% less time than linear (25x), lookup time",
                       speedup(bo, n, "linear"), 25))
        checks.append((f"boot: {n} >= 2x faster than bsearch, lookup time",
                       speedup(bo, n, "bsearch"), 2))
    small = [s for s in bo.strategies if s.memory_per_export <= 3.0 and s.ns_total
             and s.name not in ("linear", "bsearch")]
    if small:
        s = max(small, key=lambda s: speedup(bo, s.name, "bsearch"))
        checks.append((f"boot: {s.name} ({s.memory_per_export:.2f} B/export) >= 2x faster "
                       "than bsearch, lookup time", speedup(bo, s.name, "bsearch"), 2))
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
