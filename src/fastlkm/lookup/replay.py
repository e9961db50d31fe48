"""Replay a loading session against a strategy: the pure-Python reference engine.

A session is the export tables of vmlinux, the tables each module adds when it loads, and
a sequence of events: LOAD a module, UNLOAD it, LOOKUP a name (with gplok).  The native
engine (native.py) replays the same sessions with the same layouts and must agree on every
result and every count.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fastlkm.lookup.base import Counters, Table
from fastlkm.lookup.space import make_space
from fastlkm.lookup.strategies import Strategy

LOAD, UNLOAD, LOOKUP = 1, 2, 3


@dataclass
class Event:
    op: int                              # LOAD, UNLOAD or LOOKUP
    owner: int = -1                      # LOAD/UNLOAD: the module's id
    name: bytes = b""                    # LOOKUP: the symbol
    gplok: bool = True
    # LOOKUP: what the loader model found: (owner id, table section name, entry index)
    expected: tuple[int, str, int] | None = None


Result = tuple[int, str, int] | None     # (owner id, table section name, entry index)


@dataclass
class Replay:
    counters: Counters
    results: list[Result] = field(default_factory=list)   # per lookup replayed
    sampled: int = 1                      # every sampled-th lookup was replayed
    memory: int = 0                       # bytes the strategy added beside the tables


def copy_tables(vmlinux: list[Table], modules: dict[int, list[Table]]
                ) -> tuple[list[Table], dict[int, list[Table]]]:
    """Fresh copies for a strategy to index (a space numbers the tables it holds)."""
    def cp(t: Table) -> Table:
        # extra goes along: it may carry an index read from the file (lookup.sections)
        return Table(t.names, t.license, t.flags, t.owner, t.name, t.strings_size, t.crcs,
                     extra=dict(t.extra))
    return [cp(t) for t in vmlinux], {k: [cp(t) for t in v] for k, v in modules.items()}


def replay(strategy: Strategy, vmlinux: list[Table], modules: dict[int, list[Table]],
           events: list[Event], sample: int = 1, precomputed: bool = True) -> Replay:
    """Run *events* through *strategy*; only every *sample*-th lookup is performed (the
    pure-Python engine is too slow for every linear search of a 4,000-module session).
    With *precomputed*, names' hashes come from the build (Amoroso's .undef.hash)."""
    vm, mods = copy_tables(vmlinux, modules)
    space = make_space(strategy, vm)
    c = Counters()
    out = Replay(c, sampled=sample)
    k = 0
    peak = space.memory
    for ev in events:
        if ev.op == LOAD:
            space.add(ev.owner, mods[ev.owner])
            peak = max(peak, space.memory)
        elif ev.op == UNLOAD:
            space.remove(ev.owner)
        else:
            k += 1
            if (k - 1) % sample:
                continue
            h = strategy.hash(ev.name) if precomputed and strategy.hash else None
            hit = space.find(ev.name, h, ev.gplok, c)
            out.results.append(None if hit is None else (hit[0].owner, hit[0].name, hit[1]))
    out.memory = peak
    return out
