"""The ELF reader: readelf as the oracle on real Debian modules and on synthetic objects of
every class, byte order and relocation kind; then hostile input, by hand and by mutation."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastlkm.depmod.modfiles import walk_modules as scan_modules
from fastlkm.elf.reader import ElfFile, Section
from fastlkm.errors import FormatError
from fastlkm.io.codecs import decompress_file
from fastlkm.kernel.ksymtab import read_exports
from fastlkm.kernel.module import parse_module
from fastlkm.kernel.tree import find_tree
from tests.conftest import require_tools
from tests.elf.elfbuild import (
    EM_386,
    EM_AARCH64,
    EM_MIPS,
    EM_PPC,
    EM_S390,
    EM_X86_64,
    SHF_ALLOC,
    SHF_EXECINSTR,
    SHF_WRITE,
    SHN_ABS,
    SHN_COMMON,
    SHT_NOBITS,
    SHT_REL,
    SHT_RELA,
    STB_GLOBAL,
    STB_LOCAL,
    STB_WEAK,
    STT_FUNC,
    STT_OBJECT,
    STT_SECTION,
    ElfBuilder,
    Reloc,
)

# --- readelf as the oracle ------------------------------------------------------------

SECTION_TYPES = {"NULL": 0, "PROGBITS": 1, "SYMTAB": 2, "STRTAB": 3, "RELA": 4, "HASH": 5,
                 "DYNAMIC": 6, "NOTE": 7, "NOBITS": 8, "REL": 9, "DYNSYM": 11,
                 "INIT_ARRAY": 14, "FINI_ARRAY": 15, "GROUP": 17}
SECTION_FLAGS = {"W": 0x1, "A": 0x2, "X": 0x4, "M": 0x10, "S": 0x20, "I": 0x40, "L": 0x80,
                 "G": 0x200, "T": 0x400}
SYMBOL_TYPES = {"NOTYPE": 0, "OBJECT": 1, "FUNC": 2, "SECTION": 3, "FILE": 4, "COMMON": 5,
                "TLS": 6}
SYMBOL_BINDS = {"LOCAL": 0, "GLOBAL": 1, "WEAK": 2}
SHNDX_NAMES = {"UND": 0, "ABS": SHN_ABS, "COM": SHN_COMMON}

_SECTION = re.compile(r"^\s*\[\s*(\d+)\] (.*)$")
_SYMTAB = re.compile(r"^Symbol table '([^']*)' contains (\d+) entr")
_SYMBOL = re.compile(r"^\s*(\d+): ([0-9a-f]+)\s+(0x[0-9a-f]+|\d+)\s+(\S+)\s+(\S+)\s+(\S+)"
                     r"(?:\s+\[[^\]]*\])?\s+(UND|ABS|COM|\d+|[A-Z]+ ?\[0x[0-9a-f]+\])(?: (.*))?$")
_RELSEC = re.compile(r"^Relocation section '([^']*)' at offset 0x([0-9a-f]+) contains (\d+) entr")
_RELOC = re.compile(r"^([0-9a-f]{8,16})\s+([0-9a-f]{8,16})\s+(\S+)(.*)$")
_ADDEND = re.compile(r"(?:^|\s)([+-]) ([0-9a-f]+)\s*$")


class ReSection(NamedTuple):
    index: int
    name: str
    type: str
    addr: int
    offset: int
    size: int
    entsize: int
    flags: str
    link: int
    info: int
    align: int


class ReSymbol(NamedTuple):
    index: int
    value: int
    size: int
    type: str
    bind: str
    shndx: int
    name: str


class ReReloc(NamedTuple):
    offset: int
    info: int
    addend: str | None  # "+1f", "-4" (RELA only)


@dataclass
class Readelf:
    """What ``readelf -W -S -s -r`` says about a file, parsed."""

    sections: list[ReSection] = field(default_factory=list)
    symcount: int | None = None
    symbols: list[ReSymbol] = field(default_factory=list)
    relcount: dict[int, int] = field(default_factory=dict)      # by section file offset
    relocs: dict[int, list[ReReloc]] = field(default_factory=dict)


def run_readelf(path: Path) -> Readelf:
    out = subprocess.run(["readelf", "-W", "-S", "-s", "-r", str(path)], capture_output=True,
                         text=True, errors="replace", check=True).stdout
    r = Readelf()
    mode, rel_at = "", -1
    for line in out.splitlines():
        if line.startswith("Section Headers:"):
            mode = "S"
        elif line.startswith("Key to Flags"):
            mode = ""
        elif m := _SYMTAB.match(line):
            mode = "s" if m.group(1) == ".symtab" else ""
            if mode:
                r.symcount = int(m.group(2))
        elif m := _RELSEC.match(line):
            mode, rel_at = "r", int(m.group(2), 16)
            r.relcount[rel_at] = int(m.group(3))
            r.relocs[rel_at] = []
        elif mode == "S" and (m := _SECTION.match(line)):
            rest = m.group(2)
            tok = rest.split()
            name = "" if rest.startswith(" ") else tok.pop(0)
            assert len(tok) in (8, 9), line  # the flags may be empty
            flags = tok[5] if len(tok) == 9 else ""
            r.sections.append(ReSection(int(m.group(1)), name, tok[0],
                                        *(int(t, 16) for t in tok[1:5]), flags,
                                        *(int(t) for t in tok[-3:])))
        elif mode == "s" and (m := _SYMBOL.match(line)):
            idx, value, size, typ, bind, _vis, ndx, name = m.groups()
            if ndx in SHNDX_NAMES:
                shndx = SHNDX_NAMES[ndx]
            elif ndx.isdigit():
                shndx = int(ndx)
            else:  # e.g. "PRC[0xff00]"
                shndx = int(ndx.split("[0x")[1].rstrip("]"), 16)
            r.symbols.append(ReSymbol(int(idx), int(value, 16), int(size, 0), typ, bind,
                                      shndx, name or ""))
        elif mode == "r" and (m := _RELOC.match(line)):
            # "sym + 1f" / "sym - 4"; with no symbol the addend alone
            a = _ADDEND.search(m.group(4))
            tail = m.group(4).split()
            addend = a.group(1) + a.group(2) if a else (
                tail[-1] if tail and re.fullmatch(r"[0-9a-f]+", tail[-1]) else None)
            r.relocs[rel_at].append(ReReloc(int(m.group(1), 16), int(m.group(2), 16), addend))
    return r


def split_info(elf: ElfFile, info: int) -> tuple[int, int]:
    """(symbol, type) of r_info as readelf prints it (MIPS64's reassembled, type low byte)."""
    if elf.is64:
        return info >> 32, info & (0xFF if elf.machine == EM_MIPS else 0xFFFFFFFF)
    return info >> 8, info & 0xFF


def compare_with_readelf(elf: ElfFile, path: Path) -> list[str]:
    """Every disagreement between the reader and readelf on *path*, one line each."""
    require_tools("readelf")
    re_ = run_readelf(path)
    bad: list[str] = []
    if len(re_.sections) != len(elf.sections):
        return [f"{len(elf.sections)} sections, readelf {len(re_.sections)}"]
    for s, (idx, name, typ, addr, off, size, es, flags, lk, inf, al) in zip(
            elf.sections, re_.sections, strict=True):
        mine = (s.index, s.name, s.addr, s.offset, s.size, s.entsize, s.link, s.info,
                s.addralign)
        theirs = (idx, name, addr, off, size, es, lk, inf, al)
        if mine != theirs:
            bad.append(f"section {s.index}: {mine} != readelf {theirs}")
        if SECTION_TYPES.get(typ, s.type) != s.type:
            bad.append(f"section {s.index} type {s.type} != readelf {typ}")
        letters = {c for c, bit in SECTION_FLAGS.items() if s.flags & bit}
        if letters != set(flags) & set(SECTION_FLAGS):
            bad.append(f"section {s.index} flags {s.flags:#x} != readelf {flags!r}")
    syms = elf.symbols
    if (re_.symcount or 0) != len(syms) or len(re_.symbols) != len(syms):
        bad.append(f"{len(syms)} symbols, readelf {re_.symcount} / {len(re_.symbols)} lines")
    for s, (idx, value, size, typ, bind, shndx, name) in zip(syms, re_.symbols, strict=False):
        mine = (s.index, s.value, s.size, s.shndx, s.bind, s.type)
        theirs = (idx, value, size, shndx, SYMBOL_BINDS.get(bind, s.bind),
                  SYMBOL_TYPES.get(typ, s.type))
        if mine != theirs or (typ != "SECTION" and s.name != name):
            bad.append(f"symbol {s.index} {s.name!r} {mine} != readelf {name!r} {theirs}")
    rsecs = [s for s in elf.sections if s.type in (SHT_REL, SHT_RELA)]
    for rs in rsecs:
        relocs = elf.relocations(rs)
        want = re_.relocs.get(rs.offset, [])
        if len(relocs) != re_.relcount.get(rs.offset, 0) or len(relocs) != len(want):
            bad.append(f"{rs.name}: {len(relocs)} relocations, readelf "
                       f"{re_.relcount.get(rs.offset)} / {len(want)} lines")
            continue
        for r, w in zip(relocs, want, strict=True):
            theirs = (w.offset, *split_info(elf, w.info))
            if (r.offset, r.sym, r.type) != theirs:
                bad.append(f"{rs.name}: {r[:3]} != readelf {theirs}")
            elif r.addend is not None and (w.addend is None or r.addend != int(w.addend, 16)):
                bad.append(f"{rs.name} at {r.offset:#x}: addend {r.addend} != readelf "
                           f"{w.addend}")
    # relocations_for: offset -> symbol of every target, the last relocation winning
    for target in {s.info for s in rsecs}:
        sec = elf.section_by_index(target)
        got = {off: sym.index for off, (sym, _) in elf.relocations_for(sec).items()}
        theirs = {w.offset: split_info(elf, w.info)[0] for rs in rsecs if rs.info == target
                  for w in re_.relocs.get(rs.offset, [])}
        if got != theirs:
            bad.append(f"relocations_for({sec.name}): {len(got)} offsets, readelf "
                       f"{len(theirs)}")
    return bad


# --- real modules ---------------------------------------------------------------------

TREES = ("6.1-cloud-amd64", "6.1-686", "6.12-amd64", "sid-cloud-amd64")
SAMPLE = 30


def sample_modules(root: Path, count: int = SAMPLE) -> list[Path]:
    """*count* modules spread evenly over the tree's sorted paths."""
    moddir = find_tree(str(root)).moddir
    rels = sorted(scan_modules(moddir))
    step = len(rels) / count
    return [moddir / rels[int(i * step)] for i in range(min(count, len(rels)))]


@pytest.mark.corpus
@pytest.mark.parametrize("name", TREES)
def test_real_modules_agree_with_readelf(
        name: str, corpus: Callable[[str], tuple[Path, str]], tmp_path: Path) -> None:
    root, _ = corpus(name)
    bad: list[str] = []
    nrel = nsym = 0
    for path in sample_modules(root):
        if path.name.endswith(".ko"):
            plain = path
        else:
            plain = tmp_path / path.name.split(".ko")[0]
            plain.write_bytes(decompress_file(str(path)))
        elf = ElfFile(plain.read_bytes(), str(path))
        nsym += len(elf.symbols)
        nrel += sum(len(elf.relocations(s)) for s in elf.sections
                    if s.type in (SHT_REL, SHT_RELA))
        bad += [f"{path.name}: {b}" for b in compare_with_readelf(elf, plain)]
    assert not bad, "\n".join(bad[:20])
    assert nsym > 1000 and nrel > 1000  # the sample is not trivially empty


# --- synthetic objects ----------------------------------------------------------------

# (64-bit, little endian, e_machine, relocation types to use)
FLAVORS = {
    "elf32le-386": (False, True, EM_386, (1, 2, 250)),
    "elf32be-ppc": (False, False, EM_PPC, (1, 26, 249)),
    "elf64le-x86_64": (True, True, EM_X86_64, (1, 2, 4, 11)),
    "elf64le-aarch64": (True, True, EM_AARCH64, (257, 261, 282)),
    "elf64be-s390": (True, False, EM_S390, (22, 5)),
    "elf64le-mips": (True, True, EM_MIPS, (2, 18, 3)),
    "elf64be-mips": (True, False, EM_MIPS, (2, 18, 3)),
}
NSYMS = 300  # symbol indices beyond 255 exercise the r_info packing of ELF32


def synthetic(flavor: str, rela: bool) -> tuple[ElfBuilder, bytes]:
    is64, little, machine, types = FLAVORS[flavor]
    b = ElfBuilder(is64, little, machine)
    b.add(".text", bytes(range(256)) * 2, flags=SHF_ALLOC | SHF_EXECINSTR, align=16)
    b.add(".data", bytes(4 * NSYMS), flags=SHF_ALLOC | SHF_WRITE, align=8)
    b.add(".bss", type=SHT_NOBITS, size=1 << 20, flags=SHF_ALLOC | SHF_WRITE, align=64)
    b.add(".rodata.a.rather.long.section.name.to.pass.the.column", b"x" * 3)
    b.add(".comment", b"GCC: (Debian) 12.2.0\0", flags=0x30, entsize=1)
    b.sym("", shndx=".text", bind=STB_LOCAL, type=STT_SECTION)
    b.sym("", shndx=".data", bind=STB_LOCAL, type=STT_SECTION)
    for i in range(NSYMS):
        b.sym(f"sym{i}", 4 * i, ".data" if i % 3 else ".text", size=i, type=STT_OBJECT,
              bind=(STB_LOCAL, STB_GLOBAL, STB_WEAK)[i % 3])
    b.sym("undefined_function", type=STT_FUNC)
    b.sym("absolute", 0xFFFFFFFF81000000 if is64 else 0xDEADBEEF, SHN_ABS)
    b.sym("common", 16, SHN_COMMON, size=64, type=STT_OBJECT)
    b.sym("in_bss", 0x100, ".bss", size=8, type=STT_OBJECT)
    relocs = [Reloc(4 * i, f"sym{(7 * i) % NSYMS}", types[i % len(types)],
                    addend=(i * 37) % 1000 - 500, type2=i % 5, type3=i % 2)
              for i in range(0, NSYMS, 2)]
    relocs += [Reloc(4, "undefined_function", types[0], -4), Reloc(12, ".data", types[-1], 8)]
    b.relocate(".data", relocs, rela=rela)
    b.relocate(".text", [Reloc(16, "absolute", types[0], 0), Reloc(20, "in_bss", types[0], 1),
                         Reloc(500, ".text", types[-1], -4)], rela=rela)
    return b, b.build()


@pytest.mark.parametrize("rela", [False, True], ids=["rel", "rela"])
@pytest.mark.parametrize("flavor", list(FLAVORS))
def test_synthetic_against_intent_and_readelf(flavor: str, rela: bool, tmp_path: Path) -> None:
    b, data = synthetic(flavor, rela)
    elf = ElfFile(data, "synthetic.o")
    assert (elf.is64, elf.little, elf.machine, elf.e_type) == (b.is64, b.little, b.machine, 1)
    # sections: what was asked, at the offsets the builder chose
    names = [s.name for s in elf.sections]
    assert names == ["", *(s.name for s in b.sections), ".symtab", ".strtab", ".shstrtab"]
    for s in b.sections:
        got = elf.section(s.name)
        assert got is not None and got.index == b.index[s.name]
        assert (got.type, got.flags, got.addralign, got.entsize) == (s.type, s.flags, s.align,
                                                                    s.entsize)
        assert got.offset == b.offsets[s.name]
        if s.type == SHT_NOBITS:
            assert got.size == s.size and elf.section_data(got) == b""
        else:
            assert elf.section_data(got) == s.data
    # symbols: the null symbol, then locals, then the rest, all fields as given
    want = b.ordered_symbols()
    assert len(elf.symbols) == len(want) == NSYMS + 7
    for got, w in zip(elf.symbols, want, strict=True):
        shndx = b.index[w.shndx] if isinstance(w.shndx, str) else w.shndx
        assert (got.name, got.value, got.size, got.bind, got.type, got.shndx) == (
            w.name, w.value, w.size, w.bind, w.type, shndx)
    by_name = {s.name: s for s in elf.symbols}
    assert by_name["absolute"].shndx == SHN_ABS and by_name["common"].shndx == SHN_COMMON
    assert elf.symbol_section(by_name["in_bss"]) == elf.section(".bss")
    assert elf.symbol_section(by_name["absolute"]) is None
    # relocations: symbol, type (the primary one on MIPS64), addend in place for REL
    for target in (".data", ".text"):
        tsec = elf.section(target)
        assert tsec is not None
        rsecs = elf.relocation_sections(tsec)
        assert [s.name for s in rsecs] == [(".rela" if rela else ".rel") + target]
        spec = next(s for s in b.sections if s.info == target).relocs
        assert spec is not None
        got = elf.relocations(rsecs[0])
        assert [(r.offset, elf.symbols[r.sym].name or elf.sections[elf.symbols[r.sym].shndx]
                  .name, r.type, r.addend) for r in got] == [
            (r.offset, r.sym, r.type, r.addend if rela else None) for r in spec]
        assert {off: (s.name or elf.sections[s.shndx].name, a)
                for off, (s, a) in elf.relocations_for(tsec).items()} == {
            r.offset: (r.sym, r.addend) for r in spec}
    path = tmp_path / "synthetic.o"
    path.write_bytes(data)
    assert compare_with_readelf(elf, path) == []


def header_fields(is64: bool) -> dict[str, tuple[int, str]]:
    """Offsets and formats of the ELF header and section header fields the tests corrupt."""
    if is64:
        return {"e_shoff": (0x28, "Q"), "e_shentsize": (0x3A, "H"), "e_shnum": (0x3C, "H"),
                "e_shstrndx": (0x3E, "H"), "sh_name": (0, "I"), "sh_type": (4, "I"),
                "sh_offset": (0x18, "Q"), "sh_size": (0x20, "Q"), "sh_link": (0x28, "I"),
                "sh_info": (0x2C, "I")}
    return {"e_shoff": (0x20, "I"), "e_shentsize": (0x2E, "H"), "e_shnum": (0x30, "H"),
            "e_shstrndx": (0x32, "H"), "sh_name": (0, "I"), "sh_type": (4, "I"),
            "sh_offset": (0x10, "I"), "sh_size": (0x14, "I"), "sh_link": (0x18, "I"),
            "sh_info": (0x1C, "I")}


def patch(b: ElfBuilder, data: bytes, field_: str, value: int, section: str | None = None,
          at: int | None = None) -> bytes:
    """*data* with one header field (of *section*'s header if named) set to *value*."""
    off, fmt = header_fields(b.is64)[field_]
    if section is not None:
        off += b.shoff + b.index[section] * (64 if b.is64 else 40)
    if at is not None:
        off = at
    raw = b.pack(fmt, value)
    return data[:off] + raw + data[off + len(raw):]


def test_extended_section_numbering(tmp_path: Path) -> None:
    """e_shnum 0 and e_shstrndx SHN_XINDEX: the real values live in section header 0."""
    b, data = synthetic("elf64be-s390", True)
    n = len(b.sections) + 4
    data = patch(b, data, "e_shnum", 0)
    data = patch(b, data, "e_shstrndx", 0xFFFF)
    data = patch(b, data, "sh_size", n, section=None, at=b.shoff + 0x20)
    data = patch(b, data, "sh_link", n - 1, section=None, at=b.shoff + 0x28)
    elf = ElfFile(data, "x.o")
    assert len(elf.sections) == n and elf.sections[-1].name == ".shstrtab"
    path = tmp_path / "x.o"
    path.write_bytes(data)
    assert compare_with_readelf(elf, path) == []


def test_no_section_headers() -> None:
    b, data = synthetic("elf64le-x86_64", True)
    elf = ElfFile(patch(b, data, "e_shoff", 0), "x.o")
    assert elf.sections == [] and elf.symbols == [] and elf.section(".text") is None


# --- hostile input --------------------------------------------------------------------

BROKEN_PATH = "broken.ko"


def broken(data: bytes, *, symbols: bool = False, target: str | None = None) -> FormatError:
    """The FormatError reading *data* (and its symbols or *target*'s relocations) raises."""
    with pytest.raises(FormatError) as info:
        elf = ElfFile(data, BROKEN_PATH)
        if symbols:
            elf.symbols  # noqa: B018
        if target is not None:
            sec = elf.section(target)
            assert sec is not None
            elf.relocations_for(sec)
    assert info.value.path == BROKEN_PATH
    assert BROKEN_PATH in str(info.value)
    return info.value


@pytest.mark.parametrize("flavor", ["elf32le-386", "elf32be-ppc", "elf64le-x86_64",
                                    "elf64be-s390"])
def test_hostile_headers(flavor: str) -> None:
    b, data = synthetic(flavor, flavor == "elf32le-386")
    ehsize = 64 if b.is64 else 52
    for n in (0, 3, 4, 15, 16, 20, ehsize - 1):
        broken(data[:n])
    broken(b"\x7fELF\x03\x01" + data[6:])                       # unknown class
    broken(data[:5] + b"\x00" + data[6:])                       # unknown byte order
    broken(data[:b.shoff + 10])                                 # section table cut short
    broken(data[:-1])
    broken(patch(b, data, "e_shoff", len(data) - 8))            # table beyond end of file
    broken(patch(b, data, "e_shoff", (1 << (63 if b.is64 else 31)) + 5))
    broken(patch(b, data, "e_shentsize", 12))
    broken(patch(b, data, "e_shnum", 0xFFFF))                   # huge shnum
    broken(patch(b, data, "e_shstrndx", 0xFFFF))                # shnum from header 0: 0
    big = patch(b, data, "e_shnum", 0)
    broken(patch(b, big, "sh_size", (1 << (63 if b.is64 else 31)), at=b.shoff
                 + header_fields(b.is64)["sh_size"][0]))       # extended shnum, huge
    # a section beyond the end of the file, by offset or by size
    broken(patch(b, data, "sh_offset", len(data) + 1, ".data"))
    broken(patch(b, data, "sh_size", len(data), ".data"))
    broken(patch(b, data, "sh_size", (1 << (64 if b.is64 else 32)) - 1, ".data"))
    # names: shstrndx out of range, or a name offset past the string table
    broken(patch(b, data, "e_shstrndx", len(b.sections) + 50))
    broken(patch(b, data, "sh_name", 1 << 20, ".text"))
    # a NOBITS section may lie anywhere
    assert ElfFile(patch(b, data, "sh_offset", 1 << 30, ".bss"), "ok").section(".bss")


@pytest.mark.parametrize("flavor", ["elf32le-386", "elf32be-ppc", "elf64le-x86_64",
                                    "elf64be-s390", "elf64le-mips"])
@pytest.mark.parametrize("rela", [False, True], ids=["rel", "rela"])
def test_hostile_tables(flavor: str, rela: bool) -> None:
    b, data = synthetic(flavor, rela)
    symsize, relsize = (24, 24 if rela else 16) if b.is64 else (16, 12 if rela else 8)
    sym0 = b.offsets[".symtab"]
    rel0 = b.offsets[(".rela" if rela else ".rel") + ".data"]
    rinfo = rel0 + (8 if b.is64 else 4)
    nsyms = NSYMS + 7
    # the symbol table
    size = nsyms * symsize
    broken(patch(b, data, "sh_size", size - 1, ".symtab"), symbols=True)
    broken(patch(b, data, "sh_link", 999, ".symtab"), symbols=True)
    broken(patch(b, data, "sh_link", 0xFFFFFFFF, ".symtab"), symbols=True)
    broken(patch(b, data, "sh_name", 1 << 24, at=sym0 + symsize), symbols=True)
    # a string table of NOBITS has no strings for the names to point into
    broken(patch(b, data, "sh_type", SHT_NOBITS, ".strtab"), symbols=True)
    # relocations: symbol index out of range, section size not a multiple of the entry
    name = (".rela" if rela else ".rel") + ".data"
    bad_sym = b.r_info(nsyms, 1)
    broken(data[:rinfo] + bad_sym + data[rinfo + len(bad_sym):], target=".data")
    bad_sym = b.r_info((1 << (32 if b.is64 else 24)) - 1, 1)
    broken(data[:rinfo] + bad_sym + data[rinfo + len(bad_sym):], target=".data")
    broken(patch(b, data, "sh_size", relsize * 3 + 1, name), target=".data")
    if not rela:
        # an in-place addend beyond the end of the target section
        off = b.pack("Q" if b.is64 else "I", 4 * NSYMS - 2)
        broken(data[:rel0] + off + data[rel0 + len(off):], target=".data")
        e = broken(patch(b, data, "sh_type", SHT_NOBITS, ".data"), target=".data")
        assert "beyond" in e.message


# --- mutations --------------------------------------------------------------------------


def small_module(is64: bool = True, little: bool = True, machine: int = EM_X86_64,
                 rela: bool = True) -> tuple[ElfBuilder, bytes]:
    """A tiny module: PREL32 exports with CRCs, __versions, .modinfo."""
    b = ElfBuilder(is64, little, machine)
    b.add(".text", b"\xc3" * 32, flags=SHF_ALLOC | SHF_EXECINSTR, align=16)
    b.add("__ksymtab", bytes(24), align=4)
    b.add("__ksymtab_gpl", bytes(12), align=4)
    b.add("__kcrctab", b.pack("II", 0x1234, 0x5678), align=4)
    b.add("__kcrctab_gpl", b.pack("I", 0x9ABC), align=4)
    b.add("__ksymtab_strings", b"foo\0bar\0baz\0NS\0", flags=0x32, entsize=1)
    word = 8 if is64 else 4
    b.add("__versions", (b.pack("Q" if is64 else "I", 0xCAFE)
                         + b"module_layout".ljust(64 - word, b"\0")) * 2, align=32)
    b.add(".modinfo", b"license=GPL\0depends=\0name=small\0")
    b.add(".gnu.linkonce.this_module", bytes(64), flags=3, align=64)
    for i, n in enumerate(("foo", "bar", "baz")):
        b.sym(n, 8 * i, ".text", type=STT_FUNC)
        b.sym(f"__kstrtab_{n}", 4 * i, "__ksymtab_strings", bind=STB_LOCAL)
        b.sym(f"__ksymtab_{n}", 12 * (i % 2), "__ksymtab_gpl" if i == 2 else "__ksymtab",
              bind=STB_LOCAL)
    b.sym("__kstrtabns", 12, "__ksymtab_strings", bind=STB_LOCAL)
    b.sym("printk", type=STT_FUNC)
    for sec, names in (("__ksymtab", ("foo", "bar")), ("__ksymtab_gpl", ("baz",))):
        relocs = []
        for i, n in enumerate(names):
            relocs += [Reloc(12 * i, n, 2), Reloc(12 * i + 4, f"__kstrtab_{n}", 2),
                       Reloc(12 * i + 8, "__kstrtabns", 2)]
        b.relocate(sec, relocs, rela=rela)
    b.relocate(".text", [Reloc(1, "printk", 4, -4), Reloc(9, ".text", 2, 3)], rela=rela)
    return b, b.build()


def exercise(data: bytes) -> None:
    """Everything a module reader does; only FormatError may escape."""
    elf = ElfFile(data, "fuzz.ko")
    elf.symbols  # noqa: B018
    for sec in elf.sections:
        if sec.type in (SHT_REL, SHT_RELA):
            elf.relocations_for(elf.section_by_index(sec.info))
    read_exports(elf)
    parse_module(data, "fuzz.ko")


SMALL = {
    "x86_64": small_module(),
    "i386-rel": small_module(False, True, EM_386, rela=False),
    "s390": small_module(True, False, EM_S390),
    "ppc": small_module(False, False, EM_PPC),
    "mips64el": small_module(True, True, EM_MIPS),
}


@pytest.mark.parametrize("name", list(SMALL))
def test_small_module_is_valid(name: str) -> None:
    m = parse_module(SMALL[name][1], "small.ko")
    assert [(e.name, e.namespace, e.crc, e.gpl_only) for e in m.exports] == [
        ("foo", "NS", 0x1234, False), ("bar", "NS", 0x5678, False), ("baz", "NS", 0x9ABC, True)]
    assert m.versions == (("module_layout", 0xCAFE),) * 2 and m.license == "GPL"
    assert [i.name for i in m.imports] == ["printk"]
    exercise(SMALL[name][1])


def _hot_offsets(b: ElfBuilder, n: int) -> list[int]:
    """The ELF header's offsets and counts, the section headers, the symbols, the
    relocations and the export tables: where a mutation reaches the checks."""
    hot = list(range(0x18, 0x40))
    hot += range(b.shoff, n)
    for name, size in b.offsets.items():
        if name.startswith((".symtab", ".rel", "__k", "__versions")):
            hot += range(size, size + 96)
    return [h for h in hot if h < n]


INTERESTING = (0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 63, (1 << 64) - 1)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A small module with a few bit flips or overwritten words, maybe cut short."""
    b, data = SMALL[draw(st.sampled_from(list(SMALL)))]
    out = bytearray(data)
    hot = _hot_offsets(b, len(data))
    where = st.one_of(st.sampled_from(hot), st.integers(6, len(data) - 1))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(where)
        if draw(st.booleans()):
            out[at] ^= 1 << draw(st.integers(0, 7))
        else:
            width = draw(st.sampled_from((1, 2, 4, 8)))
            value = draw(st.sampled_from(INTERESTING)) & ((1 << 8 * width) - 1)
            out[at:at + width] = value.to_bytes(width, "little" if b.little else "big")
    if draw(st.integers(0, 9)) == 0:
        del out[draw(st.integers(0, len(out))):]
    return bytes(out)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutations_raise_only_format_error(data: bytes) -> None:
    try:
        exercise(data)
    except FormatError as e:
        assert e.path == "fuzz.ko"


def test_section_is_frozen() -> None:
    elf = ElfFile(SMALL["x86_64"][1], "small.ko")
    sec = elf.section("__ksymtab")
    assert isinstance(sec, Section)
    with pytest.raises(AttributeError):
        sec.size = 0  # type: ignore[misc]
