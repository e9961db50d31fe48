#!/usr/bin/env python3
"""Every lookup strategy measured by the patched kernel itself, against the 2009 baseline
(linear) and mainline (bsearch), in one boot; checks the kernel issue's targets.

Usage: benchmarks/kernel.py [--rounds N] [--json FILE] [--clock icount|host]

Builds the patched Debian 6.12 kernel once (``fastlkm kernel build``, cached), boots it
under QEMU (TCG) with ``module.sig_enforce=1`` and loads and unloads every module of the
build per strategy, strategies interleaved across the rounds (``fastlkm kernel bench``).
Every run checks itself: each strategy's lookup, strcmp, chain-step and Bloom counts
must equal the loader model's, every round, with no self-check mismatch and no load
failure; a difference exits 1 whatever the times.  Times are the median of the rounds
(the spread beside them), ratios between strategies of the same boot; TCG models no
caches.  ``--clock icount`` (the default) makes the guest's clock count instructions, so
the figures do not move with the host's load; ``--clock host`` times the emulation.
"""

from __future__ import annotations

import argparse
import sys

from common import machine

from fastlkm.kbuild.bench import KernelReport, run_bench


def reduction(r: KernelReport, name: str, base: str) -> float:
    s = {x.name: x for x in r.strategies}
    return 1 - s[name].kernel_ns_per_lookup / s[base].kernel_ns_per_lookup


def speedup(r: KernelReport, name: str, base: str) -> float:
    s = {x.name: x for x in r.strategies}
    return s[base].kernel_ns_per_lookup / s[name].kernel_ns_per_lookup


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json")
    ap.add_argument("--clock", choices=("icount", "host"), default="icount")
    a = ap.parse_args()
    print(f"machine: {machine()}")
    r = run_bench(rounds=a.rounds, json_path=a.json, clock=a.clock)
    print(r.text())
    checks = [
        ("bsearch >= 90% less time than linear (Jenkins 2009)",
         reduction(r, "bsearch", "linear"), 0.90, "{:.1%}"),
        ("sysv >= 96% less time than linear (Amoroso 2009)",
         reduction(r, "sysv", "linear"), 0.96, "{:.1%}"),
        ("gnu >= 2x faster than bsearch", speedup(r, "gnu", "bsearch"), 2.0, "{:.2f}x"),
        ("perfect >= 2x faster than bsearch", speedup(r, "perfect", "bsearch"), 2.0,
         "{:.2f}x"),
        ("global >= 5x faster than bsearch", speedup(r, "global", "bsearch"), 5.0,
         "{:.2f}x"),
    ]
    print()
    for what, got, want, fmt in checks:
        print(f"{'met    ' if got >= want else 'NOT met'} {what}: {fmt.format(got)}")
    if not r.ok:
        print("FAILED: the kernel's counts differ from the model's, or a module failed to "
              "load, or the self-check found a difference", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
