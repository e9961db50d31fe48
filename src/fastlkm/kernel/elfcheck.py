"""What load_module() says of a module image whose section headers it refuses: the
checks of elf_validity_cache_copy() (6.12 and later: elf_validity_cache_sechdrs(),
_secstrings(), _index_info(), _index_mod(), _index_sym(), _index_str()), of the one
function before it (6.4-6.11), and of elf_validity_check() and setup_load_info() before
6.4, each with the kernel's own line.

The image is read with the struct layouts of elf/structs.py, not with the ELF reader:
these are the files the reader refuses, and the question is what the kernel says of
them.  The ELF header's type and machine are checked before this (kernel/module.py, the
loader).
"""

from __future__ import annotations

from fastlkm.elf.structs import (
    ELFMAG,
    LAYOUTS,
    SHF_ALLOC,
    SHN_UNDEF,
    SHT_NOBITS,
    SHT_NULL,
    SHT_STRTAB,
    SHT_SYMTAB,
    Shdr,
)
from fastlkm.kernel.modinfo import parse_modinfo

THIS_MODULE = b".gnu.linkonce.this_module"
NO_NAME = "(missing .modinfo section or name field)"


class _Image:
    """The ELF header and the section headers the checks read, by field name."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.layout = LAYOUTS[(data[4], data[5] != 2)]
        h = self.layout.read_ehdr(data)
        self.shoff, self.shentsize, self.shnum, self.shstrndx = \
            h.shoff, h.shentsize, h.shnum, h.shstrndx
        self.shdr_size = self.layout.shdr.size

    def shdr(self, i: int) -> Shdr:
        return self.layout.read_shdr(self.data, self.shoff + i * self.shdr_size)

    def in_bounds(self, s: Shdr) -> bool:
        """validate_section_offset()"""
        return s.offset + s.size <= len(self.data)

    def cstr(self, at: int) -> bytes:
        end = self.data.find(b"\0", at)
        return self.data[at:end if end >= 0 else len(self.data)]


def _modinfo_name(img: _Image, sec: Shdr) -> str | None:
    """get_modinfo(info, "name") of a .modinfo section known to lie in the file."""
    info = parse_modinfo(img.data[sec.offset:sec.offset + sec.size])
    return next((v for k, v in info if k == "name"), None)


def elf_validity(data: bytes, version: tuple[int, int], module_size: int | None = None
                 ) -> str | None:
    """The kernel's line for the first check of *data* that fails on a kernel of
    *version* (major, minor), or None.  *module_size* is sizeof(struct module) of that
    kernel, when known (checked since 6.4)."""
    if len(data) < 64 or data[:4] != ELFMAG or data[4] not in (1, 2):
        return None          # not an ELF image: the caller's error, not a verdict
    img = _Image(data)
    if img.shentsize != img.shdr_size:
        return "Invalid ELF section header size"
    if img.shoff >= len(data) or img.shnum * img.shdr_size > len(data) - img.shoff:
        return "Invalid ELF section header overflow"
    if img.shnum == 0:
        return None          # nothing the checks below can read; left to the reader
    shdrs = [img.shdr(i) for i in range(img.shnum)]
    if version >= (6, 12):
        return _since_6_12(img, shdrs, module_size)
    return _before_6_12(img, shdrs, version, module_size)


def _section0(shdrs: list[Shdr]) -> str | None:
    s = shdrs[0]
    if s.type != SHT_NULL or s.size != 0 or s.addr != 0:
        return (f"ELF Spec violation: section 0 type({s.type})!=SH_NULL or non-zero len "
                f"or addr")
    return None


def _shstrndx(img: _Image) -> str | None:
    if img.shstrndx == SHN_UNDEF or img.shstrndx >= img.shnum:
        return (f"Invalid ELF section name index: {img.shstrndx} || e_shstrndx "
                f"({img.shstrndx}) >= e_shnum ({img.shnum})")
    return None


def this_module_problem(name: str | None, count: int, sh_type: int, sh_flags: int,
                        size: int, version: tuple[int, int], module_size: int | None
                        ) -> str | None:
    """The kernel's line for a module's *count* ``.gnu.linkonce.this_module`` sections
    (the last one's type, flags and size) on a kernel of *version*, or None:
    setup_load_info() before 6.4, elf_validity_cache_index_mod() since (its words
    changed in 6.12)."""
    who = name or NO_NAME
    if version < (6, 4):
        return f"{who}: No module found in object" if count == 0 else None
    if count != 1:
        return f"module {who}: {'Exactly' if version >= (6, 12) else 'Only'} one " \
               f".gnu.linkonce.this_module section must exist."
    if sh_type == SHT_NOBITS:
        return f"module {who}: .gnu.linkonce.this_module section must have a size set"
    if not sh_flags & SHF_ALLOC:
        return f"module {who}: .gnu.linkonce.this_module must occupy memory during " \
               f"process execution"
    if module_size is not None and size != module_size:
        return f"module {who}: .gnu.linkonce.this_module section size must match the " \
               f"kernel's built struct module size at run time"
    return None


def _this_module(name: str | None, shdrs: list[Shdr], found: list[int],
                 version: tuple[int, int], module_size: int | None) -> str | None:
    last = shdrs[found[-1]] if found else shdrs[0]
    return this_module_problem(name, len(found), last.type, last.flags, last.size,
                               version, module_size)


def _since_6_12(img: _Image, shdrs: list[Shdr], module_size: int | None) -> str | None:
    # elf_validity_cache_sechdrs()
    if why := _section0(shdrs):
        return why
    for i, s in enumerate(shdrs[1:], 1):
        if s.type not in (SHT_NULL, SHT_NOBITS) and not img.in_bounds(s):
            return f"Invalid ELF section in module (section {i} type {s.type})"
    # elf_validity_cache_secstrings()
    if why := _shstrndx(img):
        return why
    strhdr = shdrs[img.shstrndx]
    if strhdr.type != SHT_STRTAB:
        return f"Invalid ELF section name table type: {strhdr.type}"
    if strhdr.size == 0:
        return "empty section name table"
    if img.data[strhdr.offset + strhdr.size - 1] != 0:
        return "ELF Spec violation: section name table isn't null terminated"
    for i, s in enumerate(shdrs):
        if s.type != SHT_NULL and s.name >= strhdr.size:
            return f"Invalid ELF section name in module (section {i} type {s.type})"

    def named(want: bytes) -> list[int]:
        return [i for i, s in enumerate(shdrs) if s.type != SHT_NULL
                and img.cstr(strhdr.offset + s.name) == want]

    # elf_validity_cache_index_info(): find_any_unique_sec()
    infos = named(b".modinfo")
    if len(infos) > 1:
        return "Only one .modinfo section must exist."
    name = _modinfo_name(img, shdrs[infos[0]]) if infos else None
    # elf_validity_cache_index_mod()
    if why := _this_module(name, shdrs, named(THIS_MODULE), (6, 12), module_size):
        return why
    # elf_validity_cache_index_sym()
    syms = [i for i, s in enumerate(shdrs) if i and s.type == SHT_SYMTAB]
    if len(syms) != 1:
        return f"{name or NO_NAME}: module has no symbols (stripped?)"
    # elf_validity_cache_index_str()
    link = shdrs[syms[0]].link
    if link == SHN_UNDEF or link >= img.shnum:
        return f"Invalid ELF sh_link!=SHN_UNDEF({link}) or (sh_link({link}) >= " \
               f"hdr->e_shnum({img.shnum})"
    if shdrs[link].type != SHT_STRTAB:
        return f"Invalid ELF symbol string table type: {shdrs[link].type}"
    return None


def _before_6_12(img: _Image, shdrs: list[Shdr], version: tuple[int, int],
                 module_size: int | None) -> str | None:
    """elf_validity_cache_copy() of 6.4-6.11; elf_validity_check() and
    setup_load_info() before 6.4."""
    since_6_4 = version >= (6, 4)
    if why := _shstrndx(img):
        return why
    strhdr = shdrs[img.shstrndx]
    if not img.in_bounds(strhdr):
        return f"Invalid ELF section hdr(type {strhdr.type})"
    if strhdr.size == 0:
        return "empty section name table"
    if img.data[strhdr.offset + strhdr.size - 1] != 0:
        return "ELF Spec violation: section name table isn't null terminated"
    if why := _section0(shdrs):
        return why
    mods: list[int] = []
    infos: list[int] = []
    syms: list[int] = []
    for i, s in enumerate(shdrs[1:], 1):
        if s.type in (SHT_NULL, SHT_NOBITS):
            continue
        if s.type == SHT_SYMTAB:
            if s.link == SHN_UNDEF or s.link >= img.shnum:
                return f"Invalid ELF sh_link!=SHN_UNDEF({s.link}) or (sh_link({s.link}) " \
                       f">= hdr->e_shnum({img.shnum})"
            syms.append(i)
        if not img.in_bounds(s):
            return f"Invalid ELF section in module (section {i} type {s.type})"
        if since_6_4 and s.name < strhdr.size:
            n = img.cstr(strhdr.offset + s.name)
            if n == THIS_MODULE:
                mods.append(i)
            elif n == b".modinfo":
                infos.append(i)
        if s.flags & SHF_ALLOC and s.name >= strhdr.size:
            return f"Invalid ELF section name in module (section {i} type {s.type})"
    if since_6_4:
        if len(infos) > 1:
            return "Only one .modinfo section must exist."
        name = _modinfo_name(img, shdrs[infos[0]]) if infos else None
        if len(syms) != 1:
            return f"{name or NO_NAME}: module has no symbols (stripped?)"
        return _this_module(name, shdrs, mods, version, module_size)
    # setup_load_info(): find_sec() takes the first SHF_ALLOC section of a name
    def find_sec(want: bytes) -> int:
        for i, s in enumerate(shdrs[1:], 1):
            if s.flags & SHF_ALLOC and img.cstr(strhdr.offset + s.name) == want:
                return i
        return 0

    info = find_sec(b".modinfo")
    name = _modinfo_name(img, shdrs[info]) if info else None
    if not syms:
        return f"{name or NO_NAME}: module has no symbols (stripped?)"
    return this_module_problem(name, 1 if find_sec(THIS_MODULE) else 0, 0, 0, 0, version,
                               module_size)
