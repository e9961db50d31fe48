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


def alter_vermagic(data: bytes) -> bytes:
    """Change a flag of the vermagic string (``mod_unload`` -> ``mod_unlXad``): past the
    release, so that kernels with MODVERSIONS compare it too (same_magic())."""
    off, size = _section(data, ".modinfo")
    for s in data[off:off + size].split(b"\0"):
        if s.startswith(b"vermagic=") and b"mod_unload" in s:
            old = s.decode()
            return replace_modinfo(data, old, old.replace("mod_unload", "mod_unlXad"))
    raise AssertionError("no vermagic with mod_unload in .modinfo")


def drop_vermagic(data: bytes) -> bytes:
    """Hide the vermagic (as modprobe --force-vermagic does): the kernel forces the load."""
    off, size = _section(data, ".modinfo")
    for s in data[off:off + size].split(b"\0"):
        if s.startswith(b"vermagic="):
            old = s.decode()
            return replace_modinfo(data, old, "vermagiX" + old[8:])
    raise AssertionError("no vermagic in .modinfo")


def make_common(data: bytes) -> bytes:
    """Turn the first named data object of the symbol table into a common symbol
    (st_shndx = SHN_COMMON), as a module built with -fcommon has."""
    elf = ElfFile(data)
    sec = elf.section(".symtab")
    assert sec is not None
    at = 6 if sec.entsize == 24 else 14   # st_shndx in Elf64_Sym / Elf32_Sym
    order = "little" if elf.little else "big"
    for s in elf.symbols:
        if s.name and s.type == 1 and 0 < s.shndx < 0xFF00:   # STT_OBJECT, a real section
            pos = sec.offset + s.index * sec.entsize + at
            return data[:pos] + (0xFFF2).to_bytes(2, order) + data[pos + 2:]
    raise AssertionError("no data object in .symtab")


def rename(data: bytes, old: str, new: str) -> bytes:
    """Another module name of the same length, in .modinfo's name= and in struct module
    (.gnu.linkonce.this_module), where the kernel reads it."""
    assert len(old) == len(new)
    data = replace_modinfo(data, f"name={old}", f"name={new}")
    off, size = _section(data, ".gnu.linkonce.this_module")
    i = data.find(old.encode() + b"\0", off, off + size)
    assert i >= 0, f"{old} not in struct module"
    return data[:i] + new.encode() + data[i + len(old):]


def hide_version(data: bytes, symbol: str) -> bytes:
    """Rename *symbol*'s entry in __versions (first letter to 'X'): the module then has no
    version for it."""
    off, size = _section(data, "__versions")
    word = ElfFile(data).layout.word.size
    for e in range(off, off + size, MODULE_NAME_LEN):
        name = data[e + word:e + MODULE_NAME_LEN].split(b"\0")[0]
        if name == symbol.encode():
            return data[:e + word] + b"X" + data[e + word + 1:]
    raise AssertionError(f"{symbol} not in __versions")


# --- damaged ELF section headers (ELF64 little-endian, as the amd64 corpus) -------------

E_SHOFF, E_SHENTSIZE, E_SHNUM, E_SHSTRNDX = 0x28, 0x3A, 0x3C, 0x3E
SH_NAME, SH_TYPE, SH_OFFSET, SH_LINK = 0, 4, 24, 40
SHDR_SIZE = 64
SHT_PROGBITS = 1


def _put(data: bytes, at: int, value: int, size: int) -> bytes:
    return data[:at] + value.to_bytes(size, "little") + data[at + size:]


def _shdr_at(data: bytes, index: int) -> int:
    return int.from_bytes(data[E_SHOFF:E_SHOFF + 8], "little") + index * SHDR_SIZE


def _index(data: bytes, name: str) -> int:
    sec = ElfFile(data).section(name)
    assert sec is not None, f"no {name} section"
    return sec.index


def set_ehdr(data: bytes, field: str, value: int) -> bytes:
    """One field of the ELF header: 'shoff', 'shentsize', 'shnum' or 'shstrndx'."""
    at, size = {"shoff": (E_SHOFF, 8), "shentsize": (E_SHENTSIZE, 2),
                "shnum": (E_SHNUM, 2), "shstrndx": (E_SHSTRNDX, 2)}[field]
    return _put(data, at, value, size)


def set_shdr(data: bytes, index: int | str, field: str, value: int) -> bytes:
    """One field of a section header, by index or section name: 'name', 'type',
    'offset' or 'link'."""
    i = _index(data, index) if isinstance(index, str) else index
    at, size = {"name": (SH_NAME, 4), "type": (SH_TYPE, 4), "offset": (SH_OFFSET, 8),
                "link": (SH_LINK, 4)}[field]
    return _put(data, _shdr_at(data, i) + at, value, size)


def shdr_field(data: bytes, index: int | str, field: str) -> int:
    i = _index(data, index) if isinstance(index, str) else index
    at, size = {"name": (SH_NAME, 4), "type": (SH_TYPE, 4), "offset": (SH_OFFSET, 8),
                "link": (SH_LINK, 4)}[field]
    start = _shdr_at(data, i) + at
    return int.from_bytes(data[start:start + size], "little")


def unterminated_shstrtab(data: bytes) -> bytes:
    """The section name table's last byte made a letter."""
    sec = ElfFile(data).sections[int.from_bytes(data[E_SHSTRNDX:E_SHSTRNDX + 2], "little")]
    at = sec.offset + sec.size - 1
    return data[:at] + b"x" + data[at + 1:]
