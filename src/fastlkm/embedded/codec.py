"""The strategies' layouts as stored bytes (``fastlkm hash``), and indexes rebuilt from them.

A stored table is a 16-byte header and a payload in the byte order of the ELF file that
holds it (docs/lookup.md, "Embedded sections"):

    0  magic     b"FLKH"
    4  u8        version (1)
    5  u8        layout: 1 bsearch, 2 sysv, 3 gnu, 4 perfect, 5 undef (hashes only)
    6  u8        hash: 0 none, 1 ELF (gABI), 2 DJB
    7  u8        width of index arrays into the table: 2 or 4 bytes
    8  u32       entries: of the export table indexed (undef: hashes stored)
    12 u32       payload bytes that follow

The payload is exactly the memory ``fastlkm bench`` counts for the strategy (the
``memory`` of its index); the fields are those of the strategies' ``arrays()``.  This
module knows nothing of ELF: it turns an index into bytes and bytes into an index.
"""

from __future__ import annotations

import struct
from array import array
from dataclasses import dataclass, replace

from fastlkm.errors import FormatError
from fastlkm.lookup.base import Table
from fastlkm.lookup.hashes import HASH_DJB, HASH_ELF, HASH_FUNCTIONS, HASH_NONE
from fastlkm.lookup.strategies import (
    STRATEGIES,
    BsearchIndex,
    GnuIndex,
    PerfectIndex,
    Strategy,
    SysvIndex,
    TableIndex,
    index_width,
)

MAGIC = b"FLKH"
VERSION = 1
HEADER_SIZE = 16
BSEARCH, SYSV, GNU, PERFECT, UNDEF = 1, 2, 3, 4, 5
LAYOUT_NAMES = {BSEARCH: "bsearch", SYSV: "sysv", GNU: "gnu", PERFECT: "perfect",
                UNDEF: "undef"}
EMPTY_SLOT = 0xFFFFFFFF        # a free slot of the perfect hash, in the arrays
EMBEDDED = "embedded"          # Table.extra key of an index read from a section
EMBEDDED_ALL = "embedded_all"  # Table.extra key: style -> (Stored, index), every record

# the strategies that can be stored, with their layout and hash ids
STORABLE = {"bsearch": (BSEARCH, HASH_NONE), "sysv": (SYSV, HASH_ELF),
            "sysv-djb": (SYSV, HASH_DJB), "gnu": (GNU, HASH_DJB),
            "perfect": (PERFECT, HASH_DJB)}


def _header(little: bool) -> struct.Struct:
    return struct.Struct(("<" if little else ">") + "4sBBBBII")


# --- arrays <-> bytes -------------------------------------------------------------------


def _pack(code: str, values: list[int], little: bool) -> bytes:
    a = array(code, values)
    if a.itemsize != struct.calcsize(code):  # pragma: no cover - exotic platforms
        raise AssertionError(f"array code {code} is not {struct.calcsize(code)} bytes")
    if little != (struct.pack("=H", 1) == b"\1\0"):
        a.byteswap()
    return a.tobytes()


class _Reader:
    """Sequential reads of the payload, bounds-checked, in the file's byte order."""

    def __init__(self, data: bytes, little: bool, base: int, path: str | None):
        self.data, self.little, self.pos, self.base, self.path = data, little, 0, base, path

    def error(self, msg: str) -> FormatError:
        return FormatError(msg, self.path, self.base + self.pos)

    def array(self, code: str, count: int) -> list[int]:
        size = struct.calcsize(code) * count
        if count < 0 or self.pos + size > len(self.data):
            raise self.error(f"{count} entries of {struct.calcsize(code)} bytes do not fit "
                             f"in the payload")
        a = array(code)
        a.frombytes(self.data[self.pos:self.pos + size])
        if self.little != (struct.pack("=H", 1) == b"\1\0"):
            a.byteswap()
        self.pos += size
        return a.tolist()

    def u32(self) -> int:
        return self.array("I", 1)[0]


def _width_code(width: int) -> str:
    return "H" if width == 2 else "I"


@dataclass(frozen=True)
class Stored:
    """One decoded section: its header fields and the layout's arrays."""

    layout: int
    hash: int
    width: int
    entries: int
    arrays: dict[str, list[int]]
    payload: int                 # bytes of payload (the strategy's memory)

    @property
    def style(self) -> str:
        """The strategy that stores this layout with this hash."""
        for name, ids in STORABLE.items():
            if ids == (self.layout, self.hash):
                return name
        if (self.layout, self.hash) == (BSEARCH, HASH_DJB):
            return "perfect"     # a perfect hash that fell back to bsearch
        return LAYOUT_NAMES.get(self.layout, str(self.layout))


# the perfect layout's parameters: u8 seed number, u8 flags, then nbuckets, nslots and
# nwords as u16 (8 bytes), or, with PERFECT_WIDE (65,535 keys or more, or a count that
# does not fit), 2 bytes of padding and u32 each (16 bytes); the seed is the number times
# PERFECT_SEED_STEP, as PerfectIndex derives its seeds
PERFECT_WIDE = 1
PERFECT_SEED_STEP = 0x9E3779B9


def _perfect_params(nbuckets: int, nslots: int, seed: int, nwords: int, width: int,
                    little: bool) -> bytes:
    number = next((k for k in range(256) if k * PERFECT_SEED_STEP & 0xFFFFFFFF == seed),
                  None)
    if number is None:
        raise ValueError(f"perfect seed {seed:#x} is not one PerfectIndex derives")
    if width == 2 and max(nbuckets, nslots, nwords) <= 0xFFFF:
        return bytes([number, 0]) + _pack("H", [nbuckets, nslots, nwords], little)
    return bytes([number, PERFECT_WIDE, 0, 0]) + _pack("I", [nbuckets, nslots, nwords],
                                                       little)


def encode_index(strategy: Strategy, index: TableIndex, entries: int, little: bool) -> bytes:
    """The stored form of *index*, built by *strategy* over a table of *entries*."""
    if strategy.name not in STORABLE:
        raise ValueError(f"strategy {strategy.name} has no stored layout")
    layout, hid = STORABLE[strategy.name]
    width = index_width(entries)
    w = _width_code(width)
    a = index.arrays()
    if isinstance(index, PerfectIndex) and index.fallback is not None:
        layout, a = BSEARCH, index.fallback.arrays()
    if layout == BSEARCH:
        payload = _pack(w, a["order"], little) if "order" in a else b""
    elif layout == SYSV:
        assert isinstance(index, SysvIndex)
        payload = _pack("I", [index.nbucket, entries, *a["bucket"], *a["chain"],
                              *a["hashes"]], little)
    elif layout == GNU:
        assert isinstance(index, GnuIndex)
        payload = _pack("I", [index.nbuckets, 1, index.maskwords, index.shift2], little) + \
            _pack("Q", [lo | hi << 32 for lo, hi in zip(a["bloom_lo"], a["bloom_hi"],
                                                        strict=True)], little) + \
            _pack("I", [*a["buckets"], *a["chain"]], little) + _pack(w, a["index"], little)
    else:
        nbuckets, nslots, seed, nwords = a["params"]
        empty = (1 << 8 * width) - 1
        slots = [empty if s == EMPTY_SLOT else s for s in a["slots"]]
        payload = _perfect_params(nbuckets, nslots, seed, nwords, width, little) + \
            _pack("Q", [lo | hi << 32 for lo, hi in zip(a["bloom_lo"], a["bloom_hi"],
                                                        strict=True)], little) + \
            _pack(w, slots, little) + _pack("H", a["pilots"], little)
    return _header(little).pack(MAGIC, VERSION, layout, hid, width, entries,
                                len(payload)) + payload


def encode_hashes(hashes: list[int], hid: int, little: bool) -> bytes:
    """The stored form of precomputed name hashes (Amoroso's ``.undef.hash``)."""
    payload = _pack("I", hashes, little)
    return _header(little).pack(MAGIC, VERSION, UNDEF, hid, 4, len(hashes),
                                len(payload)) + payload


RECORD_ALIGN = 8                # each record of a section starts at a multiple of 8


def join_records(records: list[bytes]) -> bytes:
    """One section holding several stored tables (one per strategy, or one per hash
    function for ``.undef.hash``), each padded to a multiple of RECORD_ALIGN bytes; a
    single record is the section itself (docs/lookup.md)."""
    if len(records) == 1:
        return records[0]
    out = bytearray()
    for r in records:
        out += r
        out += bytes(-len(out) % RECORD_ALIGN)
    return bytes(out)


def split_records(data: bytes, little: bool, path: str | None = None,
                  offset: int = 0) -> list[tuple[int, bytes]]:
    """The records of a section as (offset in the section, bytes), each as :func:`decode`
    takes it.  A section of one record is that record whatever its size."""
    hdr = _header(little)
    if len(data) >= hdr.size and HEADER_SIZE + hdr.unpack_from(data, 0)[6] == len(data):
        return [(0, data)]
    out, pos = [], 0
    while pos < len(data):
        if len(data) - pos < hdr.size:
            if not any(data[pos:]):
                break            # padding after the last record
            raise FormatError(f"{len(data) - pos} bytes left: too short for a stored "
                              f"table header", path, offset + pos)
        size = hdr.unpack_from(data, pos)[6]
        end = pos + HEADER_SIZE + size
        if end > len(data):
            raise FormatError(f"payload of {size} bytes runs past the section", path,
                              offset + pos + 12)
        out.append((pos, data[pos:end]))
        pos = end + (-end % RECORD_ALIGN)
    return out


def decode(data: bytes, little: bool, path: str | None = None, offset: int = 0) -> Stored:
    """Read a stored table back; every count and value is checked against the payload and
    the table size, so a damaged section raises FormatError (with *offset*, where the
    section starts in the file) instead of misleading a lookup."""
    hdr = _header(little)
    if len(data) < hdr.size:
        raise FormatError(f"{len(data)} bytes: too short for a stored table header", path,
                          offset)
    magic, version, layout, hid, width, n, size = hdr.unpack_from(data, 0)
    if magic != MAGIC:
        raise FormatError(f"bad magic {magic!r} (not written by fastlkm hash)", path, offset)
    if version != VERSION:
        raise FormatError(f"stored table version {version}, this fastlkm reads {VERSION}",
                          path, offset + 4)
    if layout not in LAYOUT_NAMES:
        raise FormatError(f"unknown layout {layout}", path, offset + 5)
    if hid not in HASH_FUNCTIONS or (hid == HASH_NONE and layout != BSEARCH):
        raise FormatError(f"hash id {hid} does not fit layout {LAYOUT_NAMES[layout]}",
                          path, offset + 6)
    if width not in (2, 4) or (layout != UNDEF and width != index_width(n)):
        raise FormatError(f"index width {width} for {n} entries", path, offset + 7)
    if HEADER_SIZE + size != len(data):
        raise FormatError(f"payload of {size} bytes in a section of {len(data)}", path,
                          offset + 12)
    r = _Reader(data[HEADER_SIZE:], little, offset + HEADER_SIZE, path)
    w = _width_code(width)
    a: dict[str, list[int]] = {}

    def check(name: str, values: list[int], limit: int) -> None:
        bad = next((v for v in values if v > limit), None)
        if bad is not None:
            raise r.error(f"{LAYOUT_NAMES[layout]} {name}: value {bad} beyond {limit}")

    if layout == BSEARCH:
        if size:
            a["order"] = r.array(w, n)
            if sorted(a["order"]) != list(range(n)):
                raise r.error("bsearch order is not a permutation of the table")
    elif layout == UNDEF:
        a["hashes"] = r.array("I", n)
    elif layout == SYSV:
        nbucket, nchain = r.u32(), r.u32()
        if nbucket == 0 or nchain != n:
            raise r.error(f"sysv nbucket {nbucket}, nchain {nchain} for {n} entries")
        a["bucket"], a["chain"], a["hashes"] = (r.array("I", nbucket), r.array("I", n),
                                                r.array("I", n))
        check("bucket", a["bucket"], n)
        check("chain", a["chain"], n)
        # every entry on exactly one chain: a cycle would make a lookup spin forever
        seen = bytearray(n)
        for j in a["bucket"]:
            while j:
                if seen[j - 1]:
                    raise r.error(f"sysv entry {j} is reached twice (a chain loops or "
                                  f"chains merge)")
                seen[j - 1] = 1
                j = a["chain"][j - 1]
        if not all(seen):
            raise r.error(f"sysv entry {seen.index(0) + 1} is on no chain")
    elif layout == GNU:
        nbuckets, symoffset, maskwords, shift2 = (r.u32() for _ in range(4))
        if nbuckets == 0 or symoffset != 1 or maskwords == 0 or maskwords & (maskwords - 1):
            raise r.error(f"gnu nbuckets {nbuckets}, symoffset {symoffset}, maskwords "
                          f"{maskwords}")
        bloom = r.array("Q", maskwords)
        a["bloom_lo"] = [x & 0xFFFFFFFF for x in bloom]
        a["bloom_hi"] = [x >> 32 for x in bloom]
        a["buckets"], a["chain"], a["index"] = (r.array("I", nbuckets), r.array("I", n),
                                                r.array(w, n))
        a["shift2"] = [shift2]
        check("buckets", a["buckets"], n)
        if n and not a["chain"][-1] & 1:
            raise r.error("gnu chain does not end its last bucket")
        if sorted(a["index"]) != list(range(n)):
            raise r.error("gnu index is not a permutation of the table")
    else:
        number, flags = r.array("B", 2)
        if flags & ~PERFECT_WIDE:
            raise r.error(f"perfect flags {flags:#x}")
        if flags & PERFECT_WIDE:
            r.array("B", 2)
            nbuckets, nslots, nwords = r.array("I", 3)
        else:
            nbuckets, nslots, nwords = r.array("H", 3)
        seed = number * PERFECT_SEED_STEP & 0xFFFFFFFF
        if nbuckets == 0 or nslots < n or nwords == 0:
            raise r.error(f"perfect nbuckets {nbuckets}, nslots {nslots}, Bloom words "
                          f"{nwords} for {n} entries")
        bloom = r.array("Q", nwords)
        a["bloom_lo"] = [x & 0xFFFFFFFF for x in bloom]
        a["bloom_hi"] = [x >> 32 for x in bloom]
        empty = (1 << 8 * width) - 1
        slots = r.array(w, nslots)
        a["slots"] = [EMPTY_SLOT if s == empty else s for s in slots]
        a["pilots"] = r.array("H", nbuckets)
        a["params"] = [nbuckets, nslots, seed, nwords]
        check("slots", [s for s in a["slots"] if s != EMPTY_SLOT], n - 1)
    if r.pos != size:
        raise r.error(f"{size - r.pos} bytes left over after the {LAYOUT_NAMES[layout]} "
                      f"layout")
    return Stored(layout, hid, width, n, a, size)


# --- indexes rebuilt from stored arrays -------------------------------------------------


def index_from_stored(stored: Stored, table: Table) -> TableIndex:
    """The strategy's index over *table*, from its stored arrays, with nothing recomputed:
    what was written is what is searched.  Its ``arrays()`` and ``memory`` are those of
    the index the strategy would build (tests/embedded/test_sections.py)."""
    n = len(table.names)
    if stored.entries != n:
        raise FormatError(f"stored for {stored.entries} entries, {table.name} has {n}")
    a, names, mem = stored.arrays, table.names, stored.payload
    if stored.layout == BSEARCH:
        bs = BsearchIndex.from_arrays(names, a, mem)
        return bs if stored.hash == HASH_NONE else PerfectIndex.over_bsearch(bs)
    if stored.layout == SYSV:
        return SysvIndex.from_arrays(names, a, mem)
    if stored.layout == GNU:
        return GnuIndex.from_arrays(names, a, a["shift2"][0], mem)
    if stored.layout == PERFECT:
        return PerfectIndex.from_arrays(names, a, mem)
    raise FormatError(f"a {LAYOUT_NAMES[stored.layout]} section indexes no table")


def embedded_strategy(strategy: Strategy | str) -> Strategy:
    """*strategy* with its per-table indexes taken from the sections a file holds
    (``Table.extra["embedded"]``, filled by fastlkm.embedded.read) instead of built.

    The symbol spaces and the native engine call ``build(table)``: this one hands back
    the stored index, and refuses a table without one or with another style's."""
    st = STRATEGIES[strategy] if isinstance(strategy, str) else strategy
    if st.name not in STORABLE:
        raise ValueError(f"strategy {st.name} has no stored layout")

    def build(t: Table) -> TableIndex:
        got = t.extra.get(EMBEDDED_ALL, {}).get(st.name) or t.extra.get(EMBEDDED)
        if got is None:
            raise FormatError(f"{t.name} of owner {t.owner} has no embedded {st.name} table")
        stored, index = got  # type: ignore[misc]
        if stored.style != st.name:
            raise FormatError(f"{t.name} of owner {t.owner} embeds a {stored.style} table, "
                              f"not {st.name}")
        return index  # type: ignore[no-any-return]

    return replace(st, build=build, description=st.description + " (embedded tables)")
