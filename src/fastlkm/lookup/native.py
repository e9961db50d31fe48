"""The native engine (_native.c): replays a session as replay() does, over the very layouts
the Python strategies build, counting the same operations, and times the lookups.

The layouts are built here with the strategies' own ``build`` (so they are the Python
layouts by construction) and packed into flat arrays for the C engine:

``tables``    'I', four words per table id: first entry, entries, license, layout offset.
              Ids: vmlinux's tables, then the tables of every module that ever loads, by
              owner id and table order (each is indexed once, up front).
``strings``   the names of every entry, each NUL-terminated, as ``__ksymtab_strings``.
``name_off``  'I', per entry: the offset of its name in ``strings``.
``flags``     per entry: its ``__kflagstab`` byte (0 unless the table is PER_ENTRY).
``layout``    'I', each table's layout at its offset:
              bsearch  has_order, order[n] when has_order
              sysv     nbucket, reciprocal (2 words), bucket[nbucket], then per entry
                       its chain link and its hash
              gnu      maskwords, shift2, nbuckets, 0, reciprocal of nbuckets (2
                       words), the 64-bit Bloom words (low, high), buckets[nbuckets],
                       chain[n], index[n]: one block, as a .gnu.hash section is
              perfect  fallback, then the bsearch layout when fallback is set, else
                       nbuckets, nslots, seed, slot width (2 or 4), nwords, the Bloom
                       words (low, high), the u16 pilots two to a word, the slots
                       (u16 two to a word, 0xFFFF empty, or u32, 0xFFFFFFFF empty)
              (a reciprocal is Lemire's fastmod constant: x % d without a division)
              linear and global have none (global builds its hash in C as it loads).
``modules``   'I', two words per module slot (owners by id): first table id, tables.
``events``    'I', three words per event: op, arg (module slot, or the offset of the
              looked-up name in ``lnames``), gplok.

Without the compiled extension the package works as before and available() is False.
"""

from __future__ import annotations

import statistics
import time
from array import array
from dataclasses import dataclass
from itertools import accumulate

from fastlkm.lookup.base import PER_ENTRY, Counters, Table
from fastlkm.lookup.hashes import hash_id
from fastlkm.lookup.replay import LOAD, LOOKUP, UNLOAD, Event, Result
from fastlkm.lookup.space import global_buckets, global_memory
from fastlkm.lookup.strategies import Strategy, TableIndex, index_width

try:
    from fastlkm.lookup import _native  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - built without a C compiler
    _native = None

KINDS = {"linear": 0, "bsearch": 1, "sysv": 2, "gnu": 3, "perfect": 4, "global": 5}


def available() -> bool:
    """Is the compiled engine there?"""
    return _native is not None


@dataclass
class NativeRun:
    counters: Counters
    results: list[Result]        # per lookup, as Replay.results
    ns_runs: list[int]           # lookup time of each repeat
    ns_total: int                # median of ns_runs
    ns_per_lookup: float
    memory: int                  # as Replay.memory: bytes the strategy added
    lookups: int
    ns_update: list[int]         # LOAD/UNLOAD work of each repeat (global: inserts, rehash)


@dataclass(frozen=True)
class Packed:
    """A session packed for the engine, with what it takes to read the results back."""

    strategy: Strategy
    tables: tuple[Table, ...]    # by table id
    nvmlinux: int
    buffers: tuple[object, ...]  # tables .. events, lnames: the engine's arguments
    lookups: int
    memory: int
    build_s: float               # seconds spent building the layouts


def _cstrings(names: list[bytes]) -> tuple[bytes, array]:
    """Names NUL-terminated end to end, and the offset of each."""
    blob = b"".join(n + b"\0" for n in names)
    if blob.count(b"\0") != len(names):
        raise ValueError("a name holds a NUL byte: the kernel could not compare it")
    off = array("I", [0])
    off.extend(accumulate(len(n) + 1 for n in names))
    off.pop()
    return blob, off


# --- layouts, as strategies.py exports them with arrays() --------------------------


def _lay_bsearch(lay: array, a: dict[str, list[int]]) -> None:
    order = a.get("order")
    if order is None:
        lay.append(0)
    else:
        lay.append(1)
        lay.extend(order)


def _reciprocal(d: int) -> tuple[int, int]:
    """Lemire's fastmod constant for d (as the kernel's reciprocal_div): low, high words."""
    m = ((1 << 64) - 1) // d + 1 & ((1 << 64) - 1)
    return m & 0xFFFFFFFF, m >> 32


def _lay_sysv(lay: array, a: dict[str, list[int]]) -> None:
    nb = len(a["bucket"])
    lay.extend((nb, *_reciprocal(nb)))
    lay.extend(a["bucket"])
    for link, h in zip(a["chain"], a["hashes"], strict=True):
        lay.extend((link, h))


def _pack16(lay: array, values: list[int]) -> None:
    """u16 values, two to a word (the first in the low half)."""
    for i in range(0, len(values), 2):
        hi = values[i + 1] if i + 1 < len(values) else 0
        lay.append(values[i] | hi << 16)


def _lay_gnu(lay: array, a: dict[str, list[int]], idx: TableIndex) -> None:
    shift2 = idx.shift2  # type: ignore[attr-defined]  # not an array: a scalar of the layout
    lay.extend((len(a["bloom_lo"]), shift2, len(a["buckets"]), 0,
                *_reciprocal(len(a["buckets"]))))
    for lo, hi in zip(a["bloom_lo"], a["bloom_hi"], strict=True):
        lay.extend((lo, hi))
    lay.extend(a["buckets"])
    lay.extend(a["chain"])
    lay.extend(a["index"])


def _lay_perfect(lay: array, a: dict[str, list[int]], n: int) -> None:
    if "fallback" in a:
        lay.append(1)
        _lay_bsearch(lay, a)
        return
    nbuckets, nslots, seed, nwords = a["params"]
    width = index_width(n)
    lay.extend((0, nbuckets, nslots, seed, width, nwords))
    for lo, hi in zip(a["bloom_lo"], a["bloom_hi"], strict=True):
        lay.extend((lo, hi))
    _pack16(lay, a["pilots"])
    if width == 2:
        _pack16(lay, [s & 0xFFFF for s in a["slots"]])
    else:
        lay.extend(a["slots"])


def _layouts(strategy: Strategy, tables: list[Table]
             ) -> tuple[array, list[int], list[int]]:
    """Each table's index, built by the strategy and packed: the layouts, the
    layout offset and the memory of each table."""
    lay = array("I")
    offsets, memory = [], []
    kind = strategy.kind
    for t in tables:
        offsets.append(len(lay))
        if strategy.build is None:
            memory.append(0)
            continue
        idx = strategy.build(t)
        memory.append(idx.memory)
        a = idx.arrays()
        if kind == "bsearch":
            _lay_bsearch(lay, a)
        elif kind == "sysv":
            _lay_sysv(lay, a)
        elif kind == "gnu":
            _lay_gnu(lay, a, idx)
        elif kind == "perfect":
            _lay_perfect(lay, a, len(t.names))
    return lay, offsets, memory


def _global_memory(vmlinux: list[Table], modules: dict[int, list[Table]],
                   events: list[Event]) -> int:
    """Replay.memory of ``global``: GlobalSpace's peak, from its counts alone."""
    nbuckets, count, owned = 1, 0, {}
    nbuckets = global_buckets(nbuckets, sum(len(t.names) for t in vmlinux))
    for t in vmlinux:
        nbuckets = global_buckets(nbuckets, count + len(t.names))
        count += len(t.names)
    peak = global_memory(count, nbuckets)
    for ev in events:
        if ev.op == LOAD:
            n = 0
            for t in modules[ev.owner]:
                nbuckets = global_buckets(nbuckets, count + len(t.names))
                count += len(t.names)
                n += len(t.names)
            owned[ev.owner] = n
            peak = max(peak, global_memory(count, nbuckets))
        elif ev.op == UNLOAD:
            count -= owned.pop(ev.owner, 0)
    return peak


def pack(strategy: Strategy, vmlinux: list[Table], modules: dict[int, list[Table]],
         events: list[Event]) -> Packed:
    """Build every table's layout once and pack the session for the engine."""
    if strategy.kind not in KINDS:
        raise ValueError(f"{strategy.name}: no native engine for layout {strategy.kind!r}")
    hash_id(strategy.hash)
    loaded = {ev.owner for ev in events if ev.op == LOAD}
    owners = sorted(loaded | {ev.owner for ev in events if ev.op == UNLOAD})
    slot = {o: k for k, o in enumerate(owners)}
    tables = list(vmlinux)
    mods = array("I")
    for o in owners:
        ts = modules[o] if o in loaded else []
        mods.extend((len(tables), len(ts)))
        tables.extend(ts)

    t0 = time.perf_counter()
    lay, lay_off, idx_mem = _layouts(strategy, tables)
    build_s = time.perf_counter() - t0

    names: list[bytes] = []
    flags = bytearray()
    recs = array("I")
    for t, off in zip(tables, lay_off, strict=True):
        n = len(t.names)
        if t.license == PER_ENTRY:
            if len(t.flags) < n:
                raise ValueError(f"{t.name}: {n} entries but {len(t.flags)} flags")
            flags += t.flags[:n]
        else:
            flags += bytes(n)
        recs.extend((len(names), n, t.license, off))
        names += t.names
    strings, name_off = _cstrings(names)

    lnames: dict[bytes, int] = {}
    ev_words: list[int] = []
    pos = 0
    for ev in events:
        if ev.op == LOOKUP:
            off = lnames.get(ev.name)
            if off is None:
                off = lnames[ev.name] = pos
                pos += len(ev.name) + 1
            ev_words += (LOOKUP, off, 1 if ev.gplok else 0)
        elif ev.op in (LOAD, UNLOAD):
            if ev.op == LOAD and ev.owner not in modules:
                raise KeyError(ev.owner)
            ev_words += (ev.op, slot[ev.owner], 0)
        else:
            raise ValueError(f"unknown event op {ev.op}")
    lblob, _ = _cstrings(list(lnames))
    nlookups = len(ev_words) // 3 - sum(1 for ev in events if ev.op != LOOKUP)

    if strategy.per_table:
        per_owner = {o: sum(idx_mem[mods[2 * k]:mods[2 * k] + mods[2 * k + 1]])
                     for k, o in enumerate(owners)}
        memory = sum(idx_mem[:len(vmlinux)]) + \
            sum(per_owner[ev.owner] for ev in events if ev.op == LOAD)
    else:
        memory = _global_memory(vmlinux, modules, events)

    buffers = (recs, strings, name_off, bytes(flags), lay, mods,
               array("I", ev_words), lblob)
    return Packed(strategy, tuple(tables), len(vmlinux), buffers, nlookups, memory, build_s)


def run_packed(p: Packed, *, repeats: int = 5, precomputed: bool = True,
               count: bool = True) -> NativeRun:
    """Replay a packed session: one counting pass (unless not *count*: no counters and no
    results), then *repeats* timed ones."""
    if _native is None:
        raise RuntimeError("the native engine (fastlkm.lookup._native) is not built")
    res_table = array("i", bytes(4 * p.lookups))
    res_index = array("I", bytes(4 * p.lookups))
    counts, ns_runs, ns_update = _native.replay(
        KINDS[p.strategy.kind], hash_id(p.strategy.hash), precomputed, count, repeats,
        p.nvmlinux,
        *p.buffers, res_table, res_index)
    where = [(t.owner, t.name) for t in p.tables]
    results: list[Result] = [None if tid < 0 else (*where[tid], i)
                             for tid, i in zip(res_table, res_index, strict=True)]
    ns_total = int(statistics.median(ns_runs)) if ns_runs else 0
    return NativeRun(Counters(*counts), results, ns_runs, ns_total,
                     ns_total / p.lookups if p.lookups else 0.0, p.memory, p.lookups,
                     ns_update)


def run(strategy: Strategy, vmlinux: list[Table], modules: dict[int, list[Table]],
        events: list[Event], *, repeats: int = 5, precomputed: bool = True) -> NativeRun:
    """replay() in C: the same results and counts, and each repeat's lookup time."""
    return run_packed(pack(strategy, vmlinux, modules, events), repeats=repeats,
                      precomputed=precomputed)

