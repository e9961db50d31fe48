"""The one ELF writer: small, checked edits of an existing image, nothing else moved.

What it can do, and all it does (ELF32/ELF64, little and big endian):

- replace the contents of a section in place, when the size is unchanged;
- patch a symbol's value and a relocation's offset (``r_offset``);
- append sections: their data go after the last byte of the image's contents, their
  names at the end of ``.shstrtab``, and a new section-header table after them;
- remove sections that a previous run appended (they must still be the last ones).

Every other byte stays where it was: section contents, program headers and segments,
symbols, relocations.  The section-header table is the only structure that moves.  When
it was the last thing in the file (after zero padding, as linkers and ``objcopy`` write
it), it is written again after the new sections; otherwise the old one is left in place,
unreferenced, and everything after it is kept.  ``.shstrtab`` grows in place when its
contents end the image (the usual layout), else a grown copy is appended.

Built on :class:`~fastlkm.elf.reader.ElfFile`, which has already checked every section
against the file; the edits are checked here.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastlkm.elf.reader import ElfFile, Section
from fastlkm.elf.structs import (
    SHN_LORESERVE,
    SHN_XINDEX,
    SHT_NOBITS,
    SHT_PROGBITS,
    SHT_REL,
    SHT_RELA,
    Shdr,
)
from fastlkm.errors import FormatError


@dataclass(frozen=True, slots=True)
class NewSection:
    """A section to append."""

    name: str
    data: bytes
    type: int = SHT_PROGBITS
    flags: int = 0
    addralign: int = 1
    link: int = 0
    info: int = 0
    entsize: int = 0


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a if a > 1 else n


class ElfWriter:
    """Edits of one :class:`ElfFile`, applied by :meth:`build` to a new image."""

    def __init__(self, elf: ElfFile):
        self.elf = elf
        self.lay = elf.layout
        self._buf: bytearray | None = None      # copied on the first in-place edit
        self._added: list[NewSection] = []
        self._removed: set[int] = set()
        self._ehdr = self.lay.read_ehdr(elf.data)
        self._phoff, self._shoff = self._ehdr.phoff, self._ehdr.shoff
        self._phentsize, self._phnum = self._ehdr.phentsize, self._ehdr.phnum
        self._shentsize = self._ehdr.shentsize
        self._shstrndx = self._shstrtab_index()

    # --- checks and helpers -----------------------------------------------------------

    def _error(self, message: str, offset: int | None = None) -> FormatError:
        return self.elf.error(message, offset)

    def _shstrtab_index(self) -> int:
        if self._ehdr.shstrndx == SHN_XINDEX and self.elf.sections:
            return self._raw_header(0).link   # extended numbering: in section header 0
        return self._ehdr.shstrndx

    def _raw_header(self, index: int) -> Shdr:
        return self.lay.read_shdr(self.elf.data, self._shoff + index * self._shentsize)

    def _buffer(self) -> bytearray:
        if self._buf is None:
            self._buf = bytearray(self.elf.data)
        return self._buf

    def _patch(self, offset: int, raw: bytes) -> None:
        buf = self._buffer()
        if offset < 0 or offset + len(raw) > len(buf):
            raise self._error(f"edit of {len(raw)} bytes beyond end of file", offset)
        buf[offset:offset + len(raw)] = raw

    def _word(self, value: int, what: str) -> bytes:
        if not 0 <= value < 1 << (8 * self.lay.ptr_size):
            raise self._error(f"{what} {value:#x} does not fit in an address")
        return self.lay.word.pack(value)

    # --- in-place edits ---------------------------------------------------------------

    def set_section_data(self, sec: Section, data: bytes) -> None:
        """Replace the contents of *sec* by *data* of the same size."""
        if sec.type == SHT_NOBITS:
            raise self._error(f"{sec.name}: a NOBITS section has no contents to replace")
        if len(data) != sec.size:
            raise self._error(f"{sec.name}: {len(data)} bytes to replace {sec.size}",
                              sec.offset)
        self._patch(sec.offset, data)

    def set_symbol_value(self, index: int, value: int) -> None:
        """Give symbol *index* of ``.symtab`` the value *value*."""
        sec = self.elf.symtab
        size = self.lay.sym.size
        if sec is None or not 0 <= index < sec.size // size:
            raise self._error(f"symbol {index} out of range")
        # st_value follows st_name (ELF32) or st_name/info/other/shndx (ELF64)
        self._patch(sec.offset + index * size + (8 if self.lay.is64 else 4),
                    self._word(value, "symbol value"))

    def set_relocation_offset(self, rsec: Section, index: int, offset: int) -> None:
        """Give entry *index* of the REL/RELA section *rsec* the r_offset *offset*."""
        if rsec.type not in (SHT_REL, SHT_RELA):
            raise self._error(f"{rsec.name} is not a relocation section", rsec.offset)
        size = (self.lay.rela if rsec.type == SHT_RELA else self.lay.rel).size
        if not 0 <= index < rsec.size // size:
            raise self._error(f"{rsec.name}: relocation {index} out of range", rsec.offset)
        self._patch(rsec.offset + index * size, self._word(offset, "relocation offset"))

    # --- sections added and removed ---------------------------------------------------

    def add_section(self, sec: NewSection) -> int:
        """Append *sec*; returns the index it will have."""
        if "\0" in sec.name:
            raise self._error(f"section name {sec.name!r} holds a NUL")
        if sec.addralign & (sec.addralign - 1):
            raise self._error(f"{sec.name}: alignment {sec.addralign} is not a power of 2")
        self._added.append(sec)
        return len(self.elf.sections) - len(self._removed) + len(self._added) - 1

    def remove_sections(self, indices: list[int]) -> None:
        """Drop sections that were appended by an earlier :meth:`build`: they must be the
        last section headers, their data must follow every other section's, and nothing
        may refer to them."""
        self._removed.update(indices)

    def _check_removal(self) -> None:
        secs = self.elf.sections
        n = len(secs)
        if not self._removed:
            return
        if min(self._removed) != n - len(self._removed) or max(self._removed) != n - 1:
            raise self._error("only the last sections can be removed (they were moved or "
                              "others were added after them)")
        if self._shstrndx in self._removed:
            raise self._error("cannot remove the section-name table")
        for s in secs:
            if s.index in self._removed:
                continue
            refs = {s.link} | ({s.info} if s.type in (SHT_REL, SHT_RELA) else set())
            if refs & self._removed:
                raise self._error(f"{s.name} refers to a section to be removed")
        for sym in self.elf.symbols:
            if sym.shndx in self._removed:
                raise self._error(f"symbol {sym.name!r} is defined in a section to be "
                                  f"removed")

    # --- output -----------------------------------------------------------------------

    def build(self) -> bytes:
        """The edited image: the kept contents, ``.shstrtab`` with the new names, the new
        sections' data, then the section-header table and the ELF header pointing at it."""
        data = bytes(self._buf) if self._buf is not None else self.elf.data
        if not self._added and not self._removed:
            return data
        if not self.elf.sections:
            raise self._error("no section headers to extend")
        self._check_removal()
        shs = self.elf.sections[self._shstrndx]
        if shs.type == SHT_NOBITS:
            raise self._error("the section-name table has no contents")
        kept = [s for s in self.elf.sections if s.index not in self._removed]
        headers = [self._raw_header(s.index) for s in kept]
        names, new_names = self._section_names(data, shs, headers)
        out, shs_off = self._kept_contents(data, shs, kept)
        out += names
        i_shs = next(k for k, s in enumerate(kept) if s.index == shs.index)
        headers[i_shs] = headers[i_shs]._replace(offset=shs_off, size=len(names))
        headers += self._append_data(out, new_names)
        self._append_headers(data, out, headers)
        return bytes(out)

    def _section_names(self, data: bytes, shs: Section, kept: list[Shdr]
                       ) -> tuple[bytearray, list[int]]:
        """``.shstrtab`` without the removed sections' names (appended last, cut off when
        nothing kept uses them) and with the added ones; the offset of each added name."""
        names = bytearray(data[shs.offset:shs.offset + shs.size])
        if self._removed:
            cut = min(self._raw_header(i).name for i in self._removed)
            if all(names.find(b"\0", h.name) < cut for h in kept if h.name):
                del names[cut:]
        new_names = []
        for a in self._added:
            new_names.append(len(names))
            names += a.name.encode() + b"\0"
        return names, new_names

    def _kept_contents(self, data: bytes, shs: Section, kept: list[Section]
                       ) -> tuple[bytearray, int]:
        """The image up to where the new contents go, and where ``.shstrtab`` goes: its
        old place when it ends the contents and the section-header table ends the file
        (the table and the removed sections are dropped, to be written again), else after
        everything (the old table left in place, unreferenced)."""
        secs = self.elf.sections

        def end(s: Section) -> int:
            return s.offset + s.size

        def has_data(s: Section) -> bool:
            return s.type != SHT_NOBITS and s.size > 0

        # the end of everything kept but .shstrtab: headers, segments, contents
        content_end = max([self.lay.ehdr.size, self._phoff + self._phnum * self._phentsize,
                           *(end(s) for s in kept if s.index != shs.index and has_data(s))])
        for i in range(self._phnum):
            p_offset, p_filesz = self._phdr(data, i)
            content_end = max(content_end, p_offset + p_filesz)
        all_end = max([end(shs), *(end(s) for s in secs if has_data(s))])
        sht_last = (self._shoff + len(secs) * self._shentsize == len(data)
                    and self._shoff >= all_end and not any(data[all_end:self._shoff]))
        if self._removed:
            if not sht_last:
                raise self._error("sections to remove are not at the end of the file")
            first = min([all_end, *(secs[i].offset for i in self._removed
                                    if has_data(secs[i]))])
            if first < content_end:
                raise self._error("sections to remove are followed by other contents")
        if not sht_last:
            return bytearray(data), len(data)
        if shs.offset >= content_end:
            return bytearray(data[:shs.offset]), shs.offset
        out = bytearray(data[:max(content_end, end(shs))])
        return out, len(out)

    def _append_data(self, out: bytearray, new_names: list[int]) -> list[Shdr]:
        """The added sections' data appended to *out*, each aligned; their headers."""
        headers = []
        for a, name_off in zip(self._added, new_names, strict=True):
            off = _align(len(out), a.addralign) if a.type != SHT_NOBITS else len(out)
            out += bytes(off - len(out))
            if a.type != SHT_NOBITS:
                out += a.data
            headers.append(Shdr(name_off, a.type, a.flags, 0, off, len(a.data), a.link, a.info,
                                a.addralign, a.entsize))
        return headers

    def _append_headers(self, data: bytes, out: bytearray, headers: list[Shdr]) -> None:
        """The section-header table appended to *out* (aligned), and the ELF header
        rewritten to point at it; past SHN_LORESERVE sections, the count and the name
        table's index live in section header 0 (extended numbering)."""
        lay = self.lay
        shoff = _align(len(out), 8 if lay.is64 else 4)
        out += bytes(shoff - len(out))
        shnum = len(headers)
        extended = shnum >= SHN_LORESERVE or self._shstrndx >= SHN_LORESERVE
        headers[0] = headers[0]._replace(
            size=shnum if extended and shnum >= SHN_LORESERVE else 0,
            link=self._shstrndx if extended and self._shstrndx >= SHN_LORESERVE else 0)
        for h in headers:
            out += lay.shdr.pack(*h)
        ehdr = lay.read_ehdr(data)._replace(
            shoff=shoff,
            shnum=0 if shnum >= SHN_LORESERVE else shnum,
            shstrndx=SHN_XINDEX if self._shstrndx >= SHN_LORESERVE else self._shstrndx)
        out[:lay.ehdr.size] = lay.ehdr.pack(*ehdr)

    def _phdr(self, data: bytes, i: int) -> tuple[int, int]:
        """(p_offset, p_filesz) of program header *i*."""
        lay = self.lay
        at = self._phoff + i * self._phentsize
        fmt = lay.word if lay.is64 else lay.u32
        if at + self._phentsize > len(data):
            raise self._error(f"program header {i} beyond end of file", at)
        if lay.is64:  # p_type p_flags p_offset p_vaddr p_paddr p_filesz
            return fmt.unpack_from(data, at + 8)[0], fmt.unpack_from(data, at + 32)[0]
        # p_type p_offset p_vaddr p_paddr p_filesz
        return fmt.unpack_from(data, at + 4)[0], fmt.unpack_from(data, at + 16)[0]
