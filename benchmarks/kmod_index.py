#!/usr/bin/env python3
"""kmod's binary indexes built and written by the Python reference and by the C index.

Usage: benchmarks/kmod_index.py [--runs N] [--kernel NAME] [--version 30|34]

``fastlkm depmod`` writes the indexes of a corpus kernel (default 6.1-cloud-amd64) once;
the keys, values and priorities of ``modules.dep.bin``, ``modules.alias.bin`` and
``modules.symbols.bin`` are read back and inserted again, in kmod's symbol hash order,
into PyIndex and NativeIndex (one insert() per entry, and one insert_many()), each
written as kmod writes it.  Every run must give the bytes depmod wrote (kmod 34's layout;
for --version 30, the bytes of the Python reference).  The table gives
the median milliseconds of each and the ratio Python/native; a last line does the same
for hash_order() over the symbol names.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import corpus, machine

from fastlkm import cli
from fastlkm.depmod import compute as depmod
from fastlkm.depmod import kmod_index

FILES = ("modules.dep.bin", "modules.alias.bin", "modules.symbols.bin")
Entries = tuple[list[str], list[str], list[int]]


def entries(data: bytes) -> Entries:
    """Insertions that rebuild *data*: values of equal priority went in last first."""
    found = kmod_index.read_index(data)
    keys, values, prios = [], [], []
    for k in depmod.py_hash_order(list(found), depmod.SYMBOL_HASH_BUCKETS):
        for prio, v in reversed(found[k]):
            keys.append(k)
            values.append(v)
            prios.append(prio)
    return keys, values, prios


def one_by_one(cls: type) -> Callable[[Entries, int], bytes]:
    def build(e: Entries, version: int) -> bytes:
        ix = cls()
        insert = ix.insert
        for k, v, p in zip(*e, strict=True):
            insert(k, v, p)
        return ix.write(version)
    return build


def many(cls: type) -> Callable[[Entries, int], bytes]:
    def build(e: Entries, version: int) -> bytes:
        ix = cls()
        ix.insert_many(*e)
        return ix.write(version)
    return build


def median_ms(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--kernel", default="6.1-cloud-amd64")
    ap.add_argument("--version", type=int, default=34, choices=(30, 34))
    a = ap.parse_args()
    if not kmod_index.native_available():
        sys.exit("the C index (fastlkm.depmod._kmod_index) is not built")
    root, release = corpus.fetch(a.kernel)
    with tempfile.TemporaryDirectory() as out:
        cli.main(["depmod", "-b", str(root), release, "--into", out, "--no-cache"])
        written = {f: Path(out, f).read_bytes() for f in FILES}
    ways = {"python": one_by_one(kmod_index.PyIndex), "native": one_by_one(kmod_index.NativeIndex),
            "native insert_many": many(kmod_index.NativeIndex)}
    print(machine())
    print(f"{a.kernel}: build + write(version={a.version}), median of {a.runs} runs, ms")
    print(f"{'index':22} {'entries':>8} " + " ".join(f"{w:>19}" for w in ways) + "  python/native")
    totals = dict.fromkeys(ways, 0.0)
    for f in FILES:
        e = entries(written[f])
        want = written[f] if a.version == 34 else ways["python"](e, 30)
        ms = {}
        for w, build in ways.items():
            if build(e, a.version) != want:
                sys.exit(f"{w}: {f} differs from the one depmod wrote")
            ms[w] = median_ms(lambda b=build, e=e: b(e, a.version), a.runs)
            totals[w] += ms[w]
        print(f"{f:22} {len(e[0]):8} " + " ".join(f"{ms[w]:19.2f}" for w in ways) +
              f"  {ms['python'] / ms['native']:13.1f}")
    print(f"{'all three':22} {'':8} " + " ".join(f"{totals[w]:19.2f}" for w in ways) +
          f"  {totals['python'] / totals['native']:13.1f}")
    names = [k.removeprefix("symbol:") for k in kmod_index.read_index(written[FILES[2]])]
    py = median_ms(lambda: depmod.py_hash_order(names, depmod.SYMBOL_HASH_BUCKETS), a.runs)
    c = median_ms(lambda: depmod.hash_order(names, depmod.SYMBOL_HASH_BUCKETS), a.runs)
    print(f"hash_order, {len(names)} symbols: python {py:.2f} ms, native {c:.2f} ms, "
          f"python/native {py / c:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
