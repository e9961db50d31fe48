"""The C index (_kmod_index.c) against the Python reference (PyIndex): the same insert()
results and the same bytes for kmod 30 and 34 on random insert sequences, the same errors;
the same for depmod's hash_superfast() and hash_order()."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastlkm.depmod import compute as depmod
from fastlkm.depmod import kmod_index
from fastlkm.depmod.kmod_index import PyIndex, read_index
from fastlkm.errors import FormatError
from tests.conftest import skip_or_fail

Op = tuple[str, str, int]


@pytest.fixture(scope="module")
def native() -> type:
    """NativeIndex; without the compiled index: skipped here, failed in CI or where the
    real-kernel tests are required."""
    if not kmod_index.native_available():
        msg = "the C index (fastlkm.depmod._kmod_index) is not built"
        if os.environ.get("CI"):
            pytest.fail(msg)
        skip_or_fail(msg)
    return kmod_index.NativeIndex


# few characters, so that keys share prefixes and split nodes; and any of ASCII 1..127
FEW = "ab:*"
ASCII = st.characters(min_codepoint=1, max_codepoint=127)
KEYS = st.one_of(
    st.text(FEW, max_size=8),
    st.text(ASCII, max_size=40),
    st.builds(lambda c, n, tail: c * n + tail, st.sampled_from(FEW), st.integers(200, 3000),
              st.text(FEW, max_size=4)),
)
VALUES = st.one_of(st.text(FEW, max_size=4), st.text(ASCII, max_size=12))
PRIOS = st.one_of(st.integers(0, 3), st.integers(0, 0xFFFFFFFF))
OPS = st.lists(st.tuples(KEYS, VALUES, PRIOS), max_size=60)
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def build(cls: type, ops: list[Op]) -> tuple[object, list[bool]]:
    ix = cls()
    return ix, [ix.insert(k, v, p) for k, v, p in ops]


def expected(ops: list[Op]) -> dict[str, list[tuple[int, str]]]:
    """What read_index() must find: per key, values by priority, newest first among equals."""
    want: dict[str, list[tuple[int, str]]] = {}
    for k, v, p in ops:
        vals = want.setdefault(k, [])
        pos = next((i for i, (q, _) in enumerate(vals) if q >= p), len(vals))
        vals.insert(pos, (p, v))
    return want


@SETTINGS
@given(OPS)
def test_same_bytes_as_reference(native: type, ops: list[Op]) -> None:
    ref, ref_dups = build(PyIndex, ops)
    got, got_dups = build(native, ops)
    assert got_dups == ref_dups
    for version in (30, 34):
        data = got.write(version)
        assert data == ref.write(version)
        if ops:   # an empty index is a header and an empty root node that read_index() refuses
            assert read_index(data) == expected(ops)


@SETTINGS
@given(OPS)
def test_insert_many(native: type, ops: list[Op]) -> None:
    keys, values, prios = ([o[i] for o in ops] for i in range(3))
    ref, ref_dups = build(PyIndex, ops)
    got = native()
    assert got.insert_many(keys, values, prios) == ref_dups
    assert PyIndex().insert_many(keys, values, prios) == ref_dups
    assert got.write(30) == ref.write(30) and got.write(34) == ref.write(34)


def test_duplicates_and_equal_priorities(native: type) -> None:
    ops = [("k", "a", 1), ("k", "b", 1), ("k", "a", 1), ("k", "c", 0), ("k", "d", 2),
           ("", "root", 0), ("", "root", 0), ("kx", "e", 1), ("k", "a", 0)]
    ref, ref_dups = build(PyIndex, ops)
    got, got_dups = build(native, ops)
    assert got_dups == ref_dups == [False, False, True, False, False, False, True, False, True]
    assert got.write(30) == ref.write(30) and got.write(34) == ref.write(34)
    assert read_index(got.write(34))["k"] == [(0, "a"), (0, "c"), (1, "a"), (1, "b"), (1, "a"),
                                              (2, "d")]


def test_empty(native: type) -> None:
    for version in (30, 34):
        assert native().write(version) == PyIndex().write(version)


def test_nul_is_a_character(native: type) -> None:
    # the reference does not refuse NUL; the C index stores lengths, so agrees byte for byte
    ops = [("a\0b", "v\0", 0), ("a\0", "w", 1), ("a", "x", 2)]
    assert build(native, ops)[0].write(34) == build(PyIndex, ops)[0].write(34)


def test_deep_trie(native: type) -> None:
    # one node per key, each the child of the previous: no recursion may follow this depth
    ix = native()
    n = 5000
    assert ix.insert_many(["a" * i for i in range(n)], ["v"] * n, [0] * n) == [False] * n
    for version in (30, 34):
        found = read_index(ix.write(version))
        assert len(found) == n and found["a" * (n - 1)] == [(0, "v")]
    long = native()
    long.insert("x" * 200_000, "v", 0)
    long.insert("x" * 100_000 + "y", "w", 1)
    assert read_index(long.write(30)) == {"x" * 200_000: [(0, "v")],
                                          "x" * 100_000 + "y": [(1, "w")]}


@pytest.mark.parametrize("key,value", [("é", "m"), ("k", "mé"), ("\x80", ""), ("k", "\U0001f600")])
def test_not_ascii(native: type, key: str, value: str) -> None:
    msgs = []
    for cls in (PyIndex, native):
        ix = cls()
        with pytest.raises(FormatError) as e:
            ix.insert(key, value, 0)
        msgs.append(str(e.value))
        with pytest.raises(FormatError):
            ix.insert_many(["ok", key], ["ok", value], [0, 0])
        assert read_index(ix.write(34)) == {"ok": [(0, "ok")]}   # the first one went in
    assert msgs[0] == msgs[1] == f"index key or value is not 7-bit ASCII: {key!r} {value!r}"


def test_bad_arguments(native: type) -> None:
    for cls in (PyIndex, native):
        with pytest.raises(UnicodeEncodeError):
            cls().insert("\ud800", "v", 0)
        for prio in (-1, 1 << 32):
            with pytest.raises(OverflowError):
                cls().insert("k", "v", prio)
        with pytest.raises(ValueError):
            cls().insert_many(["a"], [], [0])
    assert isinstance(native(), kmod_index.Index)


# --- hash_superfast() and hash_order() ---------------------------------------------


@pytest.fixture(scope="module")
def c_hash(native: type) -> object:
    from fastlkm.depmod import _kmod_index  # type: ignore[attr-defined]

    return _kmod_index


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=40))
def test_hash_superfast(c_hash: object, key: bytes) -> None:
    # bytes > 127 take the signed-char branches of the 1- and 3-byte tails
    assert c_hash.hash_superfast(key) == depmod.py_hash_superfast(key)   # type: ignore[attr-defined]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(st.characters(blacklist_categories=("Cs",)), max_size=12), max_size=80),
       st.sampled_from([1, 2, 4, 512, 2048]))
def test_hash_order(c_hash: object, names: list[str], buckets: int) -> None:
    # non-ASCII names hash and sort by their UTF-8 bytes, > 127 included
    got = c_hash.hash_order(names, buckets)   # type: ignore[attr-defined]
    assert got == depmod.py_hash_order(names, buckets)


def test_hash_names_used(native: type) -> None:
    """depmod.py's hash_order and hash_superfast are the C ones when they are built."""
    assert depmod.hash_order is not depmod.py_hash_order
    assert depmod.hash_superfast(b"abc") == depmod.py_hash_superfast(b"abc")


def test_without_the_extension() -> None:
    """Without the compiled index the package falls back on the Python ones."""
    code = (
        "import sys\n"
        "sys.modules['fastlkm.depmod._kmod_index'] = None\n"   # makes its import fail
        "from fastlkm.depmod import compute as depmod, kmod_index\n"
        "assert kmod_index.Index is kmod_index.PyIndex and not kmod_index.native_available()\n"
        "assert depmod.hash_order is depmod.py_hash_order\n"
        "assert depmod.hash_superfast is depmod.py_hash_superfast\n"
        "ix = kmod_index.Index()\n"
        "ix.insert('k', 'v', 0)\n"
        "assert kmod_index.read_index(ix.write(30)) == {'k': [(0, 'v')]}\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
