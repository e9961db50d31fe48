"""What modprobe inserts for a module, and in which order: the modules of its
modules.dep line as depmod computes it, read as libkmod reads one.

There is one rule for module dependencies in fastlkm, depmod's (compute.py): a module
depends on the owner of each symbol it needs, and when several modules export a name,
the last of them in depmod's array wins (depmod_symbol_add() overwrites).  The kernel
never decides between exporters -- it refuses the second one to load
(verify_exported_symbols()) -- so which one is inserted is modprobe's choice, made from
modules.dep; tests/depmod/test_probe.py checks it against kmod's modprobe.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from fastlkm.depmod.compute import (
    Depmod,
    DepmodMod,
    build_array,
    calculate_dependencies,
    load_dependencies,
    load_symbols,
)
from fastlkm.depmod.output import all_dependencies
from fastlkm.errors import CycleError

if TYPE_CHECKING:
    from fastlkm.kernel.facts import Module


class Probe:
    """depmod_load() over *modules* (depmod's walk order) and modules.order *order*, once,
    for as many questions to modprobe as one likes."""

    def __init__(self, modules: Sequence[Module], order: list[str]) -> None:
        self.mods = build_array(modules, order)
        symbols = load_symbols(self.mods)
        load_dependencies(self.mods, symbols)
        try:
            calculate_dependencies(Depmod(self.mods, symbols))
            self.sorted = True
        except CycleError:
            self.sorted = False                    # a cycle: no modules.dep order
        self.by_name = {d.name: d for d in self.mods}
        self.originals = {m.name: m for m in reversed(modules)}   # depmod keeps the first

    def dependencies(self) -> dict[str, list[str]]:
        """module name -> the modules that own the symbols it needs (its direct
        dependencies), by depmod's rule."""
        return {d.name: [x.name for x in d.deps] for d in self.mods}

    def insert_order(self, wanted: list[str] | None = None) -> list[Module]:
        """See probe_order()."""
        roots = ([d.name for d in self.mods] if wanted is None
                 else [w.replace("-", "_") for w in wanted])
        out: list[Module] = []
        done: set[str] = set()
        for r in roots:
            d = self.by_name.get(r)
            if d is None or d.name in done:
                continue
            plan = [*reversed(all_dependencies(d)), d] if self.sorted else _depth_first(d)
            for x in plan:
                if x.name not in done:
                    done.add(x.name)
                    out.append(self.originals[x.name])
        return out


def dependencies(modules: Sequence[Module], order: list[str]) -> dict[str, list[str]]:
    """module name -> the modules that own the symbols it needs (its direct
    dependencies), by depmod's rule."""
    return Probe(modules, order).dependencies()


def probe_order(modules: Sequence[Module], order: list[str],
                wanted: list[str] | None = None) -> list[Module]:
    """The modules ``modprobe -a WANTED...`` inserts (default: every module, in depmod's
    order), in modprobe's order: for each wanted module, its modules.dep line read back
    to front (libkmod prepends each path it parses), then the module
    (kmod_module_get_probe_list(), without softdeps); a module already inserted is
    skipped.  Modules in a dependency cycle have no modules.dep order: theirs are their
    direct dependencies, depth first, the cycle broken where it is met (the kernel then
    refuses the module whose symbols are not there yet)."""
    return Probe(modules, order).insert_order(wanted)


def _depth_first(root: DepmodMod) -> list[DepmodMod]:
    """*root*'s dependencies before it, depth first; a cycle is broken where it is met."""
    out: list[DepmodMod] = []
    state: dict[int, int] = {}
    stack: list[tuple[DepmodMod, int]] = [(root, 0)]
    while stack:
        d, i = stack.pop()
        if i == 0:
            if state.get(d.idx):
                continue
            state[d.idx] = 1
        if i < len(d.deps):
            stack.append((d, i + 1))
            if not state.get(d.deps[i].idx):
                stack.append((d.deps[i], 0))
            continue
        state[d.idx] = 2
        out.append(d)
    return out
