"""The lookup strategies, each over the layout a kernel would hold in memory.

Per-table strategies index one export table each and are searched table by table in the
kernel's order (find_symbol()); ``global`` keeps one index over every loaded export.
None reorders ``__ksymtab``: a layout that needs another order carries its own index
array, and its memory counts.  Layouts are documented in docs/lookup.md; the native
engine (_native.c) runs these very arrays, exported by ``arrays()``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

from fastlkm.lookup.base import Counters, Table, is_sorted, strcmp
from fastlkm.lookup.hashes import djb_hash, elf_hash, mix32

# binutils' bucket counts for .hash (compute_bucket_count() without optimisation)
ELF_BUCKETS = (1, 3, 17, 37, 67, 97, 131, 197, 263, 521, 1031, 2053, 4099, 8209, 16411,
               32771)


def bucket_count(nsyms: int, gnu: bool = False) -> int:
    best = 1
    for i, b in enumerate(ELF_BUCKETS):
        best = b
        if i + 1 == len(ELF_BUCKETS) or nsyms < ELF_BUCKETS[i + 1]:
            break
    return max(best, 2) if gnu else best


def index_width(n: int) -> int:
    """Bytes per entry of an index array into a table of *n* entries."""
    return 2 if n < 0xFFFF else 4


class TableIndex:
    """A strategy's index over one table."""

    memory: int = 0           # bytes added beside the table

    def find(self, name: bytes, h: int, c: Counters) -> int | None:
        raise NotImplementedError

    def arrays(self) -> dict[str, list[int]]:
        """The layout's arrays, for the native engine."""
        return {}


@dataclass
class Strategy:
    """A named way to find a symbol; *hash* is None for strategies that never hash."""

    name: str
    kind: str                                  # the native engine's name for the layout
    hash: Callable[[bytes], int] | None
    build: Callable[[Table], TableIndex] | None   # None: one global index
    description: str = ""

    @property
    def per_table(self) -> bool:
        return self.build is not None


# --- linear: strcmp through each table (the 2009 baseline) ----------------------------


class LinearIndex(TableIndex):
    def __init__(self, t: Table):
        self.names = t.names

    def find(self, name: bytes, h: int, c: Counters) -> int | None:
        c.tables_visited += 1
        for i, n in enumerate(self.names):
            if strcmp(name, n, c) == 0:
                return i
        return None


# --- bsearch: binary search in each sorted table (mainline since Linux 3.0) -----------


class BsearchIndex(TableIndex):
    """bsearch() of lib/bsearch.c over the table, or over a sorted index array when the
    table itself is not sorted (tables before Linux 3.0)."""

    def __init__(self, t: Table):
        self.names = t.names
        n = len(t.names)
        if is_sorted(t.names):
            self.order: list[int] | None = None
        else:
            self.order = sorted(range(n), key=lambda i: t.names[i])
            self.memory = n * index_width(n)

    def find(self, name: bytes, h: int, c: Counters) -> int | None:
        c.tables_visited += 1
        names, order = self.names, self.order
        base, num = 0, len(names)
        while num > 0:
            pivot = base + (num >> 1)
            i = order[pivot] if order is not None else pivot
            r = strcmp(name, names[i], c)
            if r == 0:
                return i
            if r > 0:
                base = pivot + 1
                num -= 1
            num >>= 1
        return None

    def arrays(self) -> dict[str, list[int]]:
        return {"order": self.order} if self.order is not None else {}

    @classmethod
    def from_arrays(cls, names: list[bytes], a: dict[str, list[int]],
                    memory: int) -> BsearchIndex:
        """The index whose arrays() are *a*, nothing recomputed (a stored table)."""
        idx = cls.__new__(cls)
        idx.names, idx.order, idx.memory = names, a.get("order"), memory
        return idx


# --- sysv: a SysV ELF .hash per table, hashes stored beside the exports ---------------


class SysvIndex(TableIndex):
    """Amoroso's Fast LKM table: nbucket, nchain, bucket[], chain[] as an ELF .hash
    (entries 1-based, 0 ends a chain), plus the full hash of each export so that a
    mismatch costs no strcmp."""

    def __init__(self, t: Table, hashfn: Callable[[bytes], int]):
        self.names = t.names
        n = len(t.names)
        self.nbucket = bucket_count(n)
        self.hashes = [hashfn(x) for x in t.names]
        self.bucket = [0] * self.nbucket
        self.chain = [0] * n
        for i, h in enumerate(self.hashes):
            b = h % self.nbucket
            self.chain[i] = self.bucket[b]
            self.bucket[b] = i + 1
        self.memory = 4 * (2 + self.nbucket + n) + 4 * n

    def find(self, name: bytes, h: int, c: Counters) -> int | None:
        c.tables_visited += 1
        c.bucket_steps += 1
        j = self.bucket[h % self.nbucket]
        while j:
            c.chain_steps += 1
            i = j - 1
            if self.hashes[i] == h and strcmp(name, self.names[i], c) == 0:
                return i
            j = self.chain[i]
        return None

    def arrays(self) -> dict[str, list[int]]:
        # the native layout keeps each entry's chain link beside its hash (one cache line)
        return {"bucket": self.bucket, "chain": self.chain, "hashes": self.hashes}

    @classmethod
    def from_arrays(cls, names: list[bytes], a: dict[str, list[int]],
                    memory: int) -> SysvIndex:
        """The index whose arrays() are *a*, nothing recomputed (a stored table)."""
        idx = cls.__new__(cls)
        idx.names, idx.nbucket, idx.memory = names, len(a["bucket"]), memory
        idx.bucket, idx.chain, idx.hashes = a["bucket"], a["chain"], a["hashes"]
        return idx


# --- gnu: DT_GNU_HASH with its Bloom filter, per table ---------------------------------

BLOOM_WORD_BITS = 64   # ELFCLASS64 Bloom words, as on the 64-bit kernels measured


def _log2_up(x: int) -> int:
    """bfd_log2(): log base 2, rounded up."""
    return max(0, (x - 1).bit_length())


class GnuIndex(TableIndex):
    """A DT_GNU_HASH section as binutils lays it out (bloom words, buckets, the chain of
    hash values with the low bit ending a bucket's run), with symoffset 1 so that bucket
    0 means empty.  The chain is grouped by bucket, so an index array maps chain
    position -> __ksymtab entry."""

    def __init__(self, t: Table, hashfn: Callable[[bytes], int] = djb_hash):
        self.names = t.names
        n = len(t.names)
        hashes = [hashfn(x) for x in t.names]
        self.nbuckets = bucket_count(n, gnu=True)
        # bloom sizing of binutils' elf_gnu_hash sizing (elflink.c)
        m = _log2_up(n) + 1
        if m < 3:
            m = 5
        elif (1 << (m - 2)) & n:
            m += 3
        else:
            m += 2
        shift1 = 6
        if m == 5:
            m = 6
        self.shift2 = m
        self.maskwords = 1 << (m - shift1)
        self.bloom = [0] * self.maskwords
        for h in hashes:
            w = (h // BLOOM_WORD_BITS) & (self.maskwords - 1)
            self.bloom[w] |= (1 << (h % BLOOM_WORD_BITS)) | \
                (1 << ((h >> self.shift2) % BLOOM_WORD_BITS))
        order = sorted(range(n), key=lambda i: (hashes[i] % self.nbuckets, i))
        self.index = order
        self.chain = [hashes[i] & ~1 for i in order]
        self.buckets = [0] * self.nbuckets
        for pos in range(n - 1, -1, -1):
            self.buckets[hashes[order[pos]] % self.nbuckets] = pos + 1
        for pos in range(n):
            b = hashes[order[pos]] % self.nbuckets
            if pos + 1 == n or hashes[order[pos + 1]] % self.nbuckets != b:
                self.chain[pos] |= 1
        self.memory = 16 + 8 * self.maskwords + 4 * self.nbuckets + 4 * n + \
            index_width(n) * n

    def find(self, name: bytes, h: int, c: Counters) -> int | None:
        c.tables_visited += 1
        c.bucket_steps += 1
        word = self.bloom[(h // BLOOM_WORD_BITS) & (self.maskwords - 1)]
        if not (word >> (h % BLOOM_WORD_BITS)) & (word >> ((h >> self.shift2)
                                                          % BLOOM_WORD_BITS)) & 1:
            c.bloom_rejections += 1
            return None
        c.bucket_steps += 1
        j = self.buckets[h % self.nbuckets]
        if not j:
            return None
        pos = j - 1
        while True:
            c.chain_steps += 1
            v = self.chain[pos]
            if not (v ^ h) >> 1:
                i = self.index[pos]
                if strcmp(name, self.names[i], c) == 0:
                    return i
            if v & 1:
                return None
            pos += 1

    def arrays(self) -> dict[str, list[int]]:
        lo = [w & 0xFFFFFFFF for w in self.bloom]
        hi = [w >> 32 for w in self.bloom]
        return {"bloom_lo": lo, "bloom_hi": hi, "buckets": self.buckets, "chain": self.chain,
                "index": self.index}

    @classmethod
    def from_arrays(cls, names: list[bytes], a: dict[str, list[int]], shift2: int,
                    memory: int) -> GnuIndex:
        """The index whose arrays() are *a* (and Bloom shift *shift2*), nothing
        recomputed (a stored table)."""
        idx = cls.__new__(cls)
        idx.names, idx.shift2, idx.memory = names, shift2, memory
        idx.nbuckets, idx.maskwords = len(a["buckets"]), len(a["bloom_lo"])
        idx.bloom = [lo | hi << 32 for lo, hi in zip(a["bloom_lo"], a["bloom_hi"],
                                                     strict=True)]
        idx.buckets, idx.chain, idx.index = a["buckets"], a["chain"], a["index"]
        return idx


# --- perfect: a minimal-ish perfect hash per table (PTHash style) ----------------------

PILOT_MAX = 1 << 16       # 16-bit pilots: 8-bit ones run out at half fill on 5-key buckets
PERFECT_LOAD = 0.99       # slots = keys / load
PERFECT_BUCKET_KEYS = 5   # keys per pilot bucket on average
PERFECT_BLOOM_BITS = 3    # Bloom filter bits per key (two bits set per key, one word)
PERFECT_MIN_KEYS = 8      # smaller tables are binary-searched: a hash costs more than it saves


@functools.lru_cache(maxsize=8)
def _pilot_mixes(seed: int) -> tuple[int, ...]:
    """mix32(pilot + seed) for every pilot: the build's inner loop reads these."""
    return tuple(mix32((p + seed) & 0xFFFFFFFF) for p in range(PILOT_MAX))


def fastrange(x: int, d: int) -> int:
    """x scaled into [0, d) by one multiplication (Lemire's fastrange): the perfect
    strategy's map from a mixed 32-bit value to a bucket, slot or Bloom word."""
    return (x * d) >> 32


def perfect_bloom(h: int, nwords: int) -> tuple[int, int]:
    """(word, two-bit mask) of a key in the perfect strategy's Bloom filter: both from
    mixes of the precomputed hash, independent of the pilot bucket's."""
    a = mix32(h ^ 0xA5A5A5A5)
    b = mix32(a)
    return fastrange(a, nwords), (1 << (b & 63)) | (1 << ((b >> 6) & 63))


def perfect_slot(h: int, pilot: int, seed: int, nslots: int) -> int:
    return fastrange(mix32(h ^ mix32((pilot + seed) & 0xFFFFFFFF)), nslots)


class PerfectIndex(TableIndex):
    """A Bloom word array (3 bits per key), a 16-bit pilot per bucket of about five keys
    and one index slot per key (1% spare): under 3 bytes per export.  A lookup reads one
    Bloom word, which turns most tables without the name away; else a pilot, one slot of
    the index array, and one strcmp.  Built as PTHash does: buckets by decreasing size,
    each given the first pilot that puts all its keys in free slots.  Keys are the
    precomputed 32-bit name hashes, mixed."""

    def __init__(self, t: Table, hashfn: Callable[[bytes], int] = djb_hash):
        self.names = t.names
        n = len(t.names)
        hashes = [hashfn(x) for x in t.names]
        self.fallback: BsearchIndex | None = None
        if n < PERFECT_MIN_KEYS or len(set(hashes)) != n:
            # a tiny table, or two names sharing a 32-bit hash that no function of the
            # hash can separate: binary search
            self.fallback = BsearchIndex(t)
            self.memory = self.fallback.memory
            return
        self.nbuckets = max(1, math.ceil(n / PERFECT_BUCKET_KEYS))
        nslots = max(1, math.ceil(n / PERFECT_LOAD))
        for attempt in range(64):
            seed = attempt * 0x9E3779B9 & 0xFFFFFFFF
            built = self._build(hashes, seed, nslots)
            if built is not None:
                self.seed, self.nslots = seed, nslots
                self.pilots, self.slots = built
                break
            if attempt % 8 == 7:
                nslots = math.ceil(nslots * 1.05) + 1
        else:  # pragma: no cover - 64 seeds at a growing load never all fail in practice
            raise RuntimeError("perfect hash construction failed")
        self.nwords = max(1, math.ceil(n * PERFECT_BLOOM_BITS / 64))
        self.bloom = [0] * self.nwords
        for h in hashes:
            w, bits = perfect_bloom(h, self.nwords)
            self.bloom[w] |= bits
        # header: nbuckets, nslots, nwords (u16 each below 65,536 keys), seed number (u8),
        # flags (u8)
        header = 8 if n < 0xFFFF else 16
        self.memory = header + 8 * self.nwords + 2 * self.nbuckets + \
            index_width(n) * self.nslots

    def _build(self, hashes: list[int], seed: int, nslots: int
               ) -> tuple[list[int], list[int]] | None:
        nb = self.nbuckets
        members: list[list[int]] = [[] for _ in range(nb)]
        for i, h in enumerate(hashes):
            members[fastrange(mix32(h), nb)].append(i)
        taken = [False] * nslots
        slots = [0xFFFFFFFF] * nslots
        pilots = [0] * nb
        pilot_mix = _pilot_mixes(seed)
        for b in sorted(range(nb), key=lambda b: -len(members[b])):
            keys = members[b]
            if not keys:
                continue
            for p in range(PILOT_MAX):
                pm = pilot_mix[p]
                # perfect_slot(), inlined: this loop is the whole build time
                pos = [(mix32(hashes[i] ^ pm) * nslots) >> 32 for i in keys]
                if len(set(pos)) == len(pos) and not any(taken[x] for x in pos):
                    for x, i in zip(pos, keys, strict=True):
                        taken[x] = True
                        slots[x] = i
                    pilots[b] = p
                    break
            else:
                return None
        return pilots, slots

    def find(self, name: bytes, h: int, c: Counters) -> int | None:
        if self.fallback is not None:
            return self.fallback.find(name, h, c)
        c.tables_visited += 1
        c.bucket_steps += 1
        w, bits = perfect_bloom(h, self.nwords)
        if self.bloom[w] & bits != bits:
            c.bloom_rejections += 1
            return None
        c.bucket_steps += 1
        p = self.pilots[fastrange(mix32(h), self.nbuckets)]
        c.chain_steps += 1
        i = self.slots[perfect_slot(h, p, self.seed, self.nslots)]
        if i == 0xFFFFFFFF:
            return None
        return i if strcmp(name, self.names[i], c) == 0 else None

    def arrays(self) -> dict[str, list[int]]:
        if self.fallback is not None:
            return {"fallback": [1], **self.fallback.arrays()}
        return {"pilots": self.pilots, "slots": self.slots,
                "params": [self.nbuckets, self.nslots, self.seed, self.nwords],
                "bloom_lo": [w & 0xFFFFFFFF for w in self.bloom],
                "bloom_hi": [w >> 32 for w in self.bloom]}

    @classmethod
    def from_arrays(cls, names: list[bytes], a: dict[str, list[int]],
                    memory: int) -> PerfectIndex:
        """The index whose arrays() are *a*, nothing recomputed (a stored table)."""
        idx = cls.__new__(cls)
        idx.names, idx.fallback, idx.memory = names, None, memory
        idx.nbuckets, idx.nslots, idx.seed, idx.nwords = a["params"]
        idx.bloom = [lo | hi << 32 for lo, hi in zip(a["bloom_lo"], a["bloom_hi"],
                                                     strict=True)]
        idx.pilots, idx.slots = a["pilots"], a["slots"]
        return idx

    @classmethod
    def over_bsearch(cls, fallback: BsearchIndex) -> PerfectIndex:
        """A perfect index that binary-searches (a tiny table, or colliding hashes)."""
        idx = cls.__new__(cls)
        idx.names, idx.fallback, idx.memory = fallback.names, fallback, fallback.memory
        return idx


STRATEGIES: dict[str, Strategy] = {
    s.name: s for s in (
        Strategy("linear", "linear", None, LinearIndex,
                 "strcmp through each table in order (the 2009 baseline)"),
        Strategy("bsearch", "bsearch", None, BsearchIndex,
                 "binary search in each sorted table (Linux 3.0+, Alan Jenkins)"),
        Strategy("sysv", "sysv", elf_hash, lambda t: SysvIndex(t, elf_hash),
                 "SysV ELF hash table per table, gABI hash (Carmelo Amoroso)"),
        Strategy("sysv-djb", "sysv", djb_hash, lambda t: SysvIndex(t, djb_hash),
                 "SysV hash table per table, DJB hash as Amoroso's loader used"),
        Strategy("gnu", "gnu", djb_hash, GnuIndex,
                 "GNU hash with a Bloom filter per table (DT_GNU_HASH layout)"),
        Strategy("perfect", "perfect", djb_hash, PerfectIndex,
                 "a Bloom filter and a perfect hash per table: under 3 bytes per export"),
        Strategy("global", "global", djb_hash, None,
                 "one chained hash index over every loaded export"),
    )
}
