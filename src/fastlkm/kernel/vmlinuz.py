"""The ELF vmlinux inside a kernel image: bzImage, EFI zboot, compressed or plain vmlinux.

Boot loaders do not need the ELF file, but fastlkm does: its ``__ksymtab`` sections are the
kernel's exports. An x86 bzImage carries it compressed (with the relocations appended) and says
where in its setup header; other images are searched for a compressed stream that decodes to
ELF. Raw images (arm64 ``Image``, the payload of an ARM ``zImage``, of s390x's image, of an
EFI zboot image or of MIPS's ELF decompressor) hold no ELF file, only the loaded bytes:
``payloads()`` offers them too, for the export tables to be recovered from (imagesyms.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from fastlkm.errors import DecompressError, FormatError
from fastlkm.io.codecs import CODECS, Buffer, decompress, detect, max_decompressed, peek

_ELF_MAGIC = b"\x7fELF"

# x86 boot protocol (Documentation/arch/x86/boot.rst): offsets in the setup header
_SETUP_SECTS = 0x1F1
_HEADER = 0x202  # "HdrS"
_VERSION = 0x206
_PAYLOAD_OFFSET = 0x248  # since 2.08, from the start of the protected-mode code
_PAYLOAD_LENGTH = 0x24C

# EFI zboot (drivers/firmware/efi/libstub/zboot-header.S): "MZ", "zimg", u32 payload offset
# from the start of the file, u32 size of the compressed stream alone (without the decoded
# length Makefile.zboot appends to all but gzip), two reserved words, compression type string
_ZBOOT_PAYLOAD = 8
_ZBOOT_COMP_TYPE = 24

_MAX_CANDIDATES = 64  # streams tried when searching an image
_MAX_HITS = 4096  # magic matches looked at per format while collecting them


@dataclass(frozen=True)
class ImageLayout:
    """Where a kernel image keeps its kernel, as far as headers (not decoding) tell."""

    kind: str  # "ELF", "compressed", "bzImage", "EFI zboot" or "image"
    fmt: str | None  # compression of the payload, None when unknown or plain
    offset: int  # where the payload starts in the file
    length: int | None  # its length, when a header states it
    version: int | None = None  # x86 boot protocol version, as 0x020f for 2.15


def _u16(data: memoryview, offset: int) -> int:
    return int.from_bytes(data[offset : offset + 2], "little")


def _u32(data: memoryview, offset: int) -> int:
    return int.from_bytes(data[offset : offset + 4], "little")


def _payload(kind: str, data: memoryview, start: int, length: int, field: int) -> tuple[int, int]:
    if length == 0 or start + length > len(data):
        raise FormatError(
            f"{kind} payload ({length} bytes at {start}) lies outside the file of {len(data)}",
            offset=field,
        )
    return start, length


def _bzimage(data: memoryview) -> ImageLayout | None:
    # as a boot loader reads the setup header (Documentation/arch/x86/boot.rst)
    if len(data) < _PAYLOAD_LENGTH + 4 or data[_HEADER : _HEADER + 4] != b"HdrS":
        return None
    version = _u16(data, _VERSION)
    code = ((data[_SETUP_SECTS] or 4) + 1) * 512  # setup_sects 0 means 4
    if version < 0x0208:
        return ImageLayout("bzImage", None, code, None, version)
    start, length = _payload(
        "bzImage",
        data,
        code + _u32(data, _PAYLOAD_OFFSET),
        _u32(data, _PAYLOAD_LENGTH),
        _PAYLOAD_OFFSET,
    )
    return ImageLayout("bzImage", detect(data[start : start + length]), start, length, version)


def _zboot(data: memoryview) -> ImageLayout | None:
    # as a non-EFI loader reads the header of drivers/firmware/efi/libstub/zboot-header.S
    if len(data) < _ZBOOT_COMP_TYPE + 32 or data[:2] != b"MZ" or data[4:8] != b"zimg":
        return None
    start, length = _payload(
        "EFI zboot",
        data,
        _u32(data, _ZBOOT_PAYLOAD),
        _u32(data, _ZBOOT_PAYLOAD + 4),
        _ZBOOT_PAYLOAD,
    )
    fmt = detect(data[start : start + length])
    if fmt is None:  # fall back to the name the header gives
        named = bytes(data[_ZBOOT_COMP_TYPE : _ZBOOT_COMP_TYPE + 32]).split(b"\0")[0]
        fmt = named.decode("ascii", "replace") or None
    return ImageLayout("EFI zboot", fmt, start, length)


def probe(data: Buffer) -> ImageLayout:
    """What kind of kernel image *data* is and where its payload lies (no decoding)."""
    view = memoryview(data).cast("B")
    if view[:4] == _ELF_MAGIC:
        return ImageLayout("ELF", None, 0, len(view))
    fmt = detect(view)
    if fmt is not None:
        return ImageLayout("compressed", fmt, 0, len(view))
    return _bzimage(view) or _zboot(view) or ImageLayout("image", None, 0, None)


def _candidates(data: bytes) -> Iterator[tuple[int, str]]:
    """(offset, format) of the first streams found in *data*, in file order, capped."""
    found: list[tuple[int, str]] = []
    view = memoryview(data)
    for codec in CODECS.values():
        hits = kept = 0
        pos = data.find(codec.magic)
        while pos >= 0 and hits < _MAX_HITS and kept < _MAX_CANDIDATES:
            hits += 1
            if codec.matches(view[pos:]):
                found.append((pos, codec.name))
                kept += 1
            pos = data.find(codec.magic, pos + 1)
    found.sort()
    return iter(found[:_MAX_CANDIDATES])


def _decompress_at(
    data: memoryview, start: int, end: int, fmt: str, limit: int, path: str | None
) -> bytes:
    try:
        return decompress(data[start:end], fmt, limit=limit, path=path)
    except DecompressError as e:
        e.offset = start + (e.offset or 0)
        raise


def _no_elf(path: str | None, why: str) -> FormatError:
    return FormatError(f"no ELF vmlinux found in kernel image ({why})", path)


def _search(data: bytes, path: str | None, limit: int) -> bytes:
    # no kernel counterpart: the image's own decompressor knows where its payload is; here
    # each embedded stream, in file order, is tried for an ELF header
    view = memoryview(data)
    for offset, fmt in _candidates(data):
        try:
            head = peek(view[offset:], fmt, len(_ELF_MAGIC))
        except DecompressError:
            continue
        if head == _ELF_MAGIC:
            return _decompress_at(view, offset, len(view), fmt, limit, path)
    raise _no_elf(path, "no compressed stream in it decodes to ELF")


def _extract(data: bytes, path: str | None, limit: int, nested: bool) -> bytes:
    try:
        layout = probe(data)
    except FormatError as e:
        raise (e.with_path(path) if path else e) from None
    view = memoryview(data)
    if layout.kind == "ELF":
        return data
    if layout.kind == "compressed" and not nested:
        inner = decompress(view, layout.fmt, limit=limit, path=path)
        return _extract(inner, path, limit, nested=True)
    if layout.length is None or layout.kind == "compressed":
        return _search(data, path, limit)
    end = layout.offset + layout.length
    if layout.fmt not in CODECS:
        raise FormatError(
            f"{layout.kind} payload is not compressed in any known format", path, layout.offset
        )
    inner = _decompress_at(view, layout.offset, end, layout.fmt, limit, path)
    if inner[:4] != _ELF_MAGIC:
        raise _no_elf(path, f"the {layout.kind} payload is a raw image, not ELF")
    return inner


def extract_vmlinux(data: Buffer, path: str | None = None, *, limit: int | None = None) -> bytes:
    """The ELF vmlinux in the kernel image *data* (read from *path*, named in errors).

    ELF input is returned as it is; a wholly compressed file is decoded once and looked into
    again; a bzImage's payload is taken from its setup header; anything else is searched for
    the first of at most 64 compressed streams that decodes to ELF. Raises FormatError when
    the image holds no ELF file, DecompressError when its payload cannot be decoded or would
    exceed *limit* bytes.
    """
    if limit is None:
        limit = max_decompressed()
    return _extract(data if isinstance(data, bytes) else bytes(data), path, limit, nested=False)


# arm64 Image header (Documentation/arch/arm64/booting.rst): "ARM\x64" at 0x38; ARM zImage
# (arch/arm/boot/compressed/head.S): 0x016f2818 at 0x24, in the image's byte order
_ARM64_MAGIC = (0x38, b"ARM\x64")
_ZIMAGE_MAGIC = (0x24, (b"\x18\x28\x6f\x01", b"\x01\x6f\x28\x18"))


@dataclass(frozen=True)
class Payload:
    """A candidate for the kernel proper inside an image: an ELF file, or loaded bytes."""

    form: str        # for messages: "arm64 Image", "zImage, xz payload at 0xe7a5", ...
    data: bytes
    elf: bool


def image_form(data: Buffer) -> str:
    """What a kernel image that is neither ELF nor bzImage nor EFI zboot is, by its magic."""
    view = memoryview(data)
    at, magic = _ARM64_MAGIC
    if bytes(view[at:at + 4]) == magic:
        return "arm64 Image"
    at, magics = _ZIMAGE_MAGIC
    if bytes(view[at:at + 4]) in magics:
        return "zImage"
    return "kernel image"


def _streams(data: bytes, form: str, limit: int, path: str | None,
             errors: list[DecompressError]) -> Iterator[Payload]:
    # no kernel counterpart: the image's own decompressor knows where its payload is; here
    # each embedded stream, in file order, is decoded and offered
    view = memoryview(data)
    for offset, fmt in _candidates(data):
        try:
            inner = _decompress_at(view, offset, len(view), fmt, limit, path)
        except DecompressError as e:
            errors.append(e)
            continue
        yield Payload(f"{form}, {fmt} payload at {offset:#x}", inner, inner[:4] == _ELF_MAGIC)


def payloads(data: Buffer, path: str | None = None, *, limit: int | None = None,
             errors: list[DecompressError] | None = None) -> Iterator[Payload]:
    """The candidates for the kernel proper in the image *data*, most likely first.

    An ELF file is offered as it is, then the streams embedded in it (MIPS's vmlinuz is an
    ELF decompressor); a bzImage's or EFI zboot image's payload is taken from its header; an
    arm64 Image is its own payload; anything else offers each compressed stream it holds (at
    most 64), then itself.  Streams that do not decode are skipped and appended to *errors*.
    """
    if limit is None:
        limit = max_decompressed()
    errs = errors if errors is not None else []
    raw = data if isinstance(data, bytes) else bytes(data)
    try:
        layout = probe(raw)
    except FormatError as e:
        raise (e.with_path(path) if path else e) from None
    if layout.kind == "compressed":
        inner = decompress(memoryview(raw), layout.fmt, limit=limit, path=path)
        if inner[:4] == _ELF_MAGIC:
            yield Payload(f"{layout.fmt}-compressed ELF vmlinux", inner, True)
        else:
            yield Payload(f"{layout.fmt}-compressed {image_form(inner)}", inner, False)
            yield from _streams(inner, f"{layout.fmt}-compressed image", limit, path, errs)
        return
    if layout.kind == "ELF":
        yield Payload("ELF vmlinux", raw, True)
        yield from _streams(raw, "ELF image", limit, path, errs)
        return
    if layout.kind in ("bzImage", "EFI zboot") and layout.length is not None:
        if layout.fmt not in CODECS:
            raise FormatError(f"{layout.kind} payload is not compressed in any known format",
                              path, layout.offset)
        end = layout.offset + layout.length
        inner = _decompress_at(memoryview(raw), layout.offset, end, layout.fmt, limit, path)
        yield Payload(f"{layout.kind}, {layout.fmt} payload", inner, inner[:4] == _ELF_MAGIC)
        return
    form = image_form(raw)
    if form == "arm64 Image":
        yield Payload(form, raw, False)
        return
    yield from _streams(raw, form, limit, path, errs)
    yield Payload(form, raw, False)


def describe(data: Buffer) -> str:
    """A short description of a kernel image for messages, e.g. "bzImage, zstd payload"."""
    try:
        layout = probe(data)
    except FormatError as e:
        return f"kernel image with a bad header: {e.message}"
    if layout.kind == "ELF":
        return "ELF vmlinux"
    if layout.kind == "compressed":
        return f"{layout.fmt}-compressed file"
    if layout.kind == "image":
        form = image_form(data)
        if form == "arm64 Image":
            return "arm64 Image (the kernel's loaded bytes, no ELF)"
        first = next(_candidates(bytes(data)), None)
        if first is None:
            return f"{form} without compressed streams"
        return f"{form}, first compressed stream {first[1]} at offset {first[0]:#x}"
    name = "EFI zboot image" if layout.kind == "EFI zboot" else layout.kind
    if layout.version is not None and layout.version < 0x0208:
        major, minor = layout.version >> 8, layout.version & 0xFF
        return f"{name} (boot protocol {major}.{minor:02}), payload not located"
    return f"{name}, {layout.fmt or 'unknown'} payload"
