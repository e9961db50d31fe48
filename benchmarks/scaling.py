#!/usr/bin/env python3
"""Parse time against input size: no quadratic blow-up, measured as a ratio.

Usage: benchmarks/scaling.py [--factor F]

A module with 100,000 and one with 1,000,000 undefined symbols, and one with 100,000 and
one with 1,000,000 relocations on ``__ksymtab`` (the inputs of tests/kernel/test_scaling.py,
which counts the calls of smaller parses): each parse is timed as process CPU time, best
of 3, and the ratio large/small must stay under F (default 25; linear: about 10,
quadratic: about 100).  Also the search of a hostile image full of stream magics
(tests/kernel/test_vmlinuz.py counts what it tries), timed beside the same search on an
image of the same size with no magic in it; printed, no target.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable
from pathlib import Path

from fastlkm.errors import FormatError
from fastlkm.kernel.module import parse_module
from fastlkm.kernel.vmlinuz import extract_vmlinux

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import machine
from tests.kernel.test_scaling import module_with_exports, module_with_imports
from tests.kernel.test_vmlinuz import VMLINUX, encode, hostile_image

SMALL, LARGE = 100_000, 1_000_000


def cpu(fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(3):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return best


def search(image: bytes) -> None:
    with contextlib.suppress(FormatError):
        extract_vmlinux(image)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--factor", type=float, default=25)
    a = ap.parse_args()
    print(f"machine: {machine()}")
    ok = True
    for label, build, per in (("symbols", module_with_imports, 1),
                              ("ksymtab relocations", module_with_exports, 2)):
        small, large = build(SMALL // per), build(LARGE // per)
        t_small = cpu(lambda s=small: parse_module(s, "s.ko"))
        t_large = cpu(lambda b=large: parse_module(b, "l.ko"))
        ratio = t_large / max(t_small, 1e-3)
        met = ratio < a.factor
        ok &= met
        print(f"{'met ' if met else 'MISS'}  {label}: {SMALL:,} in {t_small:.3f} s, "
              f"{LARGE:,} in {t_large:.3f} s: {ratio:.1f}x (< {a.factor:g}x)")
    hostile = hostile_image() + encode("gzip", VMLINUX)
    plain = bytes(len(hostile) - len(encode("gzip", VMLINUX))) + encode("gzip", VMLINUX)
    t_hostile, t_plain = cpu(lambda: search(hostile)), cpu(lambda: search(plain))
    print(f"      hostile image search: {t_hostile:.3f} s, the same size without magics "
          f"{t_plain:.3f} s: {t_hostile / max(t_plain, 1e-3):.1f}x")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
