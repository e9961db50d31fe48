"""The ELF writer: appended sections, in-place edits and removals on synthetic objects of
every class and byte order (REL and RELA), linked images and real Debian modules, with
readelf and objdump as the oracles and the reader reading every result back."""

from __future__ import annotations

import pytest

from fastlkm.elf.reader import ElfFile
from fastlkm.elf.writer import ElfWriter, NewSection
from fastlkm.errors import FormatError
from fastlkm.io.codecs import decompress_file
from fastlkm.kernel.ksymtab import read_exports
from fastlkm.kernel.signature import split_signature
from fastlkm.kernel.tree import find_tree
from tests.elf.binutils import assert_only_appended, objdump_clean, readelf_clean
from tests.elf.elfbuild import (
    EM_386,
    EM_MIPS,
    EM_PPC,
    EM_S390,
    EM_X86_64,
    ET_EXEC,
    SHF_ALLOC,
    SHF_EXECINSTR,
    SHT_NOBITS,
    STB_LOCAL,
    STT_FUNC,
    ElfBuilder,
    Reloc,
)

TARGETS = {  # is64, little, machine, relocation type of a 32-bit absolute word, rela
    "x86_64": (True, True, EM_X86_64, 10, True),
    "s390x": (True, False, EM_S390, 4, True),
    "mips64el": (True, True, EM_MIPS, 2, True),
    "i386": (False, True, EM_386, 1, False),
    "ppc": (False, False, EM_PPC, 1, True),
}


def small_object(target: str, e_type: int = 1) -> bytes:
    is64, little, em, r32, rela = TARGETS[target]
    b = ElfBuilder(is64, little, em, e_type=e_type)
    b.add(".text", b"\x90" * 32, flags=SHF_ALLOC | SHF_EXECINSTR, align=16,
          addr=0x1000 if e_type == ET_EXEC else 0)
    b.add(".data", b.pack("4I", 1, 2, 3, 4), align=4, addr=0x2000 if e_type == ET_EXEC else 0)
    b.add(".bss", type=SHT_NOBITS, size=64, align=8)
    b.sym("f", 0, ".text", type=STT_FUNC, size=32)
    b.sym("local", 4, ".data", bind=STB_LOCAL)
    b.sym("undef")
    if e_type != ET_EXEC:
        b.relocate(".data", [Reloc(0, "f", r32, 4), Reloc(8, "undef", r32)], rela=rela)
    return b.build()


NEW = [NewSection("__ksymtab.htable", b"\1\2\3\4" * 5, flags=SHF_ALLOC, addralign=4),
       NewSection(".undef.hash", b"\xaa" * 12, addralign=8)]


@pytest.mark.parametrize("e_type", [1, ET_EXEC], ids=["ET_REL", "ET_EXEC"])
@pytest.mark.parametrize("target", list(TARGETS))
def test_append_sections(target: str, e_type: int) -> None:
    old = small_object(target, e_type)
    w = ElfWriter(ElfFile(old, "t.o"))
    assert [w.add_section(s) for s in NEW] == [len(ElfFile(old).sections),
                                               len(ElfFile(old).sections) + 1]
    new = w.build()
    b = assert_only_appended(old, new, [s.name for s in NEW])
    for s, want in zip(b.sections[-2:], NEW, strict=True):
        assert b.section_data(s) == want.data
        assert (s.flags, s.addralign, s.type) == (want.flags, want.addralign, want.type)
        assert s.offset % want.addralign == 0
    a = ElfFile(old)
    assert b.symbols == a.symbols
    for rs in a.sections:
        if rs.type in (4, 9):
            assert b.relocations(b.sections[rs.index]) == a.relocations(rs)
    out = readelf_clean(new)
    assert "__ksymtab.htable" in out and ".undef.hash" in out
    assert "__ksymtab.htable" in objdump_clean(new)


@pytest.mark.parametrize("target", list(TARGETS))
def test_remove_what_was_appended_gives_the_original(target: str) -> None:
    old = small_object(target)
    w = ElfWriter(ElfFile(old))
    for s in NEW:
        w.add_section(s)
    new = ElfFile(w.build())
    w2 = ElfWriter(new)
    n = len(new.sections)
    w2.remove_sections([n - 2, n - 1])
    assert w2.build() == old


def test_nothing_to_do_is_the_same_bytes() -> None:
    old = small_object("x86_64")
    assert ElfWriter(ElfFile(old)).build() is old


@pytest.mark.parametrize("target", list(TARGETS))
def test_in_place_edits(target: str) -> None:
    old = small_object(target)
    elf = ElfFile(old)
    w = ElfWriter(elf)
    data = elf.section(".data")
    assert data is not None
    w.set_section_data(data, bytes(range(16)))
    f = next(s for s in elf.symbols if s.name == "f")
    w.set_symbol_value(f.index, 24)
    rsec = elf.relocation_sections(data)[0]
    w.set_relocation_offset(rsec, 1, 12)
    new = w.build()
    assert len(new) == len(old)
    b = ElfFile(new)
    assert b.section_data(b.sections[data.index]) == bytes(range(16))
    assert next(s for s in b.symbols if s.name == "f").value == 24
    assert [r.offset for r in b.relocations(b.sections[rsec.index])] == [0, 12]
    readelf_clean(new)
    # nothing else moved
    changed = [i for i, (x, y) in enumerate(zip(old, new, strict=True)) if x != y]
    symtab = elf.symtab
    assert symtab is not None
    spans = [(data.offset, data.offset + data.size), (rsec.offset, rsec.offset + rsec.size),
             (symtab.offset, symtab.offset + symtab.size)]
    assert all(any(lo <= i < hi for lo, hi in spans) for i in changed)


def test_checked_edits() -> None:
    elf = ElfFile(small_object("x86_64"), "t.o")
    w = ElfWriter(elf)
    data = elf.section(".data")
    bss = elf.section(".bss")
    assert data is not None and bss is not None
    with pytest.raises(FormatError, match="16"):
        w.set_section_data(data, b"short")
    with pytest.raises(FormatError, match="NOBITS"):
        w.set_section_data(bss, bytes(64))
    with pytest.raises(FormatError, match="out of range"):
        w.set_symbol_value(len(elf.symbols), 0)
    with pytest.raises(FormatError, match="not a relocation section"):
        w.set_relocation_offset(data, 0, 0)
    with pytest.raises(FormatError, match="out of range"):
        w.set_relocation_offset(elf.relocation_sections(data)[0], 2, 0)
    with pytest.raises(FormatError, match="does not fit"):
        w.set_symbol_value(1, 1 << 64)
    with pytest.raises(FormatError, match="power of 2"):
        w.add_section(NewSection("x", b"", addralign=3))
    w.remove_sections([1])
    with pytest.raises(FormatError, match="only the last sections"):
        w.build()


def test_tail_after_the_section_headers_is_kept() -> None:
    """Bytes after the section-header table (not written by a linker) are kept, and so is
    the old table, unreferenced; the new one follows them."""
    old = small_object("x86_64") + b"TRAILER"
    w = ElfWriter(ElfFile(old))
    w.add_section(NEW[0])
    new = w.build()
    assert new[64:len(old)] == old[64:]
    assert_only_appended(old, new, [NEW[0].name])
    readelf_clean(new)


def test_section_name_table_in_the_middle_is_copied() -> None:
    """When .shstrtab is not the last contents, a grown copy is appended and the old
    bytes stay where they were."""
    old = bytearray(small_object("i386"))
    elf = ElfFile(bytes(old))
    shs = elf.sections[-1]
    assert shs.name == ".shstrtab"
    # put .data's contents after .shstrtab's (a copy at the end of the file), so that
    # .shstrtab no longer ends the contents
    lay = elf.layout
    shoff = lay.ehdr.unpack_from(old, 0)[6]
    filler = b"\x55" * 16
    data = elf.section(".data")
    assert data is not None
    copy_at = len(old)
    old += bytes(elf.data[data.offset:data.offset + data.size]) + filler
    h = list(lay.shdr.unpack_from(old, shoff + data.index * lay.shdr.size))
    h[4] = copy_at
    old[shoff + data.index * lay.shdr.size:shoff + (data.index + 1) * lay.shdr.size] = \
        lay.shdr.pack(*h)
    before = bytes(old)
    w = ElfWriter(ElfFile(before))
    w.add_section(NEW[1])
    new = w.build()
    assert new[52:len(before)] == before[52:]
    b = ElfFile(new)
    assert b.sections[shs.index].offset >= len(before)
    assert b.section(".undef.hash") is not None
    readelf_clean(new)


@pytest.mark.corpus
@pytest.mark.parametrize("kernel", ["6.12-amd64", "6.1-686"])
def test_real_module(corpus, kernel: str) -> None:
    root, release = corpus(kernel)
    tree = find_tree(str(root), release)
    path = next(p for p in sorted(tree.moddir.rglob("mbcache.ko*")))
    old, _ = split_signature(decompress_file(path))
    w = ElfWriter(ElfFile(old))
    for s in NEW:
        w.add_section(s)
    new = w.build()
    assert_only_appended(old, new, [s.name for s in NEW])
    assert read_exports(ElfFile(new)) == read_exports(ElfFile(old))
    readelf_clean(new)
    objdump_clean(new)


def test_extended_section_numbering() -> None:
    """Past 0xff00 sections the count moves to section header 0 (e_shnum 0)."""
    old = small_object("x86_64")
    n = len(ElfFile(old).sections)
    w = ElfWriter(ElfFile(old))
    extra = 0xFF00 - n + 5
    for i in range(extra):
        w.add_section(NewSection(f"s{i}", b"" if i % 2 else b"x"))
    new = w.build()
    b = ElfFile(new, "big.o")
    assert len(b.sections) == n + extra
    assert b.sections[-1].name == f"s{extra - 1}"
    assert ElfFile(new).layout.ehdr.unpack_from(new, 0)[12] == 0
    assert b.symbols == ElfFile(old).symbols
    readelf_clean(new)
