"""Sorting export tables: synthetic modules of every class, byte order and relocation kind
(CRCs in place or relocated, __kflagstab), then real Debian modules unsorted by the writer
and sorted back to their original bytes."""

from __future__ import annotations

import random

import pytest

from fastlkm.elf.reader import ElfFile
from fastlkm.elf.writer import ElfWriter
from fastlkm.errors import FormatError
from fastlkm.io.codecs import decompress_file
from fastlkm.kernel.ksymtab import read_exports
from fastlkm.kernel.signature import split_signature
from fastlkm.kernel.sort import export_table_sections, reorder_table, sort_exports
from fastlkm.kernel.tree import find_tree
from tests.elf.binutils import readelf_clean
from tests.kernel.test_ksymtab import EXPORTS, Exp, build_module

MORE = (*EXPORTS, Exp("zeta", crc=5), Exp("alpha", crc=6), Exp("m_gpl", gpl=True, crc=7),
        Exp("b", gpl=True, crc=8))


def by_table(elf: ElfFile) -> dict[str, list[tuple[str, str, int | None, int]]]:
    out: dict[str, list[tuple[str, str, int | None, int]]] = {}
    for e in read_exports(elf):
        out.setdefault(e.table, []).append((e.name, e.namespace, e.crc, e.flags))
    return out


def labels_agree(elf: ElfFile) -> int:
    """Check that each __ksymtab_/__crc_/__flags_ label sits on its export's entry in its
    table or parallel array; returns how many were checked."""
    tables = by_table(elf)
    checked = 0
    for s in elf.symbols:
        if not s.shndx or s.shndx >= len(elf.sections):
            continue
        sec = elf.sections[s.shndx].name
        table = "__ksymtab" + sec.removeprefix("__kcrctab") if sec.startswith("__kcrctab") \
            else "__ksymtab" if sec == "__kflagstab" else sec
        prefix = next((p for p in ("__ksymtab_", "__crc_", "__flags_")
                       if s.name.startswith(p)), None)
        if table not in tables or prefix is None:
            continue
        entries = tables[table]
        k = s.value // (elf.sections[s.shndx].size // len(entries))
        assert entries[k][0] == s.name[len(prefix):], (s.name, sec, k)
        checked += 1
    return checked


def sort_once(data: bytes) -> tuple[bytes, list[str]]:
    elf = ElfFile(data, "t.ko")
    w = ElfWriter(elf)
    moved = sort_exports(elf, w)
    return w.build(), moved


CASES = {
    "x86_64 PREL32 RELA": dict(machine="x86_64"),
    "s390x BE RELA": dict(machine="s390"),
    "aarch64 absolute": dict(machine="aarch64", prel=False),
    "i386 REL PREL32": dict(machine="i386", rela=False),
    "i386 REL absolute, relocated CRCs": dict(machine="i386", rela=False, prel=False,
                                              crc_relocs=True),
    "ppc BE 32-bit": dict(machine="ppc"),
    "x86_64 __kflagstab": dict(machine="x86_64", flagstab=True),
    "no labels": dict(machine="x86_64", labels=False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_sort_synthetic(case: str) -> None:
    kw = CASES[case]
    exports = [Exp(e.name, e.gpl, e.ns, e.crc, flags=int(e.gpl)) for e in MORE]
    data = build_module(exports, **kw)  # type: ignore[arg-type]
    before = by_table(ElfFile(data))
    assert any(v != sorted(v) for v in before.values())
    out, moved = sort_once(data)
    assert len(out) == len(data)
    after = by_table(ElfFile(out))
    assert moved == [t for t in before if before[t] != sorted(before[t])]
    # every table sorted, each entry with its namespace, CRC and flags
    assert after == {t: sorted(v) for t, v in before.items()}
    # the labels follow their entries
    assert labels_agree(ElfFile(out)) == labels_agree(ElfFile(data))
    assert labels_agree(ElfFile(out)) or not kw.get("labels", True)
    readelf_clean(out)
    # sorting a sorted module changes nothing
    again, moved2 = sort_once(out)
    assert moved2 == [] and again == out


def test_sorted_module_is_untouched() -> None:
    data = build_module(sorted(MORE, key=lambda e: e.name))
    out, moved = sort_once(data)
    assert moved == [] and out is data


def test_reorder_and_back() -> None:
    data = build_module(MORE, machine="s390")
    elf = ElfFile(data)
    sec = elf.section("__ksymtab")
    assert sec is not None
    n = len([e for e in read_exports(elf) if e.table == "__ksymtab"])
    order = list(range(n))[::-1]
    w = ElfWriter(elf)
    reorder_table(elf, w, sec, order)
    rev = ElfFile(w.build())
    w2 = ElfWriter(rev)
    reorder_table(rev, w2, rev.sections[sec.index], order)
    assert w2.build() == data


def test_refusals() -> None:
    data = build_module(MORE)
    elf = ElfFile(data, "t.ko")
    sec = elf.section("__ksymtab")
    assert sec is not None
    with pytest.raises(FormatError, match="permutation"):
        reorder_table(elf, ElfWriter(elf), sec, [0, 0, 1])


# --- real modules -----------------------------------------------------------------------

REAL = {  # kernel -> modules whose tables are unsorted, then sorted back
    "6.12-amd64": ("jbd2", "mbcache"),       # RELA, PREL32, __kcrctab with __crc_ labels
    "6.1-686": ("jbd2", "mbcache"),          # ELF32, REL with in-place addends
    "sid-cloud-amd64": ("kvm",),            # one __ksymtab with __kflagstab, no CRCs
}


@pytest.mark.corpus
@pytest.mark.parametrize("kernel", list(REAL))
def test_real_modules_unsorted_and_sorted_back(corpus, kernel: str) -> None:
    root, release = corpus(kernel)
    moddir = find_tree(str(root), release).moddir
    for name in REAL[kernel]:
        path = next(moddir.rglob(f"{name}.ko*"))
        original, _ = split_signature(decompress_file(path))
        elf = ElfFile(original, str(path))
        # Debian's tables are sorted already
        out, moved = sort_once(original)
        assert moved == [] and out is original
        # unsort every table with the writer (entries, CRCs, flags, relocations, labels)
        w = ElfWriter(elf)
        rng = random.Random(name)
        for sec in export_table_sections(elf):
            n = len([e for e in read_exports(elf) if e.table == sec.name])
            order = list(range(n))
            rng.shuffle(order)
            reorder_table(elf, w, sec, order)
        shuffled = w.build()
        assert shuffled != original
        before = by_table(ElfFile(shuffled))
        assert any(v != sorted(v) for v in before.values())
        assert {t: sorted(v) for t, v in before.items()} == by_table(elf)
        assert labels_agree(ElfFile(shuffled)) == labels_agree(elf) > 0
        readelf_clean(shuffled)
        back, moved = sort_once(shuffled)
        assert moved == [s.name for s in export_table_sections(elf)]
        assert back == original, name


@pytest.mark.corpus
@pytest.mark.parametrize("kernel", ["6.1-cloud-amd64", "6.12-amd64", "6.1-686",
                                    "sid-cloud-amd64"])
def test_debian_tables_are_sorted(system, kernel: str) -> None:
    """The bsearch precondition holds in every module of every corpus kernel."""
    s = system(kernel)
    bad = []
    for m in s.modules:
        tables: dict[str, list[str]] = {}
        for e in m.exports:
            tables.setdefault(e.table, []).append(e.name)
        bad += [(m.name, t) for t, names in tables.items()
                if [n.encode() for n in names] != sorted(n.encode() for n in names)]
    assert bad == []
