"""The codecs: detection, round trips, the output cap, truncation, trailing data, writers."""

from __future__ import annotations

import bz2
import lzma
import os
import shutil
import struct
import subprocess
import tracemalloc
from pathlib import Path

import lz4.block
import lz4.frame
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fastlkm.errors import DecompressError, NotFoundError, UsageError
from fastlkm.io.codecs import (
    CODECS,
    DEFAULT_LIMIT,
    FORMATS,
    compress,
    decompress,
    decompress_file,
    detect,
    peek,
)

LZ4_LEGACY_MAGIC = b"\x02\x21\x4c\x18"
LZ4_LEGACY_BLOCK = 8 << 20


def lz4_legacy(data: bytes) -> bytes:
    """What ``lz4 -l`` writes: the magic, then 8 MiB blocks, each after its u32 LE size."""
    out = [LZ4_LEGACY_MAGIC]
    for i in range(0, len(data), LZ4_LEGACY_BLOCK):
        block = lz4.block.compress(data[i : i + LZ4_LEGACY_BLOCK], store_size=False)
        out += [struct.pack("<I", len(block)), block]
    return b"".join(out)


def encode(fmt: str, data: bytes) -> bytes:
    """*data* in format *fmt*, by the codec's own writer or by the reference library."""
    if fmt in ("gzip", "xz", "zstd"):
        return compress(data, fmt)
    return {
        "bzip2": bz2.compress,
        "lzma": lambda d: lzma.compress(d, lzma.FORMAT_ALONE),
        "lz4": lz4_legacy,
        "lz4frame": lz4.frame.compress,
    }[fmt](data)


def run_tool(*argv: str, data: bytes) -> bytes:
    if shutil.which(argv[0]) is None:
        pytest.skip(f"{argv[0]} not installed")
    return subprocess.run(argv, input=data, capture_output=True, check=True).stdout


def test_every_format_is_covered() -> None:
    assert set(FORMATS) == {"gzip", "xz", "lzma", "bzip2", "zstd", "lz4", "lz4frame"}
    assert DEFAULT_LIMIT == 1 << 30


@pytest.mark.parametrize("fmt", FORMATS)
def test_detect(fmt: str) -> None:
    assert detect(encode(fmt, b"some module bytes" * 10)) == fmt


@pytest.mark.parametrize(
    "data",
    [b"", b"\x7fELF\x02\x01\x01" + bytes(60), b"\x1f", b"BZh9 not bzip2", b"\x5d\x00\x00", b"MZ"],
)
def test_detect_plain(data: bytes) -> None:
    assert detect(data) is None
    assert detect(memoryview(data)) is None


def test_detect_magics() -> None:
    assert detect(b"\x28\xb5\x2f\xfd" + bytes(8)) == "zstd"
    assert detect(b"\x02\x21\x4c\x18") == "lz4"
    assert detect(b"\x04\x22\x4d\x18" + bytes(8)) == "lz4frame"
    assert detect(b"\xfd7zXZ\x00\x00\x01") == "xz"
    # what the kernel's `lzma -9` writes: 64 MiB dictionary, size unknown
    assert detect(b"\x5d\x00\x00\x00\x04" + b"\xff" * 8 + bytes(8)) == "lzma"
    assert detect(b"\x5d\x00\x00\x00\x05" + b"\xff" * 8) is None  # 80 MiB is no lzma(1) size


@pytest.mark.parametrize("fmt", FORMATS)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=1 << 16))
def test_round_trip(fmt: str, data: bytes) -> None:
    packed = encode(fmt, data)
    assert decompress(packed, fmt) == data
    assert decompress(packed) == data
    assert decompress(memoryview(packed)) == data
    assert decompress(packed, limit=len(data)) == data
    assert peek(packed, fmt, 10) == data[:10]


@pytest.mark.parametrize("fmt", FORMATS)
@settings(max_examples=25, deadline=None)
@given(data=st.binary(min_size=1, max_size=4096), garbage=st.binary(max_size=64))
def test_trailing_data_is_ignored(fmt: str, data: bytes, garbage: bytes) -> None:
    assume(not CODECS[fmt].matches(memoryview(garbage)))
    packed = encode(fmt, data)
    # a vmlinuz payload: the stream, the u32 size trailer, then whatever the image holds
    assert decompress(packed + struct.pack("<I", len(data)) + garbage, fmt) == data
    assert decompress(packed + garbage, fmt) == data


@pytest.mark.parametrize("fmt", FORMATS)
@settings(max_examples=25, deadline=None)
@given(data=st.binary(min_size=1, max_size=4096), cut=st.integers(min_value=1))
def test_truncated_input_raises(fmt: str, data: bytes, cut: int) -> None:
    packed = encode(fmt, data)
    # any strict prefix, except for legacy LZ4 the bare magic (a valid empty frame)
    keep = len(packed) - 1 - cut % (len(packed) - (8 if fmt == "lz4" else 1))
    with pytest.raises(DecompressError) as e:
        decompress(packed[:keep], fmt, path="m.ko")
    assert e.value.path == "m.ko"
    assert str(e.value).startswith("m.ko: ")


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_by_one_byte(fmt: str) -> None:
    packed = encode(fmt, os.urandom(20000))
    with pytest.raises(DecompressError, match="truncated"):
        decompress(packed[:-1], fmt, path="m.ko")


@pytest.mark.parametrize("fmt", ["gzip", "xz", "zstd", "bzip2"])
def test_corrupt_input_raises(fmt: str) -> None:
    data = bytes(range(256)) * 64
    packed = bytearray(encode(fmt, data))
    packed[len(packed) // 2] ^= 0x55
    with pytest.raises(DecompressError):
        decompress(bytes(packed), fmt)


def test_corrupt_lz4_block_raises() -> None:
    bad = LZ4_LEGACY_MAGIC + struct.pack("<I", 100) + b"\xff" * 100
    with pytest.raises(DecompressError, match="corrupt lz4") as e:
        decompress(bad, path="vmlinuz")
    assert e.value.offset == 4


def test_concatenated_streams_are_joined() -> None:
    for fmt in ("gzip", "xz", "zstd", "bzip2", "lz4", "lz4frame"):
        assert decompress(encode(fmt, b"first ") + encode(fmt, b"second")) == b"first second"


def test_plain_data_is_not_decompressed() -> None:
    with pytest.raises(DecompressError, match="not compressed"):
        decompress(b"\x7fELF" + bytes(100))
    with pytest.raises(DecompressError, match="not xz data"):
        decompress(compress(b"x", "gzip"), "xz")
    with pytest.raises(UsageError):
        decompress(b"", "rar")


# -- the cap ---------------------------------------------------------------------------------------

BOMB_SIZE = 64 << 20


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    zeros = bytes(BOMB_SIZE)
    return {fmt: encode(fmt, zeros) for fmt in FORMATS}


@pytest.mark.parametrize("fmt", FORMATS)
def test_bomb_stops_at_the_cap(fmt: str, bombs: dict[str, bytes]) -> None:
    bomb = bombs[fmt]
    assert len(bomb) < BOMB_SIZE // 100
    tracemalloc.start()
    try:
        with pytest.raises(DecompressError, match="decompressed size exceeds 1000 bytes"):
            decompress(bomb, limit=1000, path="bomb")
        _, high = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # streaming decoders stop after limit + 1 bytes of output; what remains is their own state
    # (the LZMA dictionary: 8 MiB for lzma's default preset) and, for legacy LZ4, a block
    # format, one 8 MiB block decoded to tell "too large" from "corrupt" (python-lz4 holds it
    # twice while copying it out)
    assert high < (20 << 20 if fmt == "lz4" else 10 << 20) < BOMB_SIZE
    assert peek(bomb, fmt, 16) == bytes(16)


@pytest.mark.parametrize("fmt", FORMATS)
def test_cap_is_exact(fmt: str) -> None:
    data = os.urandom(5000)
    packed = encode(fmt, data)
    assert decompress(packed, limit=5000) == data
    with pytest.raises(DecompressError, match="exceeds 4999 bytes"):
        decompress(packed, limit=4999)


# -- legacy LZ4 as the kernel's `lz4 -l` writes it -------------------------------------------------


def lz4_tool(data: bytes) -> bytes:
    return run_tool("lz4", "-l", "-9", "-c", data=data)


@pytest.fixture(scope="module")
def big() -> bytes:
    # 20 MiB: two full 8 MiB blocks and a short one, part random and part compressible
    return os.urandom(9 << 20) + bytes(range(256)) * (11 << 12)


def test_lz4_tool_multi_block(big: bytes) -> None:
    packed = lz4_tool(big)
    assert packed[:4] == LZ4_LEGACY_MAGIC
    assert detect(packed) == "lz4"
    assert decompress(packed) == big
    # a vmlinuz payload: the size trailer, then padding or code
    trailer = struct.pack("<I", len(big))
    assert decompress(packed + trailer) == big
    assert decompress(packed + trailer + bytes(16) + b"\x31\xc0\x48\x8d" * 8) == big
    with pytest.raises(DecompressError, match="exceeds"):
        decompress(packed, limit=10 << 20)
    with pytest.raises(DecompressError, match="truncated"):
        decompress(packed[: len(packed) - 1000])


def test_lz4_tool_concatenated_frames(big: bytes) -> None:
    packed = lz4_tool(big) + lz4_tool(b"tail")
    assert decompress(packed + b"\x00" * 4) == big + b"tail"


def test_lz4_exact_block_multiple_with_trailer() -> None:
    data = bytes(range(256)) * (LZ4_LEGACY_BLOCK // 256)
    packed = lz4_tool(data)
    # the trailer (8 MiB) would be a plausible block size; nothing follows it, so it ends
    assert decompress(packed + struct.pack("<I", len(data))) == data


def test_lz4_short_block_ends_the_frame() -> None:
    packed = lz4_legacy(b"short") + struct.pack("<I", 16) + bytes(16)
    assert decompress(packed) == b"short"


def test_lz4_empty_frame() -> None:
    assert decompress(lz4_tool(b"")) == b""


def test_lz4_block_returns_the_real_length() -> None:
    block = lz4.block.compress(b"abc" * 10, store_size=False)
    assert len(lz4.block.decompress(block, uncompressed_size=LZ4_LEGACY_BLOCK)) == 30


def test_lzma_tool_with_trailer() -> None:
    data = bytes(range(256)) * 400
    packed = run_tool("xz", "--format=lzma", "-9", "-c", data=data)  # as `lzma -9`
    assert detect(packed) == "lzma"
    assert decompress(packed + struct.pack("<I", len(data)) + bytes(12)) == data


# -- writers ---------------------------------------------------------------------------------------


def test_xz_uses_crc32_and_a_1mib_dictionary() -> None:
    packed = compress(b"module" * 1000, "xz")
    assert packed[:6] == b"\xfd7zXZ\x00"
    assert packed[6:8] == b"\x00\x01"  # stream flags: check ID 1 is CRC32 (4 would be CRC64)
    # the same bytes as `xz --check=crc32 --lzma2=dict=1MiB` (scripts/Makefile.modinst)
    data = Path(__file__).read_bytes() * 50
    assert compress(data, "xz") == run_tool(
        "xz", "--check=crc32", "--lzma2=dict=1MiB", "-c", data=data
    )


@pytest.mark.parametrize(("fmt", "tool"), [("xz", "xz"), ("zstd", "zstd"), ("gzip", "gzip")])
def test_tools_read_what_we_write(fmt: str, tool: str) -> None:
    data = os.urandom(1000) + bytes(100000)
    assert run_tool(tool, "-d", "-c", data=compress(data, fmt)) == data


def test_gzip_is_reproducible() -> None:
    packed = compress(b"x" * 1000, "gzip")
    assert packed[3] == 0  # no FNAME and no other flags
    assert packed[4:8] == bytes(4)  # MTIME 0, as gzip -n
    assert packed == compress(b"x" * 1000, "gzip")


def test_levels() -> None:
    data = bytes(range(256)) * 1000
    for fmt in ("xz", "zstd", "gzip"):
        assert decompress(compress(data, fmt, level=1)) == data


def test_compress_rejects_other_formats() -> None:
    with pytest.raises(UsageError):
        compress(b"", "bzip2")
    with pytest.raises(UsageError):
        compress(b"", "rar")


# -- files -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "suffix"),
    [
        ("xz", ".ko.xz"),
        ("zstd", ".ko.zst"),
        ("gzip", ".ko.gz"),
        ("bzip2", ".ko.bz2"),
        ("lz4", ".lz4"),
        ("lz4frame", ".lz4"),
        ("lzma", ".lzma"),
        ("xz", ".ko"),  # no telling suffix: found by magic
    ],
)
def test_decompress_file(tmp_path: Path, fmt: str, suffix: str) -> None:
    data = b"\x7fELF" + os.urandom(3000)
    f = tmp_path / ("m" + suffix)
    f.write_bytes(encode(fmt, data))
    assert decompress_file(f) == data
    assert decompress_file(str(f)) == data


def test_decompress_file_plain(tmp_path: Path) -> None:
    data = b"\x7fELF" + os.urandom(3000)
    f = tmp_path / "m.ko"
    f.write_bytes(data)
    assert decompress_file(f) == data


def test_decompress_file_errors(tmp_path: Path) -> None:
    f = tmp_path / "m.ko.xz"
    f.write_bytes(b"\x7fELF" + bytes(60))
    with pytest.raises(DecompressError, match="not xz data") as e:
        decompress_file(f)
    assert e.value.path == str(f)
    f.write_bytes(compress(b"x" * 5000, "xz")[:-8])
    with pytest.raises(DecompressError, match="truncated") as e:
        decompress_file(f)
    assert e.value.path == str(f)
    f.write_bytes(compress(b"x" * 5000, "xz"))
    with pytest.raises(DecompressError, match="exceeds"):
        decompress_file(f, limit=100)
    with pytest.raises(NotFoundError):
        decompress_file(tmp_path / "missing.ko")
