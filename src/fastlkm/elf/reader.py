"""The one ELF reader: ELF32/ELF64, little and big endian, sections, symbols, REL/RELA.

Built for hostile input: every offset and size is checked against the file before it is
used, counts are checked against the file size before anything is allocated, and every
error is a :class:`FormatError` naming the file and the offset.  Parsing is lazy: only
the section headers are read up front; symbols and relocations when asked for.
"""

from __future__ import annotations

from functools import cached_property
from typing import NamedTuple

from fastlkm.elf.structs import (
    ELFCLASS32,
    ELFCLASS64,
    ELFDATA2LSB,
    ELFDATA2MSB,
    ELFMAG,
    EM_MIPS,
    LAYOUTS,
    SHN_LORESERVE,
    SHN_UNDEF,
    SHN_XINDEX,
    SHT_NOBITS,
    SHT_REL,
    SHT_RELA,
    SHT_SYMTAB,
    Layout,
    Shdr,
)
from fastlkm.errors import FormatError


class Section(NamedTuple):
    index: int
    name: str
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    info: int
    addralign: int
    entsize: int


class Symbol(NamedTuple):
    index: int
    name: str
    value: int
    size: int
    info: int
    other: int
    shndx: int

    @property
    def bind(self) -> int:
        return self.info >> 4

    @property
    def type(self) -> int:
        return self.info & 0xF


class Relocation(NamedTuple):
    offset: int
    sym: int
    type: int
    addend: int | None  # None for REL: the addend is in place


def cstring(data: bytes, offset: int) -> bytes:
    """The NUL-terminated string at *offset*; an unterminated tail ends at the buffer end."""
    end = data.find(b"\0", offset)
    return data[offset:] if end < 0 else data[offset:end]


class ElfFile:
    """A parsed view of an ELF image held in memory (bytes, never modified)."""

    def __init__(self, data: bytes, path: str | None = None):
        self.data = data
        self.path = path
        size = len(data)
        if data[:4] != ELFMAG[:len(data[:4])] or (size >= 4 and data[:4] != ELFMAG):
            raise FormatError("not an ELF file (bad magic)", path, 0)
        if size < 16:
            raise FormatError(f"truncated ELF identification ({size} bytes)", path, 0)
        elfclass, encoding = data[4], data[5]
        if elfclass not in (ELFCLASS32, ELFCLASS64):
            raise FormatError(f"unknown ELF class {elfclass}", path, 4)
        if encoding not in (ELFDATA2LSB, ELFDATA2MSB):
            raise FormatError(f"unknown ELF data encoding {encoding}", path, 5)
        self.layout: Layout = LAYOUTS[(elfclass, encoding == ELFDATA2LSB)]
        lay = self.layout
        if size < lay.ehdr.size:
            raise FormatError("truncated ELF header", path, 0)
        ehdr = lay.read_ehdr(data)
        self.e_type, self.machine, self.entry, self.flags = \
            ehdr.type, ehdr.machine, ehdr.entry, ehdr.flags
        shoff, shentsize, shnum, shstrndx = ehdr.shoff, ehdr.shentsize, ehdr.shnum, \
            ehdr.shstrndx
        self.sections: list[Section] = []
        if shoff == 0:
            return  # no section headers: an image without them (stripped of everything)
        if shentsize != lay.shdr.size:
            raise FormatError(f"section header size {shentsize}, expected {lay.shdr.size}",
                              path, 0)
        if shoff > size or shoff + shentsize > size:
            raise FormatError("section header table beyond end of file", path, shoff)
        if shnum == 0 or shstrndx == SHN_XINDEX:
            # extended numbering: the real values live in section header 0
            h0 = self._shdr(shoff, 0)
            if shnum == 0:
                shnum = h0.size
            if shstrndx == SHN_XINDEX:
                shstrndx = h0.link
        if shoff + shnum * shentsize > size:
            raise FormatError(f"{shnum} section headers do not fit in the file", path, shoff)
        raw = [self._shdr(shoff, i) for i in range(shnum)]
        for i, h in enumerate(raw):
            if h.type != SHT_NOBITS and (h.offset > size or h.offset + h.size > size):
                raise FormatError(f"section {i} lies beyond end of file", path,
                                  shoff + i * shentsize)
        names = b""
        if 0 < shstrndx < shnum:
            h = raw[shstrndx]
            names = data[h.offset:h.offset + h.size]
        for i, h in enumerate(raw):
            name_off = h.name
            name = ""
            if name_off:
                if name_off >= len(names):
                    raise FormatError(f"section {i} name offset {name_off} out of bounds", path,
                                      shoff + i * shentsize)
                name = cstring(names, name_off).decode("utf-8", "replace")
            self.sections.append(Section(i, name, *h[1:]))
        self._by_name: dict[str, Section] = {}
        for s in self.sections:
            self._by_name.setdefault(s.name, s)

    def _shdr(self, shoff: int, i: int) -> Shdr:
        return self.layout.read_shdr(self.data, shoff + i * self.layout.shdr.size)

    def error(self, message: str, offset: int | None = None) -> FormatError:
        return FormatError(message, self.path, offset)

    # --- sections ---------------------------------------------------------------------

    @property
    def is64(self) -> bool:
        return self.layout.is64

    @property
    def little(self) -> bool:
        return self.layout.little

    def section(self, name: str) -> Section | None:
        """The first section called *name*, or None."""
        if not self.sections:
            return None
        return self._by_name.get(name)

    def section_data(self, sec: Section) -> bytes:
        if sec.type == SHT_NOBITS:
            return b""
        return self.data[sec.offset:sec.offset + sec.size]

    def section_by_index(self, index: int) -> Section:
        if not 0 <= index < len(self.sections):
            raise self.error(f"section index {index} out of range")
        return self.sections[index]

    # --- symbols ----------------------------------------------------------------------

    @cached_property
    def symtab(self) -> Section | None:
        for s in self.sections:
            if s.type == SHT_SYMTAB:
                return s
        return None

    @cached_property
    def _symtab(self) -> tuple[list[tuple[int, ...]], bytes]:
        """The symbol table as (st_name, st_info, st_other, st_shndx, st_value, st_size)
        tuples, and its string table; names are decoded only when asked for."""
        sec = self.symtab
        if sec is None:
            return [], b""
        lay = self.layout
        if sec.size % lay.sym.size:
            raise self.error(f".symtab size {sec.size} is not a multiple of {lay.sym.size}",
                             sec.offset)
        strtab = self.section_data(self.section_by_index(sec.link))
        data = self.data[sec.offset:sec.offset + sec.size]
        if lay.is64:
            raw = list(lay.sym.iter_unpack(data))
        else:
            raw = [(n, i, o, x, v, z) for n, v, z, i, o, x in lay.sym.iter_unpack(data)]
        nstr = len(strtab)
        if raw and max(t[0] for t in raw) >= max(nstr, 1):
            bad = next(i for i, t in enumerate(raw) if t[0] >= nstr and t[0])
            raise self.error(f"symbol {bad} name offset {raw[bad][0]} out of bounds",
                             sec.offset + bad * lay.sym.size)
        return raw, strtab

    @property
    def nsymbols(self) -> int:
        return len(self._symtab[0])

    def symbol(self, i: int) -> Symbol:
        """Symbol *i* of the symbol table, its name decoded."""
        raw, strtab = self._symtab
        name, info, other, shndx, value, size = raw[i]
        end = strtab.find(b"\0", name)
        s = strtab[name:end if end >= 0 else len(strtab)].decode("utf-8", "replace")
        return Symbol(i, s, value, size, info, other, shndx)

    def symbols_where(self, *, shndx: int | None = None, prefix: bytes | None = None
                      ) -> list[Symbol]:
        """The symbols (index 0 excluded) in section *shndx* and/or whose name starts with
        *prefix*, without decoding the others' names."""
        raw, strtab = self._symtab
        sw = strtab.startswith
        if prefix is None:
            idx = [i for i, t in enumerate(raw) if t[3] == shndx]
        elif shndx is None:
            idx = [i for i, t in enumerate(raw) if sw(prefix, t[0])]
        else:
            idx = [i for i, t in enumerate(raw) if t[3] == shndx and sw(prefix, t[0])]
        return [self.symbol(i) for i in idx if i]

    @cached_property
    def symbols(self) -> list[Symbol]:
        """Every entry of the symbol table (index 0 included), names decoded."""
        return [self.symbol(i) for i in range(self.nsymbols)]

    def symbol_section(self, sym: Symbol) -> Section | None:
        """The section a defined symbol lives in (None for undefined/absolute/common)."""
        if sym.shndx == SHN_UNDEF or sym.shndx >= SHN_LORESERVE:
            return None
        return self.section_by_index(sym.shndx)

    # --- relocations ------------------------------------------------------------------

    def relocation_sections(self, target: Section) -> list[Section]:
        """The REL/RELA sections that apply to *target* (sh_info names the target)."""
        return [s for s in self.sections
                if s.type in (SHT_REL, SHT_RELA) and s.info == target.index]

    def relocations(self, sec: Section) -> list[Relocation]:
        lay = self.layout
        rela = sec.type == SHT_RELA
        st = lay.rela if rela else lay.rel
        if sec.size % st.size:
            raise self.error(f"{sec.name}: size {sec.size} is not a multiple of {st.size}",
                             sec.offset)
        data = self.data[sec.offset:sec.offset + sec.size]
        out: list[Relocation] = []
        mips64 = lay.is64 and self.machine == EM_MIPS
        for t in st.iter_unpack(data):
            offset, info = t[0], t[1]
            addend = t[2] if rela else None
            if mips64:
                # MIPS64 r_info is r_sym (32 bits), r_ssym, r_type3, r_type2, r_type (8 bits
                # each), every field in file byte order; only the primary type matters here
                if lay.little:
                    sym, rtype = info & 0xFFFFFFFF, info >> 56
                else:
                    sym, rtype = info >> 32, info & 0xFF
            elif lay.is64:
                sym, rtype = info >> 32, info & 0xFFFFFFFF
            else:
                sym, rtype = info >> 8, info & 0xFF
            out.append(Relocation(offset, sym, rtype, addend))
        return out

    def relocations_for(self, target: Section) -> dict[int, tuple[Symbol, int]]:
        """Map offset within *target* -> (symbol, addend), addend read in place for REL."""
        nsyms = self.nsymbols
        cache: dict[int, Symbol] = {}
        tdata = self.section_data(target)
        out: dict[int, tuple[Symbol, int]] = {}
        word = self.layout.u32
        for rsec in self.relocation_sections(target):
            for r in self.relocations(rsec):
                if r.sym >= nsyms:
                    raise self.error(f"{rsec.name}: relocation symbol {r.sym} out of range",
                                     rsec.offset)
                if r.addend is None:
                    if r.offset + 4 > len(tdata):
                        raise self.error(f"{rsec.name}: relocation offset {r.offset} beyond "
                                         f"{target.name}", rsec.offset)
                    addend = word.unpack_from(tdata, r.offset)[0]
                    if addend & 0x80000000:
                        addend -= 1 << 32
                else:
                    addend = r.addend
                sym = cache.get(r.sym)
                if sym is None:
                    sym = cache[r.sym] = self.symbol(r.sym)
                out[r.offset] = (sym, addend)
        return out
