"""Byte-level edits of real modules for the failure-path tests: the same bytes go to the
loader model and to the real kernel under QEMU."""

from __future__ import annotations

import tests.qemu as qemu
from fastlkm.elf.reader import ElfFile
from fastlkm.kernel.modversions import MODULE_NAME_LEN


def _section(data: bytes, name: str) -> tuple[int, int]:
    sec = ElfFile(data).section(name)
    assert sec is not None, f"no {name} section"
    return sec.offset, sec.size


def replace_modinfo(data: bytes, old: str, new: str) -> bytes:
    """Replace the .modinfo string *old* by *new* of the same length."""
    assert len(old) == len(new)
    off, size = _section(data, ".modinfo")
    body = data[off:off + size]
    key = b"\0" + old.encode() + b"\0"
    i = (b"\0" + body + b"\0").find(key)
    assert i >= 0, f"{old!r} not in .modinfo"
    at = off + i
    return data[:at] + new.encode() + data[at + len(old):]


def set_license(data: bytes, license: str) -> bytes:
    """Give the module another license string of the same length (e.g. GPL -> Pro)."""
    off, size = _section(data, ".modinfo")
    for s in data[off:off + size].split(b"\0"):
        if s.startswith(b"license="):
            old = s.decode()
            new = "license=" + license.ljust(len(old) - 8, "\0")[:len(old) - 8]
            return replace_modinfo(data, old, new)
    raise AssertionError("no license in .modinfo")


def drop_import_ns(data: bytes, namespace: str) -> bytes:
    """Hide an import_ns= entry by renaming its key (the kernel ignores unknown keys)."""
    return replace_modinfo(data, f"import_ns={namespace}", f"import_nX={namespace}")


def alter_crc(data: bytes, symbol: str) -> bytes:
    """Flip the low bit of the CRC the module expects for *symbol*."""
    off, size = _section(data, "__versions")
    elf = ElfFile(data)
    word = elf.layout.word.size
    for e in range(off, off + size, MODULE_NAME_LEN):
        name = data[e + word:e + MODULE_NAME_LEN].split(b"\0")[0]
        if name == symbol.encode():
            crc_at = e if elf.little else e + word - 1
            return data[:crc_at] + bytes([data[crc_at] ^ 1]) + data[crc_at + 1:]
    raise AssertionError(f"{symbol} not in __versions")


def unsigned(data: bytes) -> bytes:
    return qemu.strip_signature(data)
