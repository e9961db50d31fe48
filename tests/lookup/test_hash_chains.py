"""Embedded hash tables whose chains were made to loop: reading them stops with one clear
error instead of spinning (lookup/sections.py decode(), read by loader/embedded.py and
``fastlkm verify``).  Each test runs under an alarm, so an endless loop fails it."""

from __future__ import annotations

import signal
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from fastlkm.cli import main
from fastlkm.elf.reader import ElfFile
from fastlkm.embedded.codec import HEADER_SIZE, decode
from fastlkm.embedded.postprocess import HashOptions, process_image
from fastlkm.embedded.read import embedded_tables
from fastlkm.errors import FormatError
from tests.embedded.test_embedded import _section
from tests.kernel.test_ksymtab import Exp, build_module


@pytest.fixture(autouse=True)
def alarm() -> Iterator[None]:
    def spin(*_: object) -> None:
        raise AssertionError("did not finish in 10 s: an endless loop")

    old = signal.signal(signal.SIGALRM, spin)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


MANY = [Exp(f"sym_{i:03}", crc=i) for i in range(64)]


def _table(style: str) -> tuple[bytearray, int, int]:
    """A module hashed in *style*, and where its __ksymtab table's payload starts."""
    out = bytearray(process_image(build_module(MANY), "t.ko", HashOptions(style))[0])
    off, size = _section(bytes(out), "__ksymtab.htable")
    return out, off, size


def _sysv_arrays(out: bytearray, off: int) -> tuple[int, int, list[int], list[int]]:
    p = off + HEADER_SIZE
    nbucket, n = struct.unpack_from("<II", out, p)
    bucket = list(struct.unpack_from(f"<{nbucket}I", out, p + 8))
    chain = list(struct.unpack_from(f"<{n}I", out, p + 8 + 4 * nbucket))
    return nbucket, n, bucket, chain


@pytest.mark.parametrize("how", ["self", "back"])
def test_cyclic_sysv_chain(how: str, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    """A chain entry pointing at itself, or back at its bucket's first entry."""
    out, off, _ = _table("sysv")
    nbucket, n, bucket, chain = _sysv_arrays(out, off)
    first = next(b for b in bucket if b and chain[b - 1])   # a chain of two or more
    second = chain[first - 1]
    at = off + HEADER_SIZE + 8 + 4 * nbucket + 4 * (second - 1)
    struct.pack_into("<I", out, at, second if how == "self" else first)
    with pytest.raises(FormatError, match=f"sysv entry {second if how == 'self' else first} "
                                          "is reached twice"):
        decode(bytes(out[off:off + HEADER_SIZE + 8 + 4 * (nbucket + 2 * n)]), True)
    with pytest.raises(FormatError, match="reached twice"):
        embedded_tables(ElfFile(bytes(out), "t.ko"))
    f = tmp_path / "t.ko"
    f.write_bytes(out)
    assert main(["verify", str(f)]) == 1   # a problem of the file, on its own line
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith(f"{f}: ")
    assert "is reached twice (a chain loops or chains merge)" in out[0]


def test_gnu_chain_without_end() -> None:
    """GNU chains are walked forward to an entry with the end bit; without one on the last
    entry a lookup would run off the table, so the reader refuses it."""
    out, off, size = _table("gnu")
    elf = ElfFile(bytes(out))
    n = len(MANY)
    # the chain array is the n words before the index (of n entries of 1, 2 or 4 bytes)
    p = off + HEADER_SIZE
    nbuckets, _, maskwords, _ = struct.unpack_from("<4I", out, p)
    chain_at = p + 16 + 8 * maskwords + 4 * nbuckets
    for i in range(n):   # every end bit cleared: one endless-looking chain
        v = struct.unpack_from("<I", out, chain_at + 4 * i)[0]
        struct.pack_into("<I", out, chain_at + 4 * i, v & ~1)
    assert elf.section("__ksymtab.htable") is not None
    with pytest.raises(FormatError, match="gnu chain does not end its last bucket"):
        embedded_tables(ElfFile(bytes(out), "t.ko"))
    assert size > 0
