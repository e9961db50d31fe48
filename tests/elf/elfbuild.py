"""A small ELF writer for tests: relocatable objects (or linked images without program
headers) of either class and byte order, with a symbol table and REL/RELA sections.

Sections, symbols and relocations refer to each other by name; the builder lays the file
out as ``ELF header, section contents, section header table`` and resolves the names.
After :meth:`ElfBuilder.build`, ``shoff`` and ``offsets`` say where things landed, so a
test can corrupt a precise field.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

ELFCLASS32, ELFCLASS64 = 1, 2
ET_REL, ET_EXEC = 1, 2
EM_386, EM_MIPS, EM_PPC, EM_S390, EM_X86_64, EM_AARCH64 = 3, 8, 20, 22, 62, 183
SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB, SHT_RELA, SHT_NOBITS, SHT_REL = 1, 2, 3, 4, 8, 9
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR, SHF_INFO_LINK = 0x1, 0x2, 0x4, 0x40
SHN_UNDEF, SHN_ABS, SHN_COMMON = 0, 0xFFF1, 0xFFF2
STB_LOCAL, STB_GLOBAL, STB_WEAK = 0, 1, 2
STT_NOTYPE, STT_OBJECT, STT_FUNC, STT_SECTION = 0, 1, 2, 3


@dataclass
class Sec:
    name: str
    data: bytes = b""
    type: int = SHT_PROGBITS
    flags: int = SHF_ALLOC
    addr: int = 0
    link: int | str = 0          # a section index or name
    info: int | str = 0
    align: int = 1
    entsize: int = 0
    size: int | None = None      # for SHT_NOBITS (no file contents)
    relocs: list[Reloc] | None = None  # for SHT_REL/SHT_RELA made by relocate()


@dataclass
class Sym:
    name: str
    value: int = 0
    size: int = 0
    bind: int = STB_GLOBAL
    type: int = STT_NOTYPE
    shndx: int | str = SHN_UNDEF  # a section index (or SHN_*) or a section name
    other: int = 0


@dataclass
class Reloc:
    offset: int
    sym: int | str                # a symbol index in the final table, or a symbol name
    type: int
    addend: int = 0               # RELA: stored; REL: written in place as 32 bits
    type2: int = 0                # MIPS64 only: the second and third types of r_info
    type3: int = 0


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a if a > 1 else n


class _StrTab:
    def __init__(self) -> None:
        self.data = bytearray(b"\0")
        self._at: dict[str, int] = {"": 0}

    def add(self, s: str) -> int:
        if s not in self._at:
            self._at[s] = len(self.data)
            self.data += s.encode() + b"\0"
        return self._at[s]


@dataclass
class ElfBuilder:
    """Sections, symbols and relocations to lay out as one ELF file (see :meth:`build`)."""

    is64: bool = True
    little: bool = True
    machine: int = EM_X86_64
    e_type: int = ET_REL
    sections: list[Sec] = field(default_factory=list)
    symbols: list[Sym] = field(default_factory=list)
    # filled in by build()
    shoff: int = 0
    offsets: dict[str, int] = field(default_factory=dict)
    index: dict[str, int] = field(default_factory=dict)

    @property
    def e(self) -> str:
        return "<" if self.little else ">"

    @property
    def word(self) -> str:
        return "Q" if self.is64 else "I"

    def pack(self, fmt: str, *values: int) -> bytes:
        """*values* in the file's byte order (``fmt`` without the order prefix)."""
        return struct.pack(self.e + fmt, *values)

    def add(self, name: str, data: bytes = b"", **kw: object) -> Sec:
        sec = Sec(name, data, **kw)
        self.sections.append(sec)
        return sec

    def sym(self, name: str, value: int = 0, shndx: int | str = SHN_UNDEF, **kw: object) -> Sym:
        s = Sym(name, value, shndx=shndx, **kw)
        self.symbols.append(s)
        return s

    def relocate(self, target: str, relocs: list[Reloc], rela: bool = True,
                 name: str | None = None) -> Sec:
        """A REL or RELA section for *target*, placed here in section order."""
        name = name or (".rela" if rela else ".rel") + target
        return self.add(name, type=SHT_RELA if rela else SHT_REL, flags=SHF_INFO_LINK,
                        link=".symtab", info=target, align=8 if self.is64 else 4,
                        entsize=(24 if rela else 16) if self.is64 else (12 if rela else 8),
                        relocs=relocs)

    def r_info(self, sym: int, type: int, type2: int = 0, type3: int = 0) -> bytes:
        """r_info as the file holds it: 32-bit, 64-bit, or MIPS64's five fields."""
        if self.is64 and self.machine == EM_MIPS:
            return self.pack("IBBBB", sym, 0, type3, type2, type)
        if self.is64:
            return self.pack("Q", sym << 32 | type)
        return self.pack("I", sym << 8 | (type & 0xFF))

    # --- layout -------------------------------------------------------------------------

    def ordered_symbols(self) -> list[Sym]:
        """The null symbol, then locals, then the rest (the ELF rule), each in given order."""
        locs = [s for s in self.symbols if s.bind == STB_LOCAL]
        return [Sym("", bind=STB_LOCAL), *locs,
                *(s for s in self.symbols if s.bind != STB_LOCAL)]

    def _secidx(self, v: int | str) -> int:
        return self.index[v] if isinstance(v, str) else v

    def build(self) -> bytes:
        secs = list(self.sections)
        # a relocation against a section by name gets that section's STT_SECTION symbol
        known = {s.shndx if s.type == STT_SECTION else s.name for s in self.symbols}
        for s in secs:
            for r in s.relocs or ():
                if isinstance(r.sym, str) and r.sym not in known and any(
                        x.name == r.sym for x in secs):
                    self.sym("", shndx=r.sym, bind=STB_LOCAL, type=STT_SECTION)
                    known.add(r.sym)
        syms = self.ordered_symbols()
        if self.symbols or any(s.relocs is not None for s in secs):
            secs += [Sec(".symtab", type=SHT_SYMTAB, flags=0, link=".strtab",
                         align=8 if self.is64 else 4, entsize=24 if self.is64 else 16),
                     Sec(".strtab", type=SHT_STRTAB, flags=0)]
        secs.append(Sec(".shstrtab", type=SHT_STRTAB, flags=0))
        self.index = {}
        for i, s in enumerate(secs, 1):
            self.index.setdefault(s.name, i)
        symidx: dict[str, int] = {}  # section symbols go by their section's name
        for i, s in enumerate(syms):
            key = s.shndx if s.type == STT_SECTION and isinstance(s.shndx, str) else s.name
            symidx.setdefault(key, i)

        strtab, shstrtab = _StrTab(), _StrTab()
        for s in secs:
            if s.name == ".symtab":
                s.info = 1 + sum(x.bind == STB_LOCAL for x in self.symbols)
                s.data = b"".join(self._sym(strtab.add(x.name), x) for x in syms)
            elif s.relocs is not None:
                s.data = self._relocs(s, s.relocs, symidx, secs)
        for s in secs:
            if s.name == ".strtab":
                s.data = bytes(strtab.data)
        names = [shstrtab.add(s.name) for s in secs]
        secs[-1].data = bytes(shstrtab.data)

        ehsize = 64 if self.is64 else 52
        shdr = "IIQQQQIIQQ" if self.is64 else "I" * 10
        out = bytearray(ehsize)
        headers = [self.pack(shdr, *[0] * 10)]
        self.offsets = {}
        for s, n in zip(secs, names, strict=True):
            off = _align(len(out), s.align)
            size = len(s.data)
            if s.type == SHT_NOBITS:
                size = s.size or 0
            else:
                out += bytes(off - len(out)) + s.data
            self.offsets.setdefault(s.name, off)
            headers.append(self.pack(shdr, n, s.type, s.flags, s.addr, off, size,
                                     self._secidx(s.link), self._secidx(s.info),
                                     s.align, s.entsize))
        self.shoff = _align(len(out), 8)
        out += bytes(self.shoff - len(out)) + b"".join(headers)
        ident = b"\x7fELF" + bytes([ELFCLASS64 if self.is64 else ELFCLASS32,
                                    1 if self.little else 2, 1]) + bytes(9)
        w = self.word
        out[:ehsize] = self.pack(f"16sHHI{w}{w}{w}IHHHHHH", ident, self.e_type, self.machine,
                                 1, 0, 0, self.shoff, 0, ehsize, 0, 0, len(headers[0]),
                                 len(headers), len(headers) - 1)
        return bytes(out)

    def _sym(self, name: int, s: Sym) -> bytes:
        info = s.bind << 4 | s.type
        shndx = self._secidx(s.shndx)
        if self.is64:
            return self.pack("IBBHQQ", name, info, s.other, shndx, s.value, s.size)
        return self.pack("IIIBBH", name, s.value, s.size, info, s.other, shndx)

    def _relocs(self, sec: Sec, relocs: list[Reloc], symidx: dict[str, int],
                secs: list[Sec]) -> bytes:
        rela = sec.type == SHT_RELA
        target = secs[self._secidx(sec.info) - 1]
        tdata = bytearray(target.data)
        out = b""
        for r in relocs:
            sym = symidx[r.sym] if isinstance(r.sym, str) else r.sym
            out += self.pack(self.word, r.offset) + self.r_info(sym, r.type, r.type2, r.type3)
            if rela:
                out += self.pack("q" if self.is64 else "i", r.addend)
            else:
                tdata[r.offset:r.offset + 4] = self.pack("i", r.addend)
        if not rela:
            target.data = bytes(tdata)
        return out
