"""Scenarios: the exact sequence of symbol lookups the loader model performs while it
loads a set of modules, with the export tables each load adds, for the strategies to
replay.

A scenario is recorded by running the loader with a search that records every
find_symbol() call (simplify_symbols() and verify_exported_symbols() alike) and every
module that joins the search list.  Names are bytes, as the kernel compares them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fastlkm.kernel.facts import Export, Kernel, License, Module
from fastlkm.loader.loader import DictSearch, LoadedModule, Loader, LoadResult
from fastlkm.lookup.base import GPL_ONLY, NOT_GPL_ONLY, PER_ENTRY, Table
from fastlkm.lookup.replay import LOAD, LOOKUP, UNLOAD, Event


def export_tables(exports: tuple[Export, ...] | list[Export], owner: int,
                  crcs: bool) -> list[Table]:
    """Group exports into the tables the kernel holds, in search order."""
    groups: dict[str, list[Export]] = {}
    for e in exports:
        groups.setdefault(e.table, []).append(e)
    tables = []
    for name, ex in groups.items():
        if name.endswith("_gpl"):
            lic, flags = GPL_ONLY, b""
        elif any(e.license == License.GPL_ONLY for e in ex) or any(e.flags for e in ex):
            # Linux 7.x: one table, GPL-only-ness per entry in __kflagstab
            lic = PER_ENTRY
            flags = bytes((e.flags | (1 if e.license == License.GPL_ONLY else 0)) & 0xFF
                          for e in ex)
        else:
            lic, flags = NOT_GPL_ONLY, b""
        tables.append(Table([e.name.encode() for e in ex], lic, flags, owner, name,
                            crcs=crcs and any(e.crc is not None for e in ex)))
    return tables


@dataclass
class Scenario:
    """Everything a strategy needs to replay one loading session."""

    kernel: str
    vmlinux: list[Table]
    modules: dict[int, list[Table]]        # owner id -> the tables it adds when loaded
    module_names: dict[int, str]
    events: list[Event]
    results: list[LoadResult] = field(default_factory=list)

    @property
    def lookups(self) -> list[Event]:
        return [e for e in self.events if e.op == LOOKUP]


class RecordingSearch(DictSearch):
    """The reference search, recording every call into a scenario."""

    def __init__(self, kernel: Kernel):
        super().__init__(kernel)
        self.events: list[Event] = []
        self.ids: dict[int, int] = {}          # id(LoadedModule) -> owner id
        self.tables: dict[int, list[Table]] = {}
        self.names: dict[int, str] = {}
        self.modversions = kernel.modversions
        self._pos: dict[int, int] = {}         # id(Export) -> index in its table
        self._positions(kernel.exports)

    def _positions(self, exports: tuple[Export, ...]) -> None:
        seen: dict[str, int] = {}
        for e in exports:
            i = seen.get(e.table, 0)
            self._pos[id(e)] = i
            seen[e.table] = i + 1

    def find(self, name: str, gplok: bool) -> tuple[LoadedModule | None, Export] | None:
        hit = super().find(name, gplok)
        expected = None
        if hit is not None:
            owner, e = hit
            oid = -1 if owner is None else self.ids[id(owner)]
            expected = (oid, e.table, self._pos[id(e)])
        self.events.append(Event(LOOKUP, name=name.encode(), gplok=gplok, expected=expected))
        return hit

    def add(self, mod: LoadedModule) -> None:
        super().add(mod)
        oid = len(self.ids)
        self.ids[id(mod)] = oid
        self.names[oid] = mod.name
        self.tables[oid] = export_tables(mod.module.exports, oid, self.modversions)
        self._positions(mod.module.exports)
        self.events.append(Event(LOAD, owner=oid))

    def remove(self, mod: LoadedModule) -> None:
        super().remove(mod)
        self.events.append(Event(UNLOAD, owner=self.ids[id(mod)]))


def record(kernel: Kernel, modules: list[Module]) -> Scenario:
    """Load *modules* in their order (modprobe's: fastlkm.depmod.probe) and record the
    lookups."""
    search = RecordingSearch(kernel)
    loader = Loader(kernel, search)
    results = [loader.load(m) for m in modules]
    return Scenario(kernel.release, export_tables(kernel.exports, -1, kernel.modversions),
                    search.tables, search.names, search.events, results)
