"""Reorder the export tables of a module (ET_REL): sort them by name for bsearch.

The kernel finds a module's exports with bsearch() (find_exported_symbol_in_section(),
since Linux 3.0), so each ``__ksymtab*`` table must be sorted by name as strcmp()
orders it; since Linux 5.x the linker script sorts them (``SORT(___ksymtab+*)`` in
scripts/module.lds.S), older or hand-made modules may not be.

Moving entry *i* to position *k* moves, together: its ``__ksymtab*`` bytes (with the
addends REL keeps in place), its ``__kcrctab*`` and ``__kflagstab`` entries, the
relocations that target them (their ``r_offset``), and the symbols defined inside them
(``__ksymtab_<name>``, ``__crc_<name>``, ``__flags_<name>``).  Relocation entries keep
their order, so a table sorted twice is byte-identical, and so is one already sorted.
"""

from __future__ import annotations

from fastlkm.elf.reader import ElfFile, Section
from fastlkm.elf.structs import ET_REL, SHT_REL, SHT_RELA, STT_SECTION
from fastlkm.elf.writer import ElfWriter
from fastlkm.errors import FormatError
from fastlkm.kernel.ksymtab import TABLES, table_entries


def export_table_sections(elf: ElfFile) -> list[Section]:
    """The non-empty ``__ksymtab*`` tables of *elf*, in the kernel's search order."""
    out = []
    for suffix, _ in TABLES:
        sec = elf.section("__ksymtab" + suffix)
        if sec is not None and sec.size:
            out.append(sec)
    return out


def _parallel(elf: ElfFile, table: Section, count: int) -> list[tuple[Section, int]]:
    """(section, entry size) of every array indexed like *table*: itself, its CRCs and
    (for ``__ksymtab`` on Linux 7.x) its flags."""
    suffix = table.name[len("__ksymtab"):]
    out = []
    for name in ("__kcrctab" + suffix, "__kflagstab" if suffix == "" else None):
        sec = elf.section(name) if name else None
        if sec is None:
            continue
        width = sec.size // count if count else 0
        if width not in (1, 4, 8) or width * count != sec.size:
            raise elf.error(f"{sec.name}: {sec.size} bytes do not hold {count} entries of "
                            f"{table.name}", sec.offset)
        out.append((sec, width))
    return out


def reorder_table(elf: ElfFile, writer: ElfWriter, table: Section, order: list[int]) -> None:
    """Rearrange *table* so that its new entry *k* is its old entry ``order[k]``."""
    if elf.e_type != ET_REL:
        raise elf.error(f"{table.name}: only a module's (relocatable) tables can be "
                        f"reordered; a linked image's entries are resolved", table.offset)
    es, entries = table_entries(elf, table)
    n = len(entries)
    if sorted(order) != list(range(n)):
        raise elf.error(f"{table.name}: not a permutation of its {n} entries")
    if order == list(range(n)):
        return
    new_of = [0] * n
    for k, i in enumerate(order):
        new_of[i] = k
    arrays = [(table, es), *_parallel(elf, table, n)]
    moved = {sec.index for sec, _ in arrays}
    # a reference into a moved array through its section symbol plus an addend would
    # need its addend rewritten: refuse rather than guess (no known module has one)
    section_syms = {s.index for s in elf.symbols
                    if s.type == STT_SECTION and s.shndx in moved}
    if section_syms:
        for rsec in elf.sections:
            if rsec.type not in (SHT_REL, SHT_RELA):
                continue
            for r in elf.relocations(rsec):
                if r.sym in section_syms:
                    raise elf.error(f"{rsec.name}: a relocation refers into "
                                    f"{elf.sections[elf.symbols[r.sym].shndx].name} by its "
                                    f"section symbol; cannot reorder it", rsec.offset)
    for sec, width in arrays:
        old = elf.section_data(sec)
        writer.set_section_data(sec, b"".join(old[i * width:(i + 1) * width] for i in order))

        def moved_to(off: int, sec: Section = sec, width: int = width) -> int:
            return new_of[off // width] * width + off % width

        for sym in elf.symbols:
            if sym.shndx == sec.index and sym.type != STT_SECTION and sym.value < sec.size:
                writer.set_symbol_value(sym.index, moved_to(sym.value))
        for rsec in elf.relocation_sections(sec):
            for j, r in enumerate(elf.relocations(rsec)):
                if r.offset >= sec.size:
                    raise elf.error(f"{rsec.name}: relocation {j} at {r.offset} beyond "
                                    f"{sec.name}", rsec.offset)
                writer.set_relocation_offset(rsec, j, moved_to(r.offset))


def sort_order(names: list[str]) -> list[int]:
    """The order that sorts *names* as the kernel's strcmp() compares them."""
    keys = [n.encode() for n in names]
    return sorted(range(len(names)), key=keys.__getitem__)


def sort_exports(elf: ElfFile, writer: ElfWriter) -> list[str]:
    """Sort every export table of the module *elf* by name; returns the tables moved."""
    if elf.e_type != ET_REL:
        raise FormatError("only modules are sorted: a linked image's tables were sorted "
                          "by its linker", elf.path)
    done = []
    for sec in export_table_sections(elf):
        _, entries = table_entries(elf, sec)
        order = sort_order([n for n, _ in entries])
        if order != list(range(len(order))):
            reorder_table(elf, writer, sec, order)
            done.append(sec.name)
    return done
