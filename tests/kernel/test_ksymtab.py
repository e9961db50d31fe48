"""The export-table decoder: synthetic modules and vmlinux images of every generation, then
the real Debian trees against their labels and the headers' Module.symvers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from fastlkm.depmod.modfiles import walk_modules as scan_modules
from fastlkm.elf.reader import ElfFile
from fastlkm.errors import FormatError
from fastlkm.io.codecs import decompress_file
from fastlkm.kernel.facts import License, Module
from fastlkm.kernel.ksymtab import kmod_symbols, read_exports
from fastlkm.kernel.symvers import SymversEntry, parse_symvers
from fastlkm.kernel.tree import find_tree, read_modules
from tests.elf.elfbuild import (
    EM_386,
    EM_AARCH64,
    EM_PPC,
    EM_S390,
    EM_X86_64,
    ET_EXEC,
    SHF_ALLOC,
    SHF_EXECINSTR,
    SHN_ABS,
    STB_LOCAL,
    STT_FUNC,
    ElfBuilder,
    Reloc,
)


@dataclass(frozen=True)
class Exp:
    """An export as the test writes it."""

    name: str
    gpl: bool = False
    ns: str = ""
    crc: int | None = None
    flags: int = 0          # the __kflagstab byte, when the module has one


# e_machine, 64-bit, little endian, and the relocation types of an absolute pointer, a
# 32-bit PC-relative word and a 32-bit absolute word
MACHINES = {
    "x86_64": (EM_X86_64, True, True, 1, 2, 10),      # R_X86_64_64, _PC32, _32
    "s390": (EM_S390, True, False, 22, 5, 4),         # R_390_64, _PC32, _32
    "aarch64": (EM_AARCH64, True, True, 257, 261, 258),  # R_AARCH64_ABS64, _PREL32, _ABS32
    "i386": (EM_386, False, True, 1, 2, 1),            # R_386_32, R_386_PC32
    "ppc": (EM_PPC, False, False, 1, 26, 1),           # R_PPC_ADDR32, R_PPC_REL32
}

EXPORTS = (
    Exp("usb_register_driver", ns="", crc=0x11111111),
    Exp("usb_deregister", gpl=True, ns="USB_STORAGE", crc=0x22222222),
    Exp("cxl_probe", ns="CXL", crc=0x33333333),
    Exp("__a_very_long_exported_symbol_name_for_testing", gpl=True, ns="", crc=0xFFFFFFFF),
    Exp("x", gpl=True, ns="NS", crc=0),
)


def tables_of(exports: Sequence[Exp], flagstab: bool) -> dict[str, list[Exp]]:
    if flagstab:  # Linux 7.x: one table, GPL-only-ness in __kflagstab
        return {"": list(exports)}
    out: dict[str, list[Exp]] = {"": [e for e in exports if not e.gpl],
                                 "_gpl": [e for e in exports if e.gpl]}
    return {k: v for k, v in out.items() if v}


def build_module(exports: Sequence[Exp], machine: str = "x86_64", *, prel: bool = True,
                 nfields: int = 3, rela: bool = True, labels: bool = True,
                 via_section: bool = False, flagstab: bool = False,
                 crc_relocs: bool = False) -> bytes:
    """A module (ET_REL) whose export tables are laid out as one kernel generation does.

    Every field is zero and relocated: the value against the function, the name and the
    namespace against ``__kstrtab_<name>``/``__kstrtabns_<name>`` labels in
    ``__ksymtab_strings`` (or its section symbol plus an addend, *via_section*).  An
    absolute entry without a namespace has a NULL pointer: no relocation at all.
    """
    em, is64, little, abs_type, pc_type, abs32_type = MACHINES[machine]
    b = ElfBuilder(is64, little, em)
    fsize = 4 if prel else (8 if is64 else 4)
    es = fsize * nfields
    rtype = pc_type if prel else abs_type
    b.add(".text", b"\xc3" * (16 * len(exports)), flags=SHF_ALLOC | SHF_EXECINSTR, align=16)
    strings = b""
    where: dict[str, tuple[int, int]] = {}   # name -> (name offset, namespace offset)
    for e in exports:
        where[e.name] = (len(strings), len(strings) + len(e.name) + 1)
        strings += e.name.encode() + b"\0" + e.ns.encode() + b"\0"
    tables = tables_of(exports, flagstab)
    for i, e in enumerate(exports):
        b.sym(e.name, 16 * i, ".text", type=STT_FUNC, size=16)
        if not via_section:
            b.sym(f"__kstrtab_{e.name}", where[e.name][0], "__ksymtab_strings", bind=STB_LOCAL)
            b.sym(f"__kstrtabns_{e.name}", where[e.name][1], "__ksymtab_strings",
                  bind=STB_LOCAL)
    for suffix, table in tables.items():
        sec = "__ksymtab" + suffix
        b.add(sec, bytes(es * len(table)), align=fsize)
        relocs = []
        for i, e in enumerate(table):
            if labels:
                b.sym(f"__ksymtab_{e.name}", i * es, sec, bind=STB_LOCAL)
            fields = [(e.name, 0), ("__ksymtab_strings", where[e.name][0])
                      if via_section else (f"__kstrtab_{e.name}", 0)]
            if nfields == 3 and (prel or e.ns):
                fields.append(("__ksymtab_strings", where[e.name][1])
                              if via_section else (f"__kstrtabns_{e.name}", 0))
            relocs += [Reloc(i * es + k * fsize, sym, rtype, addend)
                       for k, (sym, addend) in enumerate(fields)]
        b.relocate(sec, relocs, rela=rela)
        if any(e.crc is not None for e in table):
            crc = [e.crc or 0 for e in table]
            if crc_relocs:  # older kernels: zeros, relocated against absolute __crc_<name>
                b.add("__kcrctab" + suffix, bytes(4 * len(table)), align=4)
                for e in table:
                    b.sym(f"__crc_{e.name}", e.crc or 0, SHN_ABS)
                b.relocate("__kcrctab" + suffix, [Reloc(4 * i, f"__crc_{e.name}", abs32_type)
                                                  for i, e in enumerate(table)], rela=rela)
            else:
                b.add("__kcrctab" + suffix, b.pack(f"{len(crc)}I", *crc), align=4)
                for i, e in enumerate(table):
                    b.sym(f"__crc_{e.name}", 4 * i, "__kcrctab" + suffix, bind=STB_LOCAL)
    if flagstab:
        b.add("__kflagstab", bytes(e.flags for e in exports))
    b.add("__ksymtab_strings", strings, flags=SHF_ALLOC | 0x30, entsize=1)
    return b.build()


def decoded(data: bytes) -> list[tuple[str, bool, str, int | None]]:
    return [(e.name, e.gpl_only, e.namespace, e.crc)
            for e in read_exports(ElfFile(data, "test.ko"))]


def expected_order(exports: Sequence[Exp], flagstab: bool = False) -> list[Exp]:
    """The exports in the order of the decoder: table by table, entry by entry."""
    return [e for t in tables_of(exports, flagstab).values() for e in t]


def expected(exports: Sequence[Exp], nfields: int = 3, crcs: bool = True,
             flagstab: bool = False) -> list[tuple[str, bool, str, int | None]]:
    return [(e.name, e.gpl, e.ns if nfields == 3 else "", e.crc if crcs else None)
            for e in expected_order(exports, flagstab)]


def without_crcs(exports: Sequence[Exp]) -> list[Exp]:
    return [Exp(e.name, e.gpl, e.ns) for e in exports]


# --- modules, generation by generation --------------------------------------------------


@pytest.mark.parametrize("nfields", [2, 3], ids=["16-byte", "24-byte"])
@pytest.mark.parametrize("machine", ["x86_64", "s390", "aarch64"])
def test_absolute_64bit_entries(machine: str, nfields: int) -> None:
    """{value, name} (before Linux 4.19 / without PREL32) and {value, name, namespace}."""
    data = build_module(EXPORTS, machine, prel=False, nfields=nfields)
    assert decoded(data) == expected(EXPORTS, nfields)
    exports = read_exports(ElfFile(data, "test.ko"))
    assert {e.table for e in exports} == {"__ksymtab", "__ksymtab_gpl"}
    assert all(e.license == (License.GPL_ONLY if e.table.endswith("_gpl")
                             else License.NOT_GPL_ONLY) for e in exports)


@pytest.mark.parametrize("nfields", [2, 3], ids=["8-byte", "12-byte"])
@pytest.mark.parametrize("machine", ["x86_64", "s390", "aarch64", "ppc"])
def test_prel32_entries(machine: str, nfields: int) -> None:
    """{int value_offset, int name_offset[, int namespace_offset]} (Linux 4.19+)."""
    data = build_module(EXPORTS, machine, prel=True, nfields=nfields)
    assert decoded(data) == expected(EXPORTS, nfields)


@pytest.mark.parametrize("via_section", [False, True], ids=["labels", "section-symbol"])
@pytest.mark.parametrize("prel", [False, True], ids=["absolute", "prel32"])
def test_rel_32bit_entries(prel: bool, via_section: bool) -> None:
    """i386: REL relocations, the addend in place (nonzero through the section symbol)."""
    data = build_module(EXPORTS, "i386", prel=prel, nfields=3, rela=False,
                        via_section=via_section)
    elf = ElfFile(data, "test.ko")
    assert all(s.type == 9 for s in elf.sections if s.name.startswith(".rel"))  # SHT_REL
    assert decoded(data) == expected(EXPORTS)


@pytest.mark.parametrize("machine", ["x86_64", "s390"])
def test_section_symbol_and_addend(machine: str) -> None:
    """Names reached through ``__ksymtab_strings`` + addend rather than per-name labels."""
    data = build_module(EXPORTS, machine, via_section=True)
    assert decoded(data) == expected(EXPORTS)


@pytest.mark.parametrize("crc_relocs", [False, True], ids=["in-place", "relocated"])
@pytest.mark.parametrize("machine", ["x86_64", "s390", "i386", "ppc"])
def test_gpl_tables_and_crcs(machine: str, crc_relocs: bool) -> None:
    """__ksymtab + __ksymtab_gpl with parallel __kcrctab + __kcrctab_gpl."""
    data = build_module(EXPORTS, machine, rela=machine != "i386", crc_relocs=crc_relocs)
    got = read_exports(ElfFile(data, "test.ko"))
    assert [(e.name, e.crc, e.table) for e in got] == [
        (e.name, e.crc, "__ksymtab_gpl" if e.gpl else "__ksymtab")
        for e in expected_order(EXPORTS)]
    assert decoded(build_module(without_crcs(EXPORTS), machine)) == expected(EXPORTS,
                                                                             crcs=False)


@pytest.mark.parametrize("prel", [True, False], ids=["prel32", "absolute"])
def test_kflagstab(prel: bool) -> None:
    """Linux 7.x: one __ksymtab; bit 0 of each __kflagstab byte says GPL-only."""
    exports = [Exp("a", flags=0), Exp("b", gpl=True, flags=1, ns="NS"), Exp("c", flags=2),
               Exp("d", gpl=True, flags=3), Exp("e", flags=0x80)]
    data = build_module(exports, prel=prel, flagstab=True)
    got = read_exports(ElfFile(data, "test.ko"))
    assert [(e.name, e.gpl_only, e.flags, e.namespace, e.table) for e in got] == [
        (e.name, e.gpl, e.flags, e.ns, "__ksymtab") for e in exports]
    assert [e.license for e in got] == [License.GPL_ONLY if e.gpl else License.NOT_GPL_ONLY
                                        for e in exports]


GENERATIONS = {  # id: (PREL32, fields per entry)
    "abs16": (False, 2), "abs24": (False, 3), "prel8": (True, 2), "prel12": (True, 3),
}


@pytest.mark.parametrize("machine", ["x86_64", "s390"])
@pytest.mark.parametrize("gen", list(GENERATIONS))
def test_single_export(gen: str, machine: str) -> None:
    """One label gives no stride: the layout comes from where the relocations are."""
    prel, nfields = GENERATIONS[gen]
    for exp in (Exp("only_one", ns="NS"), Exp("only_one"), Exp("only_gpl", gpl=True)):
        for labels in (True, False):
            data = build_module([exp], machine, prel=prel, nfields=nfields, labels=labels)
            assert decoded(data) == expected([exp], nfields, crcs=False), (exp, labels)


@pytest.mark.parametrize("machine", ["x86_64", "s390", "i386"])
@pytest.mark.parametrize("gen", list(GENERATIONS))
def test_no_labels(gen: str, machine: str) -> None:
    """Without ``__ksymtab_<name>`` labels the layout is still unambiguous."""
    prel, nfields = GENERATIONS[gen]
    for n in (2, 3, 4, 6):
        exports = [Exp(f"sym{i}", ns="NS" if i % 2 else "") for i in range(n)]
        data = build_module(exports, machine, prel=prel, nfields=nfields, labels=False,
                            rela=machine != "i386")
        assert decoded(data) == expected(exports, nfields, crcs=False), n


@pytest.mark.parametrize("labels", [True, False])
def test_labels_give_the_stride(labels: bool) -> None:
    """8-byte entries whose values point into __ksymtab_strings also parse as 12-byte ones
    {value, name, namespace}; the labels' spacing says which layout the module has."""
    b = ElfBuilder()
    b.add("__ksymtab", bytes(24), align=4)
    b.add("__ksymtab_strings", b"a\0b\0c\0", flags=0x32, entsize=1)
    for i, n in enumerate("abc"):
        b.sym(n, 2 * i, "__ksymtab_strings")   # exported data that lives among the strings
        if labels:
            b.sym(f"__ksymtab_{n}", 8 * i, "__ksymtab", bind=STB_LOCAL)
    b.relocate("__ksymtab", [Reloc(8 * i + 4 * k, "abc"[i], 2) for i in range(3)
                             for k in range(2)])
    got = [(e.name, e.namespace) for e in read_exports(ElfFile(b.build(), "test.ko"))]
    if labels:
        assert got == [("a", ""), ("b", ""), ("c", "")]
    else:
        assert len(got) == 2  # the relocations alone fit two 12-byte entries first


def test_no_exports() -> None:
    b = ElfBuilder()
    b.add(".text", b"\xc3")
    b.add("__ksymtab", b"")
    assert read_exports(ElfFile(b.build(), "test.ko")) == []


# --- broken modules -----------------------------------------------------------------


def test_tables_without_strings() -> None:
    data = build_module(EXPORTS)
    shstrtab = ElfFile(data, "test.ko").section(".shstrtab")
    assert shstrtab is not None
    at = data.index(b"__ksymtab_strings\0", shstrtab.offset)  # rename the section
    broken = data[:at] + b"X" + data[at + 1:]
    with pytest.raises(FormatError, match="__ksymtab_strings") as e:
        read_exports(ElfFile(broken, "test.ko"))
    assert e.value.path == "test.ko"


def _set_section_size(data: bytes, name: str, size: int) -> bytes:
    elf = ElfFile(data, "test.ko")
    sec = elf.section(name)
    assert sec is not None and elf.is64 and elf.little
    shoff = int.from_bytes(data[0x28:0x30], "little")
    at = shoff + sec.index * 64 + 0x20
    return data[:at] + size.to_bytes(8, "little") + data[at + 8:]


@pytest.mark.parametrize(("section", "size"), [
    ("__ksymtab", 7),        # no entry size divides it
    ("__ksymtab", 12),       # one entry, but its relocations say 12-byte stride lies
    ("__kcrctab", 4),        # fewer CRCs than exports
    ("__kflagstab", 2),      # fewer flags than exports
])
def test_inconsistent_tables(section: str, size: int) -> None:
    exports = [Exp("a", crc=1), Exp("b", crc=2), Exp("c", crc=3)]
    data = build_module(exports, flagstab=True)
    if section == "__ksymtab" and size == 12:
        data = build_module(exports, prel=False, flagstab=True)
    with pytest.raises(FormatError) as e:
        read_exports(ElfFile(_set_section_size(data, section, size), "test.ko"))
    assert e.value.path == "test.ko"


def test_names_outside_strings() -> None:
    """A name relocated against something other than __ksymtab_strings fits no layout."""
    b = ElfBuilder()
    b.add(".text", b"\xc3" * 16)
    b.add("__ksymtab", bytes(12))
    b.add("__ksymtab_strings", b"f\0")
    b.sym("f", 0, ".text")
    b.relocate("__ksymtab", [Reloc(0, "f", 2), Reloc(4, "f", 2), Reloc(8, "f", 2)])
    with pytest.raises(FormatError, match="no known export entry layout"):
        read_exports(ElfFile(b.build(), "test.ko"))


def test_kmod_symbols() -> None:
    """depmod's view: __crc_<name> symbols when present, else every string."""
    elf = ElfFile(build_module(EXPORTS), "test.ko")
    assert sorted(kmod_symbols(elf)) == sorted(e.name for e in EXPORTS)
    elf = ElfFile(build_module(without_crcs(EXPORTS)), "test.ko")
    assert kmod_symbols(elf) == [s for e in EXPORTS for s in (e.name, e.ns) if s]


# --- vmlinux: resolved entries ------------------------------------------------------------

TEXT, KSYMTAB, STRINGS = 0xFFFFFFFF81000000, 0xFFFFFFFF82A00000, 0xFFFFFFFF82B00000


def build_vmlinux(exports: Sequence[Exp], *, prel: bool, nfields: int = 3, is64: bool = True,
                  little: bool = True, machine: int = EM_X86_64) -> bytes:
    """A linked image: entries hold PC-relative offsets or addresses, no relocations.

    A missing namespace is a zero offset or a NULL pointer, except every other one points at
    an empty string, as Linux 5.4-6.5 ``__kstrtabns_`` labels do.
    """
    mask = (1 << (64 if is64 else 32)) - 1
    text, ksymtab, strs = (TEXT, KSYMTAB, STRINGS) if is64 else (
        0xC1000000, 0xC2A00000, 0xC2B00000)
    b = ElfBuilder(is64, little, machine, e_type=ET_EXEC)
    fsize = 4 if prel else (8 if is64 else 4)
    es = fsize * nfields
    strings = b"\0"
    tables = tables_of(exports, False)
    addr = ksymtab
    b.add(".text", b"\xc3" * (16 * len(exports)), addr=text, flags=6, align=16)
    for suffix, table in tables.items():
        entries = b""
        for i, e in enumerate(table):
            name_at = strs + len(strings)
            strings += e.name.encode() + b"\0"
            ns_at = 0 if i % 2 == 0 else strs
            if e.ns:
                ns_at = strs + len(strings)
                strings += e.ns.encode() + b"\0"
            value = text + 16 * exports.index(e)
            fields = [value, name_at, ns_at][:nfields]
            base = addr + i * es
            if prel:
                fields = [f - (base + 4 * k) if f else 0 for k, f in enumerate(fields)]
                entries += b.pack(f"{nfields}i", *fields)
            else:
                entries += b.pack(f"{nfields}{b.word}", *(f & mask for f in fields))
        b.add("__ksymtab" + suffix, entries, addr=addr, align=8)
        b.add("__kcrctab" + suffix, b.pack(f"{len(table)}I", *(e.crc or 0 for e in table)),
              addr=addr + 0x80000, align=4)
        addr += 0x10000
    b.add("__ksymtab_strings", strings, addr=strs, flags=0x32, entsize=1)
    return b.build()


@pytest.mark.parametrize("nfields", [2, 3])
@pytest.mark.parametrize("target", ["x86_64", "s390", "i386", "ppc"])
@pytest.mark.parametrize("prel", [True, False], ids=["prel32", "absolute"])
def test_linked_image(prel: bool, target: str, nfields: int) -> None:
    em, is64, little, *_ = MACHINES[target]
    data = build_vmlinux(EXPORTS, prel=prel, nfields=nfields, is64=is64, little=little,
                         machine=em)
    elf = ElfFile(data, "vmlinux")
    assert elf.e_type == ET_EXEC
    assert decoded(data) == expected(EXPORTS, nfields)


def test_linked_image_out_of_range() -> None:
    """An entry whose name lies outside __ksymtab_strings fits no layout."""
    data = bytearray(build_vmlinux(EXPORTS[:2], prel=True))
    sec = ElfFile(bytes(data), "vmlinux").section("__ksymtab")
    assert sec is not None
    data[sec.offset + 4:sec.offset + 8] = (1 << 30).to_bytes(4, "little")
    with pytest.raises(FormatError, match="__ksymtab"):
        read_exports(ElfFile(bytes(data), "vmlinux"))


# --- the real Debian trees ----------------------------------------------------------------

TREES = ("6.1-cloud-amd64", "6.1-686", "6.12-amd64", "sid-cloud-amd64")
SAMPLE = 30


@dataclass(frozen=True)
class RealTree:
    name: str
    moddir: Path
    modules: list[Module]
    symvers: list[SymversEntry]


@pytest.fixture(scope="module", params=TREES)
def real_tree(request: pytest.FixtureRequest,
              corpus: Callable[[str], tuple[Path, str]]) -> RealTree:
    """Every module of one corpus tree, read in parallel, and its headers' Module.symvers."""
    root, release = corpus(request.param)
    tree = find_tree(str(root))
    mods, errors = read_modules(tree.moddir, sorted(scan_modules(tree.moddir)))
    assert not errors, errors[:3]
    symvers = root / "usr/src" / f"linux-headers-{release}" / "Module.symvers"
    return RealTree(request.param, tree.moddir, mods,
                    parse_symvers(symvers.read_text(), str(symvers)))


def _symvers_module(path: str) -> str:
    """A module's path as Module.symvers names it: under kernel/, without extension."""
    return path.removeprefix("kernel/").split(".ko", 1)[0]


@pytest.mark.corpus
def test_real_exports_match_labels(real_tree: RealTree) -> None:
    """Each export sits where its ``__ksymtab_<name>`` label says, in table order."""
    with_exports = [m for m in real_tree.modules if m.exports]
    step = len(with_exports) / SAMPLE
    sample = [with_exports[int(i * step)] for i in range(min(SAMPLE, len(with_exports)))]
    checked = 0
    for m in sample:
        elf = ElfFile(decompress_file(str(real_tree.moddir / m.path)), m.path)
        exports = read_exports(elf)
        assert tuple(exports) == m.exports
        tables = {s.index: s for s in elf.sections
                  if s.name.startswith("__ksymtab") and s.name != "__ksymtab_strings"}
        labels = {(tables[s.shndx].name, s.name.removeprefix("__ksymtab_")): s.value
                  for s in elf.symbols if s.name.startswith("__ksymtab_") and s.shndx in tables}
        assert sorted(labels) == sorted((e.table, e.name) for e in exports), m.path
        for sec in tables.values():
            table = [e for e in exports if e.table == sec.name]
            stride = sec.size // len(table)
            assert stride in (8, 12, 16, 24) and stride * len(table) == sec.size
            assert [labels[sec.name, e.name] for e in table] == [
                stride * i for i in range(len(table))], m.path
            checked += len(table)
    assert checked >= SAMPLE


@pytest.mark.corpus
def test_real_exports_match_module_symvers(real_tree: RealTree) -> None:
    """All modules together export exactly what Module.symvers lists outside vmlinux."""
    want = {(s.module, s.export.name): s.export for s in real_tree.symvers
            if s.module != "vmlinux"}
    got = {(_symvers_module(m.path), e.name): e for m in real_tree.modules for e in m.exports}
    assert len(got) == sum(len(m.exports) for m in real_tree.modules)  # no duplicates
    assert sorted(set(want) - set(got))[:10] == []
    assert sorted(set(got) - set(want))[:10] == []
    has_crcs = any(e.crc for e in want.values())
    bad = []
    for key, w in want.items():
        g = got[key]
        crc_ok = g.crc == w.crc if has_crcs else g.crc is None
        if (g.license, g.namespace) != (w.license, w.namespace) or not crc_ok:
            bad.append((key, w, g))
    assert bad[:5] == []
    assert len(want) > 3000
    assert any(e.namespace for e in want.values())
    assert {e.license for e in want.values()} == {License.NOT_GPL_ONLY, License.GPL_ONLY}
