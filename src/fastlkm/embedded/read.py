"""Export tables with the lookup indexes embedded in their file (``fastlkm hash``): read
them back for the loader model and the bench, and check them (``fastlkm verify``).

Each export table ``__ksymtab<suffix>`` may have a section ``__ksymtab<suffix>.htable``
holding a strategy's index over it, and a module may have ``.undef.hash``: the hashes of
its undefined symbols in symbol-table order (docs/lookup.md, "Embedded sections").  The
tables come out exactly as :func:`~fastlkm.loader.scenario.export_tables` makes them from
the file's exports, so a scenario's tables can be swapped for these.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from itertools import pairwise

from fastlkm.elf.reader import ElfFile, Section
from fastlkm.elf.structs import SHN_UNDEF
from fastlkm.embedded.codec import (
    EMBEDDED,
    EMBEDDED_ALL,
    UNDEF,
    Stored,
    decode,
    index_from_stored,
    split_records,
)
from fastlkm.errors import FastlkmError, FormatError
from fastlkm.io.codecs import decompress_file
from fastlkm.kernel.ksymtab import read_exports
from fastlkm.loader.scenario import export_tables
from fastlkm.lookup.base import Counters, Table
from fastlkm.lookup.hashes import HASH_FUNCTIONS, HASH_NONE
from fastlkm.lookup.strategies import TableIndex

HTABLE = ".htable"            # suffix of the section indexing an export table
UNDEF_HASH = ".undef.hash"    # Amoroso's hashes of the undefined symbols


def htable_name(table: str) -> str:
    return table + HTABLE


def fastlkm_sections(elf: ElfFile) -> list[Section]:
    """The sections ``fastlkm hash`` writes, in file order."""
    return [s for s in elf.sections if s.name.endswith(HTABLE) or s.name == UNDEF_HASH]


def undefined_names(elf: ElfFile) -> list[bytes]:
    """The names of the undefined symbols, in symbol-table order (entry 0 excluded):
    what simplify_symbols() resolves, one ``.undef.hash`` word each."""
    return [s.name.encode() for s in elf.symbols[1:] if s.shndx == SHN_UNDEF]


def read_stored(elf: ElfFile, sec: Section) -> Stored:
    """The first (usually the only) stored table of a section."""
    return read_records(elf, sec)[0]


def read_records(elf: ElfFile, sec: Section) -> list[Stored]:
    """Every stored table of a section: one, or one per strategy (``--style all``)."""
    data = elf.section_data(sec)
    return [decode(rec, elf.little, elf.path, sec.offset + off)
            for off, rec in split_records(data, elf.little, elf.path, sec.offset)]


def embedded_tables(elf: ElfFile, owner: int = -1, crcs: bool = False) -> list[Table]:
    """The export tables of *elf* as ``export_tables()`` makes them, each with the index
    read from its embedded section in ``extra["embedded"]`` as (Stored, TableIndex):
    what ``lookup.sections.embedded_strategy()`` hands to a symbol space or the native
    engine.  Raises FormatError when a table has no embedded section or a bad one."""
    tables = export_tables(read_exports(elf), owner, crcs)
    for t in tables:
        sec = elf.section(htable_name(t.name))
        if sec is None:
            raise elf.error(f"{t.name} has no embedded table ({htable_name(t.name)})")
        try:
            got = [(stored, index_from_stored(stored, t)) for stored in read_records(elf, sec)]
        except FormatError as e:
            raise elf.error(f"{sec.name}: {e.message}", sec.offset) from None
        t.extra[EMBEDDED] = got[0]
        t.extra[EMBEDDED_ALL] = {stored.style: (stored, index) for stored, index in got}
    return tables


def read_embedded_tables(path: str, owner: int = -1, crcs: bool = False) -> list[Table]:
    """:func:`embedded_tables` of a module or vmlinux file (any compression)."""
    try:
        return embedded_tables(ElfFile(decompress_file(path), path), owner, crcs)
    except FastlkmError as e:
        raise e.with_path(path) from None


# --- verify -----------------------------------------------------------------------------


def _absent_probes(names: list[bytes], seed: int) -> list[bytes]:
    """Names near the table's own (one byte changed, added or dropped) and random ones:
    a broken index tends to "find" these."""
    rng = random.Random(seed)
    out = []
    for _ in range(8):
        out.append(bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz_0123456789")
                         for _ in range(rng.randint(1, 40))))
    for n in rng.sample(names, min(8, len(names))):
        out += [n + b"_", n[:-1], n[:-1] + bytes([n[-1] ^ 1]) if n else b"x"]
    return out


def verify_image(elf: ElfFile) -> list[str]:
    """Every problem of the embedded tables of *elf*, one line each (without the path):
    an export not found through its table's index at its own position, a name found that
    the table does not hold, a table not sorted (the bsearch precondition, checked for
    every table), a stored table that does not fit its export table, and ``.undef.hash``
    values that are not the hash of the undefined symbols in symbol-table order."""
    problems: list[str] = []
    tables = export_tables(read_exports(elf), -1, False)
    imports = undefined_names(elf)
    by_table = {t.name: t for t in tables}
    hashes_used = set()
    for sec in fastlkm_sections(elf):
        if sec.name.endswith(HTABLE) and sec.name[:-len(HTABLE)] not in by_table:
            problems.append(f"{sec.name}: indexes no export table of this file")
    for t in tables:
        for k, (a, b) in enumerate(pairwise(t.names)):
            if a >= b:
                problems.append(f"{t.name}: not sorted: entry {k + 1} {b.decode()!r} after "
                                f"{a.decode()!r}")
                break
        sec = elf.section(htable_name(t.name))
        if sec is None:
            problems.append(f"{t.name}: no embedded table ({htable_name(t.name)})")
            continue
        try:
            records = read_records(elf, sec)
            indexes = [index_from_stored(stored, t) for stored in records]
        except FormatError as e:
            at = f" (at offset {e.offset})" if e.offset is not None else ""
            problems.append(f"{sec.name}: {e.message}{at}")
            continue
        for stored, index in zip(records, indexes, strict=True):
            fn = HASH_FUNCTIONS[stored.hash]
            if fn is not None:
                hashes_used.add(stored.hash)
            where = sec.name if len(records) == 1 else f"{sec.name} ({stored.style})"
            problems += _check_index(where, t, index, fn, imports, by_table)
    undef = elf.section(UNDEF_HASH)
    if undef is not None:
        problems += _check_undef(elf, undef, imports, hashes_used)
    return problems


def _check_index(where: str, t: Table, index: TableIndex,
                 fn: Callable[[bytes], int] | None, imports: list[bytes],
                 by_table: dict[str, Table]) -> list[str]:
    out: list[str] = []
    c = Counters()

    def find(name: bytes) -> int | None:
        return index.find(name, fn(name) if fn is not None else 0, c)

    try:
        missed = [(i, n, got) for i, n in enumerate(t.names) if (got := find(n)) != i]
        own = set(t.names)
        others = [n for o in by_table.values() if o is not t for n in o.names]
        probes = [n for n in (*imports, *others, *_absent_probes(t.names, len(t.names)))
                  if n not in own]
        found = [(n, got) for n in probes if (got := find(n)) is not None]
    except (IndexError, ZeroDivisionError, TypeError) as e:
        return [f"{where}: a lookup failed on the stored arrays ({type(e).__name__}: {e})"]
    for i, n, got in missed[:3]:
        out.append(f"{where}: export {i} {n.decode()!r} "
                   + ("not found" if got is None else f"found at entry {got}"))
    if len(missed) > 3:
        out.append(f"{where}: {len(missed) - 3} more exports not found at their entry")
    for n, got in found[:3]:
        out.append(f"{where}: {n.decode(errors='replace')!r}, not in {t.name}, found at "
                   f"entry {got}")
    if len(found) > 3:
        out.append(f"{where}: {len(found) - 3} more absent names found")
    return out


def _check_undef(elf: ElfFile, sec: Section, imports: list[bytes],
                 hashes_used: set[int]) -> list[str]:
    try:
        records = read_records(elf, sec)
    except FormatError as e:
        at = f" (at offset {e.offset})" if e.offset is not None else ""
        return [f"{sec.name}: {e.message}{at}"]
    out = []
    if hashes_used - {r.hash for r in records}:
        out.append(f"{sec.name}: hashed with another function than the export tables")
    for stored in records:
        out += _check_undef_record(sec, stored, imports)
    return out


def _check_undef_record(sec: Section, stored: Stored, imports: list[bytes]) -> list[str]:
    if stored.layout != UNDEF:
        return [f"{sec.name}: holds a {stored.style} table, not undefined-symbol hashes"]
    out = []
    fn = HASH_FUNCTIONS[stored.hash]
    if fn is None or stored.hash == HASH_NONE:
        return [f"{sec.name}: no hash function named"]
    got = stored.arrays["hashes"]
    if len(got) != len(imports):
        out.append(f"{sec.name}: {len(got)} hashes for {len(imports)} undefined symbols")
    bad = [i for i, (n, h) in enumerate(zip(imports, got, strict=False)) if fn(n) != h]
    for i in bad[:3]:
        out.append(f"{sec.name}: hash {i} is {got[i]:#010x}, {imports[i].decode()!r} "
                   f"hashes to {fn(imports[i]):#010x}")
    if len(bad) > 3:
        out.append(f"{sec.name}: {len(bad) - 3} more wrong hashes")
    return out
