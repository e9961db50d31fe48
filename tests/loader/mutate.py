"""Byte-level edits of real modules for the failure-path tests: the same bytes go to the
loader model and to the real kernel under QEMU."""

from __future__ import annotations

import tests.qemu as qemu
from fastlkm.elf.reader import ElfFile
from fastlkm.elf.structs import LAYOUTS, Layout
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


# --- damaged ELF headers, by field name (elf/structs.py's layouts) ---------------------


def _layout(data: bytes) -> Layout:
    return LAYOUTS[(data[4], data[5] != 2)]


def _index(data: bytes, name: str) -> int:
    sec = ElfFile(data).section(name)
    assert sec is not None, f"no {name} section"
    return sec.index


def ehdr_field(data: bytes, field: str) -> int:
    return getattr(_layout(data).read_ehdr(data), field)  # type: ignore[no-any-return]


def set_ehdr(data: bytes, field: str, value: int) -> bytes:
    """One field of the ELF header (Ehdr's names: 'shoff', 'shstrndx', ...)."""
    lay = _layout(data)
    h = lay.read_ehdr(data)._replace(**{field: value})
    return lay.ehdr.pack(*h) + data[lay.ehdr.size:]


def _shdr_at(data: bytes, index: int | str) -> int:
    i = _index(data, index) if isinstance(index, str) else index
    return ehdr_field(data, "shoff") + i * _layout(data).shdr.size


def shdr_field(data: bytes, index: int | str, field: str) -> int:
    """One field of a section header, by index or section name (Shdr's names)."""
    shdr = _layout(data).read_shdr(data, _shdr_at(data, index))
    return getattr(shdr, field)  # type: ignore[no-any-return]


def set_shdr(data: bytes, index: int | str, field: str, value: int) -> bytes:
    lay = _layout(data)
    at = _shdr_at(data, index)
    h = lay.read_shdr(data, at)._replace(**{field: value})
    return data[:at] + lay.shdr.pack(*h) + data[at + lay.shdr.size:]


def unterminated_shstrtab(data: bytes) -> bytes:
    """The section name table's last byte made a letter."""
    sec = ElfFile(data).sections[ehdr_field(data, "shstrndx")]
    at = sec.offset + sec.size - 1
    return data[:at] + b"x" + data[at + 1:]
