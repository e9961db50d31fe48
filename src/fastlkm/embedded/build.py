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
    STORABLE,
    encode_hashes,
    encode_index,
)
from fastlkm.embedded.read import UNDEF_HASH, htable_name, undefined_names
from fastlkm.kernel.facts import Export
from fastlkm.loader.scenario import export_tables
from fastlkm.lookup.hashes import hash_id
from fastlkm.lookup.strategies import Strategy


def hash_sections(elf: ElfFile, exports: list[Export], strategy: Strategy,
                  undef_hash: bool = False) -> list[NewSection]:
    """The sections that index *exports* (the export tables of *elf*) with *strategy*."""
    if strategy.name not in STORABLE or strategy.build is None:
        raise ValueError(f"strategy {strategy.name} has no stored layout")
    module = elf.e_type == ET_REL
    out = []
    for t in export_tables(exports, -1, False):
        index = strategy.build(t)
        data = encode_index(strategy, index, len(t.names), elf.little)
        align = 8 if STORABLE[strategy.name][0] in (GNU, PERFECT) else 4
        out.append(NewSection(htable_name(t.name), data, SHT_PROGBITS,
                              SHF_ALLOC if module else 0, align))
    if undef_hash and module:
        if strategy.hash is None:
            raise ValueError(f"strategy {strategy.name} hashes nothing")
        fn = strategy.hash
        data = encode_hashes([fn(n) for n in undefined_names(elf)], hash_id(fn), elf.little)
        out.append(NewSection(UNDEF_HASH, data, SHT_PROGBITS, 0, 4))
    return out
