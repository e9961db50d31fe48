"""Finding the ELF vmlinux in kernel images: synthetic ones, then the real Debian kernels."""

from __future__ import annotations

import bz2
import lzma
import os
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import lz4.block
import lz4.frame
import pytest

from fastlkm.errors import DecompressError, FormatError
from fastlkm.io.codecs import FORMATS, compress
from fastlkm.kernel.vmlinuz import ImageLayout, describe, extract_vmlinux, probe

# an ELF header and some body: enough for the magic test, which is all vmlinuz.py looks at
VMLINUX = b"\x7fELF\x02\x01\x01" + bytes(57) + bytes(range(256)) * 64


def encode(fmt: str, data: bytes) -> bytes:
    if fmt in ("gzip", "xz", "zstd"):
        return compress(data, fmt)
    if fmt == "lz4":  # as `lz4 -l`: magic, then blocks of at most 8 MiB after their u32 size
        block = lz4.block.compress(data, store_size=False)
        return b"\x02\x21\x4c\x18" + struct.pack("<I", len(block)) + block
    return {
        "bzip2": bz2.compress,
        "lzma": lambda d: lzma.compress(d, lzma.FORMAT_ALONE),
        "lz4frame": lz4.frame.compress,
    }[fmt](data)


def bzimage(
    payload: bytes, *, setup_sects: int = 27, version: int = 0x020F, code: bytes = b""
) -> bytes:
    """A bzImage as arch/x86/boot/tools/build.c lays it out, with the setup header facts."""
    setup = bytearray(((setup_sects or 4) + 1) * 512)
    setup[0x1F1] = setup_sects
    setup[0x1FE:0x200] = b"\x55\xaa"
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, version)
    head = b"\x31\xc0" * 200 + code  # the decompressor's code before the payload
    struct.pack_into("<II", setup, 0x248, len(head), len(payload))
    return bytes(setup) + head + payload + b"\xcc" * 300


def zboot(stream: bytes, comp_type: bytes = b"gzip") -> bytes:
    """An EFI zboot image: "MZ", "zimg", payload offset and size, the compression type.

    The size is that of the compressed stream alone: Makefile.zboot appends the decoded length
    after it, except for gzip, whose ISIZE already says it.
    """
    header = bytearray(4096)
    header[:2] = b"MZ"
    header[4:8] = b"zimg"
    struct.pack_into("<II", header, 8, len(header), len(stream))
    header[24 : 24 + len(comp_type)] = comp_type
    trailer = b"" if comp_type == b"gzip" else struct.pack("<I", 12345)
    return bytes(header) + stream + trailer + b"\x00" * 100


def test_elf_is_returned_as_it_is() -> None:
    assert extract_vmlinux(VMLINUX) is VMLINUX
    assert extract_vmlinux(bytearray(VMLINUX)) == VMLINUX
    assert probe(VMLINUX) == ImageLayout("ELF", None, 0, len(VMLINUX))
    assert describe(VMLINUX) == "ELF vmlinux"


@pytest.mark.parametrize("fmt", FORMATS)
def test_compressed_vmlinux(fmt: str) -> None:
    image = encode(fmt, VMLINUX)
    assert extract_vmlinux(image) == VMLINUX
    assert describe(image) == f"{fmt}-compressed file"


def test_compressed_bzimage_is_looked_into_once() -> None:
    image = compress(bzimage(encode("zstd", VMLINUX)), "gzip")
    assert extract_vmlinux(image) == VMLINUX


@pytest.mark.parametrize("fmt", FORMATS)
def test_bzimage(fmt: str) -> None:
    payload = encode(fmt, VMLINUX) + struct.pack("<I", len(VMLINUX))  # the size trailer
    image = bzimage(payload)
    layout = probe(image)
    assert layout == ImageLayout("bzImage", fmt, 28 * 512 + 400, len(payload), 0x020F)
    assert extract_vmlinux(image, "vmlinuz") == VMLINUX
    assert extract_vmlinux(memoryview(image)) == VMLINUX
    assert describe(image) == f"bzImage, {fmt} payload"


def test_bzimage_setup_sects_zero_means_four() -> None:
    image = bzimage(encode("xz", VMLINUX), setup_sects=0)
    assert probe(image).offset == 5 * 512 + 400
    assert extract_vmlinux(image) == VMLINUX


def test_bzimage_before_protocol_2_08_is_searched() -> None:
    image = bzimage(encode("gzip", VMLINUX), version=0x0206)
    assert probe(image).fmt is None
    assert describe(image) == "bzImage (boot protocol 2.06), payload not located"
    assert extract_vmlinux(image) == VMLINUX


def test_bzimage_payload_outside_the_file() -> None:
    image = bytearray(bzimage(encode("gzip", VMLINUX)))
    struct.pack_into("<I", image, 0x24C, len(image))
    with pytest.raises(FormatError, match="outside the file") as e:
        extract_vmlinux(bytes(image), "vmlinuz")
    assert (e.value.path, e.value.offset) == ("vmlinuz", 0x248)
    assert describe(bytes(image)).startswith("kernel image with a bad header")


def test_bzimage_payload_that_is_not_elf() -> None:
    with pytest.raises(FormatError, match="no ELF vmlinux found in kernel image"):
        extract_vmlinux(bzimage(encode("zstd", b"raw code" * 100)), "vmlinuz")
    with pytest.raises(FormatError, match="not compressed in any known format"):
        extract_vmlinux(bzimage(b"LZO?" * 100), "vmlinuz")


def test_bzimage_truncated_payload_names_path_and_offset() -> None:
    payload = encode("xz", VMLINUX)
    image = bytearray(bzimage(payload))
    start = probe(bytes(image)).offset
    image[start + len(payload) - 20 : start + len(payload)] = bytes(20)
    with pytest.raises(DecompressError) as e:
        extract_vmlinux(bytes(image), "vmlinuz")
    assert e.value.path == "vmlinuz"
    assert e.value.offset is not None and e.value.offset >= start


def test_bzimage_payload_over_the_cap() -> None:
    image = bzimage(encode("zstd", VMLINUX))
    with pytest.raises(DecompressError, match="exceeds 1000 bytes") as e:
        extract_vmlinux(image, "vmlinuz", limit=1000)
    assert e.value.offset == probe(image).offset


def test_zboot_holds_a_raw_image() -> None:
    stream = encode("gzip", b"\x00\x00\xa0\xe1" * 1000)
    image = zboot(stream)
    assert probe(image) == ImageLayout("EFI zboot", "gzip", 4096, len(stream))
    assert describe(image) == "EFI zboot image, gzip payload"
    with pytest.raises(FormatError, match=r"no ELF vmlinux found .*raw image"):
        extract_vmlinux(image, "vmlinuz")


def test_zboot_elf_payload() -> None:
    assert extract_vmlinux(zboot(encode("zstd", VMLINUX), b"zstd22")) == VMLINUX


def test_search_skips_streams_that_are_not_elf() -> None:
    # an arm64-like image: code, an embedded config (gzip, not ELF), false magics, then ELF
    image = (
        os.urandom(5000)
        + b"IKCFG_ST"
        + compress(b"CONFIG_MODULES=y\n" * 50, "gzip")
        + b"\x1f\x8b\x08 broken"
        + b"\xfd7zXZ\x00 broken"
        + os.urandom(3000)
        + encode("lz4", VMLINUX)
        + struct.pack("<I", len(VMLINUX))
        + os.urandom(2000)
    )
    assert extract_vmlinux(image) == VMLINUX
    assert describe(image).startswith("kernel image, first compressed stream gzip at offset ")


def test_raw_image_has_no_elf() -> None:
    image = b"MZ" + bytes(62) + b"ARMd" + os.urandom(100000).replace(b"\x7fELF", b"")
    with pytest.raises(FormatError, match="no ELF vmlinux found in kernel image") as e:
        extract_vmlinux(image, "Image")
    assert e.value.path == "Image"


def hostile_image() -> bytes:
    """An image full of stream magics (gzip, LZ4 legacy, lzma), 20,000 of each."""
    return b"MZ" + b"".join(
        magic + bytes(13)
        for _ in range(20000)
        for magic in (b"\x1f\x8b\x08", b"\x02\x21\x4c\x18", b"\x5d\x00\x00\x00\x04")
    )


def test_search_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hostile image full of magics: at most 4,096 are looked at per format and at most
    64 streams tried (counted here; benchmarks/scaling.py times it)."""
    from fastlkm.io import codecs
    from fastlkm.kernel import vmlinuz

    image = hostile_image()
    looked = tried = 0
    matches, peek = codecs.Codec.matches, vmlinuz.peek

    def counting_matches(self: codecs.Codec, data: memoryview) -> bool:
        nonlocal looked
        looked += 1
        return matches(self, data)

    def counting_peek(*args: object, **kwargs: object) -> bytes:
        nonlocal tried
        tried += 1
        return peek(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(codecs.Codec, "matches", counting_matches)
    monkeypatch.setattr(vmlinuz, "peek", counting_peek)
    with pytest.raises(FormatError, match="no ELF"):
        extract_vmlinux(image + encode("gzip", VMLINUX))
    assert 64 < looked <= 4096 * len(FORMATS)
    assert tried == 64
    assert describe(image).startswith("kernel image, first compressed stream gzip at offset 0x2")


# -- the real Debian kernels -----------------------------------------------------------------------

CORPUS = {
    # name: (payload format, where the image lies in the root)
    "6.1-cloud-amd64": ("lz4", "boot/vmlinuz-*"),
    "6.12-amd64": ("zstd", "boot/vmlinuz-*"),
    "6.1-686": (None, "boot/vmlinuz-*"),
    "sid-cloud-amd64": (None, "usr/lib/modules/*/vmlinuz"),
}


def section_names(elf: bytes, tmp_path: Path) -> set[str]:
    f = tmp_path / "vmlinux"
    f.write_bytes(elf)
    out = subprocess.run(["readelf", "-SW", str(f)], capture_output=True, text=True, check=True)
    names = set()
    for line in out.stdout.splitlines():
        if line.lstrip().startswith("[") and "]" in line:
            fields = line.split("]", 1)[1].split()
            if fields:
                names.add(fields[0])
    return names


@pytest.mark.corpus
@pytest.mark.parametrize("name", sorted(CORPUS))
def test_real_vmlinuz(
    name: str, corpus: Callable[[str], tuple[Path, str]], tmp_path: Path, capsys
) -> None:
    fmt, pattern = CORPUS[name]
    root, release = corpus(name)
    (image_path,) = sorted(root.glob(pattern))
    data = image_path.read_bytes()
    layout = probe(data)
    assert layout.kind == "bzImage"
    assert fmt is None or layout.fmt == fmt
    vmlinux = extract_vmlinux(data, str(image_path))
    assert vmlinux[:4] == b"\x7fELF"
    # the size trailer after an x86 payload is the length of what it decodes to
    trailer = data[layout.offset + layout.length - 4 : layout.offset + layout.length]
    assert int.from_bytes(trailer, "little") == len(vmlinux)
    assert "__ksymtab" in section_names(vmlinux, tmp_path)
    with capsys.disabled():
        print(f"\n{name} {release}: {describe(data)}, {len(vmlinux)} bytes")
