"""The compression formats modules and kernel images come in, one small codec per format.

Every codec sits behind the same interface (``Codec``): a strict magic test, and a decoder for
one stream that is told how much output it may produce and reports how much input it used. The
driver here concatenates streams, tolerates whatever follows the last one (a vmlinuz payload is
followed by a size trailer and padding) and enforces the cap on output size, so a decompression
bomb stops after at most ``limit + 1`` bytes of output (legacy LZ4, a block format, may decode
one more 8 MiB block to tell an oversized block from a corrupt one).
"""

from __future__ import annotations

import bz2
import contextlib
import io
import lzma
import os
import stat
import zlib
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, BinaryIO, NamedTuple

from fastlkm.errors import DecompressError, FastlkmError, NotFoundError, UsageError

Buffer = bytes | bytearray | memoryview

DEFAULT_LIMIT = 1 << 30
"""Cap on decompressed output: far above any vmlinux or module, far below a bomb."""

_run_limit = DEFAULT_LIMIT   # the cap of this run (set_max_decompressed(), --max-decompressed)

_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """A byte count as ``1073741824``, ``64M``, ``1G`` or ``512KiB`` (binary units)."""
    s = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = s[-1:] if s[-1:] in _SIZE_UNITS and s[-1:] else ""
    digits = s[: len(s) - len(unit)]
    if not digits.isdigit() or int(digits) == 0:
        raise UsageError(f"not a size: {text!r} (give bytes, or a number with K, M, G or T)")
    return int(digits) * _SIZE_UNITS[unit]


def set_max_decompressed(size: int) -> None:
    """Cap the output of every decoder whose caller names no limit, for the rest of the run
    (worker processes forked afterwards inherit it)."""
    global _run_limit
    _run_limit = size


def max_decompressed() -> int:
    """The cap a decoder uses when its caller names none."""
    return _run_limit


@contextlib.contextmanager
def decompression_cap(size: int | None) -> Iterator[None]:
    """Within the block, cap every decoder whose caller names no limit at *size* bytes
    (None: the cap as it is); the cap before is restored after it.  Worker processes
    forked within inherit it."""
    if size is None:
        yield
        return
    before = _run_limit
    set_max_decompressed(size)
    try:
        yield
    finally:
        set_max_decompressed(before)

# The decoders' dictionaries may be as large as their headers claim; never allow more than this
# (or the output cap, when larger), so a forged header cannot make liblzma allocate gigabytes.
_LZMA_MEMLIMIT_FLOOR = 256 << 20

_CHUNK = 8 << 20  # output read per call from the zstd stream reader

_LZ4_LEGACY_MAGIC = b"\x02\x21\x4c\x18"
_LZ4_LEGACY_WORD = int.from_bytes(_LZ4_LEGACY_MAGIC, "little")
_LZ4_LEGACY_BLOCK = 8 << 20  # every block but the last of a frame decodes to exactly this
_LZ4_LEGACY_BOUND = _LZ4_LEGACY_BLOCK + _LZ4_LEGACY_BLOCK // 255 + 16  # LZ4_compressBound()

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_ZSTD_BLOCK_MAX = 128 << 10


# -- checks beyond the magic -----------------------------------------------------------------------


def _is_lzma(data: memoryview) -> bool:
    # The .lzma "alone" header has no magic: properties byte, u32 dictionary size, u64
    # uncompressed size. Accept what lzma(1) writes: the default lc=3 lp=0 pb=2 properties (0x5d),
    # a dictionary of 2^n or 2^n + 2^(n-1) bytes of at least 64 KiB (so the header starts
    # 5d 00 00), and a size that is unknown (all ones) or below 2^48.
    if len(data) < 13:
        return False
    dict_size = int.from_bytes(data[1:5], "little")
    low = dict_size & -dict_size
    if not dict_size or dict_size not in (low, low * 3):
        return False
    size = int.from_bytes(data[5:13], "little")
    return size == (1 << 64) - 1 or size < 1 << 48


def _is_bzip2(data: memoryview) -> bool:
    # "BZh" and the block size digit, then a block header (the digits of pi) or, for an empty
    # stream, the end-of-stream marker (the digits of sqrt(pi)).
    return (
        len(data) >= 10
        and 0x31 <= data[3] <= 0x39
        and data[4:10] in (b"\x31\x41\x59\x26\x53\x59", b"\x17\x72\x45\x38\x50\x90")
    )


# -- decoders of one stream ------------------------------------------------------------------------
#
# Each takes the input from the start of one stream and the room left under the cap, returns the
# output (more than ``room`` bytes only to say that the cap was exceeded) and the number of input
# bytes the stream used. It raises DecompressError with an offset relative to the stream start.


def _truncated(fmt: str, offset: int | None = None) -> DecompressError:
    return DecompressError(f"truncated {fmt} data", offset=offset)


def _corrupt(fmt: str, why: object, offset: int | None = None) -> DecompressError:
    return DecompressError(f"corrupt {fmt} data: {why}", offset=offset)


def _drain(fmt: str, d: Any, src: memoryview, room: int,
           error: type[Exception]) -> tuple[bytes, int]:
    """One stream through a standard-library decompressor object, never producing more
    than room + 1 bytes: (output, input bytes consumed)."""
    try:
        out = d.decompress(src, room + 1)
    except error as e:
        raise _corrupt(fmt, e) from None
    if len(out) > room:
        return out, len(src)
    if not d.eof:
        raise _truncated(fmt)
    return out, len(src) - len(d.unused_data)


def _decode_gzip(src: memoryview, room: int) -> tuple[bytes, int]:
    # as gunzip() in lib/decompress_inflate.c: one member; its CRC32 and ISIZE are checked by zlib
    return _drain("gzip", zlib.decompressobj(wbits=31), src, room, zlib.error)


def _lzma_decoder(fmt: str, lzma_format: int) -> Callable[[memoryview, int], tuple[bytes, int]]:
    def decode(src: memoryview, room: int) -> tuple[bytes, int]:
        # as unxz() in lib/decompress_unxz.c and unlzma() in lib/decompress_unlzma.c
        d = lzma.LZMADecompressor(lzma_format, memlimit=max(room, _LZMA_MEMLIMIT_FLOOR))
        return _drain(fmt, d, src, room, lzma.LZMAError)

    return decode


def _decode_bzip2(src: memoryview, room: int) -> tuple[bytes, int]:
    # as bunzip2() in lib/decompress_bunzip2.c
    return _drain("bzip2", bz2.BZ2Decompressor(), src, room, OSError)


def _zstd_frame_size(src: memoryview) -> int:
    """Length of the zstd frame at the start of *src*, from its header and block headers."""
    if len(src) < 6:
        raise _truncated("zstd")
    fhd = src[4]  # frame header descriptor
    if fhd & 0x08:
        raise _corrupt("zstd", "reserved bit set in frame header", 4)
    single_segment = fhd >> 5 & 1
    pos = 5 + (1 - single_segment) + (0, 1, 2, 4)[fhd & 3] + (single_segment, 2, 4, 8)[fhd >> 6]
    while True:
        if pos + 3 > len(src):
            raise _truncated("zstd", pos)
        header = int.from_bytes(src[pos : pos + 3], "little")
        kind, size = header >> 1 & 3, header >> 3
        if kind == 3:
            raise _corrupt("zstd", "reserved block type", pos)
        if kind != 1 and size > _ZSTD_BLOCK_MAX:
            raise _corrupt("zstd", f"block of {size} bytes", pos)
        end = pos + 3 + (1 if kind == 1 else size)  # an RLE block stores its one byte
        if end > len(src):
            raise _truncated("zstd", pos)
        pos = end
        if header & 1:  # last block
            break
    if fhd & 0x04:  # content checksum
        pos += 4
        if pos > len(src):
            raise _truncated("zstd", pos - 4)
    return pos


def _decode_zstd(src: memoryview, room: int) -> tuple[bytes, int]:
    import zstandard  # the third-party codecs load when a file needs them

    # as decompress_unzstd() in lib/decompress_unzstd.c; the frame's end is found from its block
    # headers first, so the streaming reader sees exactly one frame and never the trailing data
    used = _zstd_frame_size(src)
    reader = zstandard.ZstdDecompressor().stream_reader(src[:used], read_across_frames=False)
    parts: list[bytes] = []
    total = 0
    try:
        while total <= room:
            chunk = reader.read(min(room + 1 - total, _CHUNK))
            if not chunk:
                break
            parts.append(chunk)
            total += len(chunk)
    except zstandard.ZstdError as e:
        raise _corrupt("zstd", e) from None
    return b"".join(parts), used


def _lz4_block(block: memoryview, room: int, offset: int) -> bytes:
    import lz4.block

    size = min(_LZ4_LEGACY_BLOCK, room + 1)
    try:
        return lz4.block.decompress(block, uncompressed_size=size)
    except lz4.block.LZ4BlockError:
        if size == _LZ4_LEGACY_BLOCK:
            raise _corrupt("lz4", "bad block", offset) from None
    # Either corrupt, or more output than the room left: one full-size try tells them apart.
    try:
        return lz4.block.decompress(block, uncompressed_size=_LZ4_LEGACY_BLOCK)
    except lz4.block.LZ4BlockError:
        raise _corrupt("lz4", "bad block", offset) from None


def _decode_lz4_legacy(src: memoryview, room: int) -> tuple[bytes, int]:
    # as unlz4() in lib/decompress_unlz4.c: after the magic, blocks each preceded by their
    # compressed size (u32 LE), each decoding to 8 MiB but the last. The frame ends at the end
    # of input, at the magic of a following frame, after a short block, or at a size word that
    # cannot be a block (zero, above LZ4_compressBound(8 MiB), or the size trailer of a vmlinuz
    # payload with nothing after it).
    parts: list[bytes] = []
    total = 0
    pos = 4
    full = True
    while len(src) - pos >= 4 and full:
        word = int.from_bytes(src[pos : pos + 4], "little")
        if word == _LZ4_LEGACY_WORD:  # the next frame's magic
            break
        if word == 0 or word > _LZ4_LEGACY_BOUND:
            if not parts and word:
                raise _corrupt("lz4", f"block of {word} bytes", pos)
            break
        avail = len(src) - pos - 4
        if word > avail:
            if avail == 0 and parts:
                break
            raise _truncated("lz4", pos)
        out = _lz4_block(src[pos + 4 : pos + 4 + word], room - total, pos)
        parts.append(out)
        total += len(out)
        pos += 4 + word
        if total > room:
            break
        full = len(out) == _LZ4_LEGACY_BLOCK
    return b"".join(parts), pos


def _decode_lz4_frame(src: memoryview, room: int) -> tuple[bytes, int]:
    import lz4.frame

    d = lz4.frame.LZ4FrameDecompressor()
    try:
        out = d.decompress(src, max_length=room + 1)
    except RuntimeError as e:
        raise _corrupt("lz4 frame", e) from None
    if len(out) > room:
        return out, len(src)
    if not d.eof:
        raise _truncated("lz4 frame")
    return out, len(src) - len(d.unused_data or b"")  # None, not b"", when nothing is left


# -- encoders --------------------------------------------------------------------------------------


def _encode_xz(data: Buffer, level: int | None) -> bytes:
    # as cmd_xz in scripts/Makefile.modinst: xz --check=crc32 --lzma2=dict=1MiB
    preset = 6 if level is None else level
    filters = [{"id": lzma.FILTER_LZMA2, "preset": preset, "dict_size": 1 << 20}]
    return lzma.compress(data, lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, filters=filters)


def _encode_zstd(data: Buffer, level: int | None) -> bytes:
    import zstandard

    # as cmd_zstd in scripts/Makefile.modinst: zstd at its default level, which writes the
    # content size and a checksum
    cctx = zstandard.ZstdCompressor(
        level=3 if level is None else level, write_checksum=True, write_content_size=True
    )
    return cctx.compress(data)


def _encode_gzip(data: Buffer, level: int | None) -> bytes:
    # as cmd_gzip in scripts/Makefile.modinst: gzip -n (no name, no time stamp), level 6
    c = zlib.compressobj(6 if level is None else level, zlib.DEFLATED, 31)
    return c.compress(data) + c.flush()


# -- the codec table -------------------------------------------------------------------------------


class Codec(NamedTuple):   # (not a dataclass: importing dataclasses is slow)
    """One compression format: how to recognise it, decode one stream, and maybe encode."""

    name: str
    magic: bytes  # the leading bytes of a stream
    suffix: str | None  # of a file holding one
    decode: Callable[[memoryview, int], tuple[bytes, int]]
    check: Callable[[memoryview], bool] | None = None  # a closer look when the magic is short
    concatenates: bool = True  # another stream of the same format may follow
    encode: Callable[[Buffer, int | None], bytes] | None = None

    def matches(self, data: memoryview) -> bool:
        """Whether a stream of this format starts *data*."""
        return data[: len(self.magic)] == self.magic and (self.check is None or self.check(data))


CODECS: Mapping[str, Codec] = MappingProxyType(
    {
        c.name: c
        for c in (
            # magic, then CM 8 (deflate), the only method gzip defines
            Codec("gzip", b"\x1f\x8b\x08", ".gz", _decode_gzip, encode=_encode_gzip),
            Codec(
                "xz",
                b"\xfd7zXZ\x00",
                ".xz",
                _lzma_decoder("xz", lzma.FORMAT_XZ),
                encode=_encode_xz,
            ),
            Codec("zstd", _ZSTD_MAGIC, ".zst", _decode_zstd, encode=_encode_zstd),
            Codec("bzip2", b"BZh", ".bz2", _decode_bzip2, _is_bzip2),
            Codec("lz4", _LZ4_LEGACY_MAGIC, ".lz4", _decode_lz4_legacy),
            Codec("lz4frame", b"\x04\x22\x4d\x18", ".lz4", _decode_lz4_frame),
            # last: a plausible header rather than a magic number
            Codec(
                "lzma",
                b"\x5d\x00\x00",
                ".lzma",
                _lzma_decoder("lzma", lzma.FORMAT_ALONE),
                _is_lzma,
                concatenates=False,
            ),
        )
    }
)
"""Every codec by name, in the order detect() tries them."""

FORMATS: tuple[str, ...] = tuple(CODECS)


def _codec(fmt: str) -> Codec:
    try:
        return CODECS[fmt]
    except KeyError:
        raise UsageError(f"unknown compression format {fmt!r}") from None


def detect(data: Buffer) -> str | None:
    """Name of the compression format *data* starts with, or None when it is plain."""
    view = memoryview(data)
    for codec in CODECS.values():
        if codec.matches(view):
            return codec.name
    return None


def _run(data: Buffer, fmt: str | None, room: int, path: str | None) -> bytes:
    """Decode the streams at the start of *data*; more than *room* bytes means "too large"."""
    view = memoryview(data).cast("B")
    name = fmt if fmt is not None else detect(view)
    if name is None:
        raise DecompressError("not compressed in any known format", path, 0)
    codec = _codec(name)
    if not codec.matches(view):
        raise DecompressError(f"not {name} data", path, 0)
    parts: list[bytes] = []
    total = 0
    pos = 0
    while True:
        try:
            out, used = codec.decode(view[pos:], room - total)
        except DecompressError as e:
            e.offset = pos + (e.offset or 0)
            raise (e.with_path(path) if path else e) from None
        parts.append(out)
        total += len(out)
        pos += used
        if total > room or not codec.concatenates or not codec.matches(view[pos:]):
            break
    return parts[0] if len(parts) == 1 else b"".join(parts)


def decompress(
    data: Buffer, fmt: str | None = None, *, limit: int | None = None, path: str | None = None
) -> bytes:
    """Decode *data* (format *fmt*, or found by detect()), producing at most *limit* bytes
    (default: max_decompressed()).

    Streams of the same format that follow one another are joined; anything else after the
    last complete stream is ignored. Raises DecompressError when the input is truncated,
    corrupt, or would decode to more than *limit* bytes.
    """
    if limit is None:
        limit = _run_limit
    out = _run(data, fmt, limit, path)
    if len(out) > limit:
        raise DecompressError(f"decompressed size exceeds {limit} bytes (the cap, "
                              "--max-decompressed)", path)
    return out


def peek(data: Buffer, fmt: str | None = None, size: int = 64, *, path: str | None = None) -> bytes:
    """The first *size* bytes *data* decodes to (fewer if it is shorter), decoding little more."""
    return _run(data, fmt, size, path)[:size]


def decompress_file(path: str | os.PathLike[str], *, limit: int | None = None) -> bytes:
    """Contents of the file at *path*, decompressed when its suffix or magic says so.

    A ``.xz``/``.zst``/``.gz``/``.bz2``/``.lzma`` suffix requires that format (``.lz4``
    either LZ4 framing); other files are decoded when their magic names a format, and are
    returned as they are read otherwise (a plain ``.ko`` costs one read).
    """
    name = os.fspath(path)
    try:
        # never blocks on a FIFO: only a regular file is read
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise FastlkmError("not a regular file", name)
            data = f.read()
    except FileNotFoundError:
        raise NotFoundError("no such file", name) from None
    except OSError as e:
        raise FastlkmError(e.strerror or str(e), name) from None
    fmt = detect(data)
    suffix = os.path.splitext(name)[1]
    wanted = [c.name for c in CODECS.values() if c.suffix == suffix]
    if wanted and fmt not in wanted:
        raise DecompressError(f"not {' or '.join(wanted)} data", name, 0)
    if fmt is None:
        return data
    return decompress(data, fmt, limit=limit, path=name)


def compress(data: Buffer, fmt: str, *, level: int | None = None) -> bytes:
    """Compress *data* as modules_install would, for "xz", "zstd" or "gzip".

    The settings are those of the kernel's scripts/Makefile.modinst, because the result must be
    loadable by the kernel itself (CONFIG_MODULE_DECOMPRESS) and not only by kmod: xz uses a
    CRC32 check, since the kernel's xz decoder (lib/xz) verifies CRC32 but rejects the xz tool's
    default CRC64, and a 1 MiB dictionary (``xz --check=crc32 --lzma2=dict=1MiB``) to keep the
    decoder's memory small; zstd uses its default level 3; gzip level 6 without name or time
    stamp (``gzip -n``), so the output is reproducible. *level* overrides the level or preset.
    """
    codec = _codec(fmt)
    if codec.encode is None:
        raise UsageError(f"cannot compress as {fmt}: modules are compressed as xz, zstd or gzip")
    return codec.encode(data, level)


# -- streams ---------------------------------------------------------------------------------------

_STREAM_CHUNK = 1 << 16  # input read per refill


class _StreamReader(io.RawIOBase):
    """Decodes one compressed stream read from *src* on demand; never yields more than
    *limit* bytes in total (raises DecompressError instead)."""

    def __init__(self, src: BinaryIO, fmt: str | None, limit: int, path: str | None):
        self._src, self._fmt, self._limit, self._path = src, fmt, limit, path
        self._total = 0
        self._zstd: Any = None
        self._d: Any = None
        if fmt == "zstd":
            import zstandard

            self._zstd = zstandard.ZstdDecompressor().stream_reader(src, read_across_frames=True)
        elif fmt == "gzip":
            self._d = zlib.decompressobj(wbits=31)
        elif fmt in ("xz", "lzma"):
            self._d = lzma.LZMADecompressor(lzma.FORMAT_XZ if fmt == "xz" else lzma.FORMAT_ALONE,
                                            memlimit=_LZMA_MEMLIMIT_FLOOR)
        elif fmt == "bzip2":
            self._d = bz2.BZ2Decompressor()
        elif fmt is not None:
            raise UsageError(f"cannot stream {fmt} data")

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        out = self._decode(min(len(b), self._limit - self._total + 1))
        self._total += len(out)
        if self._total > self._limit:
            raise DecompressError(f"decompressed size exceeds {self._limit} bytes", self._path)
        b[: len(out)] = out
        return len(out)

    def _decode(self, want: int) -> bytes:
        fmt = self._fmt or "plain"
        if self._zstd is not None:
            import zstandard

            try:
                return self._zstd.read(want)
            except zstandard.ZstdError as e:
                raise _corrupt(fmt, e).with_path(self._path or "") from None
        if self._d is None:
            return self._src.read(want)
        while not self._d.eof:
            if fmt == "gzip":  # zlib keeps what max_length left undecoded in unconsumed_tail
                data = self._d.unconsumed_tail or self._src.read(_STREAM_CHUNK)
                exhausted = not data
            else:
                exhausted = self._d.needs_input
                data = self._src.read(_STREAM_CHUNK) if exhausted else b""
                exhausted = exhausted and not data
            try:
                out = self._d.decompress(data, want)
            except (zlib.error, lzma.LZMAError, OSError) as e:
                raise _corrupt(fmt, e).with_path(self._path or "") from None
            if out:
                return out
            if exhausted:
                raise _truncated(fmt).with_path(self._path or "")
        return b""


def open_stream(src: BinaryIO, fmt: str | None, *, limit: int | None = None,
                path: str | None = None) -> BinaryIO:
    """A file object decoding *src* (format *fmt*: gzip, xz, lzma, bzip2, zstd, or None for
    plain) as it is read, raising DecompressError past *limit* bytes of output."""
    limit = _run_limit if limit is None else limit
    return io.BufferedReader(_StreamReader(src, fmt, limit, path), _STREAM_CHUNK)
