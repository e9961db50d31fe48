"""Stored layouts (fastlkm.embedded.codec) and the sections made of them
(fastlkm.embedded.build): every storable strategy, both byte orders and both index
widths, read back into indexes that equal the built ones and find the same entries;
damaged payloads are refused."""

from __future__ import annotations

import random
import struct

import pytest

from fastlkm.embedded.codec import (
    EMBEDDED,
    HEADER_SIZE,
    STORABLE,
    decode,
    embedded_strategy,
    encode_hashes,
    encode_index,
    index_from_stored,
)
from fastlkm.errors import FormatError
from fastlkm.lookup.base import Counters, Table
from fastlkm.lookup.space import SymbolSpace
from fastlkm.lookup.strategies import STRATEGIES, PerfectIndex


def names(n: int, seed: int = 0, sort: bool = True) -> list[bytes]:
    rng = random.Random(seed)
    out = {f"sym_{rng.getrandbits(40):x}_{i}".encode() for i in range(n)}
    return sorted(out) if sort else list(out)


def lookups(index: object, table: Table, strategy: str) -> list[int | None]:
    fn = STRATEGIES[strategy].hash
    probes = [*table.names, b"absent", b"", *(n + b"x" for n in table.names[:50])]
    c = Counters()
    return [index.find(n, fn(n) if fn else 0, c) for n in probes]  # type: ignore[attr-defined]


@pytest.mark.parametrize("little", [True, False], ids=["LE", "BE"])
@pytest.mark.parametrize("sort", [True, False], ids=["sorted", "unsorted"])
@pytest.mark.parametrize("strategy", list(STORABLE))
@pytest.mark.parametrize("n", [1, 2, 37, 700])
def test_round_trip(strategy: str, n: int, sort: bool, little: bool) -> None:
    t = Table(names(n, n, sort))
    st = STRATEGIES[strategy]
    built = st.build(t)  # type: ignore[misc]
    blob = encode_index(st, built, n, little)
    stored = decode(blob, little)
    assert stored.style == strategy
    assert stored.payload == built.memory == len(blob) - HEADER_SIZE
    back = index_from_stored(stored, t)
    assert type(back) is type(built)
    assert back.arrays() == built.arrays()
    assert back.memory == built.memory
    assert lookups(back, t, strategy) == lookups(built, t, strategy)
    assert lookups(back, t, strategy)[:n] == list(range(n))
    # the other byte order does not read as this one
    assert blob[:4] == b"FLKH"
    with pytest.raises(FormatError):
        decode(blob, not little)


@pytest.mark.parametrize("strategy", ["sysv", "gnu", "bsearch"])
def test_wide_index(strategy: str) -> None:
    """65,535 entries and more: index arrays of 4 bytes."""
    n = 70_000
    t = Table(names(n, 1, sort=False))
    st = STRATEGIES[strategy]
    built = st.build(t)  # type: ignore[misc]
    blob = encode_index(st, built, n, True)
    stored = decode(blob, True)
    assert stored.width == 4
    back = index_from_stored(stored, t)
    assert back.arrays() == built.arrays() and back.memory == built.memory


def test_perfect_fallback_is_stored_as_bsearch() -> None:
    # two names with one DJB hash: "Aa"/"BB"-style collisions ("Ez" and "FY" under *33)
    a, b = b"Ez", b"FY"
    from fastlkm.lookup.hashes import djb_hash
    assert djb_hash(a) == djb_hash(b)
    t = Table([a, b, b"zz"])
    built = STRATEGIES["perfect"].build(t)  # type: ignore[misc]
    assert isinstance(built, PerfectIndex) and built.fallback is not None
    stored = decode(encode_index(STRATEGIES["perfect"], built, 3, True), True)
    assert stored.style == "perfect"
    back = index_from_stored(stored, t)
    assert lookups(back, t, "perfect") == lookups(built, t, "perfect")


def test_undef_hashes() -> None:
    blob = encode_hashes([1, 2, 0xFFFFFFFF], 2, False)
    stored = decode(blob, False)
    assert stored.arrays["hashes"] == [1, 2, 0xFFFFFFFF] and stored.style == "undef"
    assert len(blob) == HEADER_SIZE + 12


def _damaged(strategy: str, n: int = 40) -> tuple[bytes, Table]:
    t = Table(names(n, 7))
    st = STRATEGIES[strategy]
    return encode_index(st, st.build(t), n, True), t  # type: ignore[misc]


def test_damage_is_refused() -> None:
    blob, t = _damaged("sysv")
    with pytest.raises(FormatError, match="magic"):
        decode(b"XXXX" + blob[4:], True)
    with pytest.raises(FormatError, match="version"):
        decode(blob[:4] + b"\x09" + blob[5:], True)
    with pytest.raises(FormatError, match="payload"):
        decode(blob[:-4], True)
    with pytest.raises(FormatError, match="too short"):
        decode(blob[:10], True)
    with pytest.raises(FormatError, match="width"):
        decode(blob[:7] + b"\x04" + blob[8:], True)
    # a chain that loops back on itself
    nbucket = struct.unpack_from("<I", blob, HEADER_SIZE)[0]
    chain = HEADER_SIZE + 8 + 4 * nbucket
    first = next(i for i in range(40) if struct.unpack_from("<I", blob, chain + 4 * i)[0])
    looped = bytearray(blob)
    struct.pack_into("<I", looped, chain + 4 * first, first + 1)
    with pytest.raises(FormatError, match="twice"):
        decode(bytes(looped), True)
    # a bucket pointing past the table
    bad = bytearray(blob)
    struct.pack_into("<I", bad, HEADER_SIZE + 8, 41)
    with pytest.raises(FormatError, match="beyond"):
        decode(bytes(bad), True)
    # stored for another table size
    with pytest.raises(FormatError, match="entries"):
        index_from_stored(decode(blob, True), Table(t.names[:-1]))


def test_damaged_gnu_and_perfect() -> None:
    blob, _ = _damaged("gnu")
    bad = bytearray(blob)
    bad[-1 - 2 * 40 - 3] ^= 1   # the last chain word's end bit (index array of u16 after)
    with pytest.raises(FormatError):
        decode(bytes(bad), True)
    blob, _ = _damaged("perfect")
    bad = bytearray(blob)
    nwords = struct.unpack_from("<H", blob, HEADER_SIZE + 6)[0]
    struct.pack_into("<H", bad, HEADER_SIZE + 8 + 8 * nwords, 500)   # a slot beyond
    with pytest.raises(FormatError, match="beyond"):
        decode(bytes(bad), True)


@pytest.mark.parametrize("strategy", list(STORABLE))
def test_embedded_strategy_in_a_symbol_space(strategy: str) -> None:
    """A symbol space searches the stored indexes: same hits as with built ones."""
    tables = [Table(names(50, s), owner=-1, name=f"__ksymtab{s}") for s in ("", "_gpl")]
    st = STRATEGIES[strategy]
    stored_tables = []
    for t in tables:
        blob = encode_index(st, st.build(t), len(t.names), False)  # type: ignore[misc]
        u = Table(list(t.names), owner=-1, name=t.name)
        stored = decode(blob, False)
        u.extra[EMBEDDED] = (stored, index_from_stored(stored, u))
        stored_tables.append(u)
    built = SymbolSpace(st, tables)
    emb = SymbolSpace(embedded_strategy(strategy), stored_tables)
    assert emb.memory == built.memory
    fn = st.hash
    for n in [*tables[0].names, *tables[1].names, b"nope"]:
        h = fn(n) if fn else None
        a = built.find(n, h, True, Counters())
        b = emb.find(n, h, True, Counters())
        assert (a and (a[0].name, a[1])) == (b and (b[0].name, b[1]))
    other = "gnu" if strategy != "gnu" else "sysv"
    with pytest.raises(FormatError, match="embeds"):
        SymbolSpace(embedded_strategy(other), stored_tables)
    with pytest.raises(FormatError, match="no embedded"):
        SymbolSpace(embedded_strategy(strategy), [Table([b"a"])])
