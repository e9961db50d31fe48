"""ELF sections for hash tables: what ``fastlkm hash`` appends to a module or vmlinux.

Per export table ``__ksymtab<suffix>``, a section ``__ksymtab<suffix>.htable`` holds the
chosen strategy's index over it; with ``undef_hash``, a module also gets ``.undef.hash``,
the hashes of its undefined symbols in symbol-table order.  Both are SHT_PROGBITS in the
file's byte order (layouts: fastlkm.embedded.codec, docs/lookup.md).

In a module an ``.htable`` is SHF_ALLOC: the kernel lays it out with the read-only data
and keeps it as long as the export table it indexes; ``.undef.hash`` is not, since
simplify_symbols() reads it from the image while the module loads, as it does ``.symtab``.
In a linked vmlinux nothing new is SHF_ALLOC: no segment carries the new sections (only
program headers decide what a boot loader puts in memory, and adding a segment would
move the image), so they are data for tools, not for the running kernel.
"""

from __future__ import annotations

from fastlkm.elf.reader import ElfFile
from fastlkm.elf.structs import ET_REL, SHF_ALLOC, SHT_PROGBITS
from fastlkm.elf.writer import NewSection
from fastlkm.embedded.codec import (
    GNU,
    PERFECT,
    RECORD_ALIGN,
    STORABLE,
    encode_hashes,
    encode_index,
    join_records,
)
from fastlkm.embedded.read import UNDEF_HASH, htable_name, undefined_names
from fastlkm.kernel.facts import Export
from fastlkm.loader.scenario import export_tables
from fastlkm.lookup.hashes import hash_id
from fastlkm.lookup.strategies import Strategy


def hash_sections(elf: ElfFile, exports: list[Export],
                  strategy: Strategy | list[Strategy], undef_hash: bool = False
                  ) -> list[NewSection]:
    """The sections that index *exports* (the export tables of *elf*) with *strategy*, or
    with each of a list of strategies (one record per strategy in each section, and one
    ``.undef.hash`` record per hash function they use: what a kernel that switches
    strategies at run time reads)."""
    several = isinstance(strategy, list)
    strategies = strategy if isinstance(strategy, list) else [strategy]
    for st in strategies:
        if st.name not in STORABLE or st.build is None:
            raise ValueError(f"strategy {st.name} has no stored layout")
    module = elf.e_type == ET_REL
    out = []
    for t in export_tables(exports, -1, False):
        data = join_records([encode_index(st, st.build(t), len(t.names), elf.little)
                             for st in strategies if st.build is not None])
        if several:
            align = RECORD_ALIGN
        else:
            align = 8 if STORABLE[strategies[0].name][0] in (GNU, PERFECT) else 4
        out.append(NewSection(htable_name(t.name), data, SHT_PROGBITS,
                              SHF_ALLOC if module else 0, align))
    if undef_hash and module:
        fns = list(dict.fromkeys(st.hash for st in strategies if st.hash is not None))
        if not fns:
            raise ValueError(f"strategy {strategies[0].name} hashes nothing")
        names = undefined_names(elf)
        data = join_records([encode_hashes([fn(n) for n in names], hash_id(fn), elf.little)
                             for fn in fns])
        out.append(NewSection(UNDEF_HASH, data, SHT_PROGBITS, 0,
                              RECORD_ALIGN if several else 4))
    return out
