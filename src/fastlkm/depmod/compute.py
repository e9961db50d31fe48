"""What depmod computes over the modules it read, phase by phase as kmod's depmod_load()
(tools/depmod.c): the module array in kmod's order, the symbol table, each module's
dependencies, and their topological order (or the cycles that prevent one).

Byte-identical output needs kmod's own orders, which this module reproduces:
- modules are ordered by ``modules.order``; those it does not list follow in the iteration
  order of kmod's name hash (depmod_modules_sort(), a stable sort);
- a module's dependencies are the owners of its undefined symbols, and are printed in a
  topological order computed as depmod_calculate_dependencies() does.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import repeat
from operator import itemgetter
from typing import TYPE_CHECKING

from fastlkm.depmod.scan import DEP_DOTTED, DEP_WEAK, DepmodModule, from_module
from fastlkm.errors import CycleError
from fastlkm.kernel.modname import modname

if TYPE_CHECKING:
    from fastlkm.kernel.facts import Export, Module

SYMBOL_HASH_BUCKETS = 2048   # hash_new(2048, ...) for depmod->symbols
MODULE_HASH_BUCKETS = 512    # hash_new(512, ...) for depmod->modules_by_name


def py_hash_superfast(key: bytes) -> int:
    """Paul Hsieh's SuperFastHash as kmod's shared/hash.c computes it (little-endian
    16-bit loads, signed char in the 3-byte tail, 32-bit arithmetic)."""
    m = 0xFFFFFFFF
    n = len(key)
    h = n
    rem = n & 3
    i = 0
    for _ in range(n >> 2):
        h = (h + (key[i] | key[i + 1] << 8)) & m
        tmp = (((key[i + 2] | key[i + 3] << 8) << 11) ^ h) & m
        h = ((h << 16) ^ tmp) & m
        i += 4
        h = (h + (h >> 11)) & m
    if rem == 3:
        h = (h + (key[i] | key[i + 1] << 8)) & m
        h ^= (h << 16) & m
        c = key[i + 2] - 256 if key[i + 2] > 127 else key[i + 2]
        h ^= (c << 18) & m
        h = (h + (h >> 11)) & m
    elif rem == 2:
        h = (h + (key[i] | key[i + 1] << 8)) & m
        h ^= (h << 11) & m
        h = (h + (h >> 17)) & m
    elif rem == 1:
        c = key[i] - 256 if key[i] > 127 else key[i]
        h = (h + c) & m
        h ^= (h << 10) & m
        h = (h + (h >> 1)) & m
    h ^= (h << 3) & m
    h = (h + (h >> 5)) & m
    h ^= (h << 4) & m
    h = (h + (h >> 17)) & m
    h ^= (h << 25) & m
    h = (h + (h >> 6)) & m
    return h


def py_hash_order(names: list[str], buckets: int) -> list[str]:
    """The order in which kmod's hash_iter visits *names*."""
    keyed = [(py_hash_superfast(n.encode()) & (buckets - 1), n.encode(), n) for n in names]
    keyed.sort()
    return [n for _, _, n in keyed]


try:   # the same two in C (_kmod_index.c) when it is built
    from fastlkm.depmod._kmod_index import (  # type: ignore[import-not-found]
        hash_order,
        hash_superfast,
    )
except ImportError:
    hash_order, hash_superfast = py_hash_order, py_hash_superfast


# plain classes with slots, not dataclasses: importing dataclasses costs a cold depmod run
# more than everything it computes here on a small tree


class DepmodMod:
    """One module as depmod tracks it (struct mod in kmod's depmod.c); compared by
    identity."""

    __slots__ = ("dep_sort_idx", "deps", "idx", "module", "name", "relpath", "users")

    def __init__(self, module: DepmodModule, relpath: str, name: str) -> None:
        self.module = module
        self.relpath = relpath
        self.name = name
        self.idx = 0
        self.users = 0
        self.deps: list[DepmodMod] = []
        self.dep_sort_idx = 0x7FFFFFFF

    def __repr__(self) -> str:
        return f"DepmodMod({self.name!r}, idx={self.idx})"


class Depmod:
    """depmod's computation over a set of modules, for the text outputs and the indexes."""

    __slots__ = ("cycles", "lines", "mods", "owned", "sym_prefix", "symbols")

    def __init__(self, mods: list[DepmodMod],
                 symbols: dict[str, tuple[DepmodMod | None, int]], sym_prefix: str = ""
                 ) -> None:
        self.mods = mods
        self.symbols = symbols                           # name -> (owner, crc)
        self.sym_prefix = sym_prefix                     # depmod -P
        self.cycles: list[str] = []
        self.owned: list[tuple[str, DepmodMod]] | None = None   # module_symbols(), once
        self.lines: list[str] | None = None                     # dep_lines(), once


def uncompressed_relpath(relpath: str) -> str:
    """relpath with its compression suffix dropped, as kmod's uncrelpath."""
    d, _, base = relpath.rpartition("/")
    n = modname(base)
    cut = (len(d) + 1 if d else 0) + len(n) + len(".ko")
    return relpath[:cut]


def build(modules: Sequence[DepmodModule | Module], order: list[str],
          kernel_exports: list[Export] | None = None, kmod_compat: bool = False,
          sym_prefix: str = "", report: list[str] | None = None,
          check_symvers: bool = False, moddir: str | None = None) -> Depmod:
    """Compute what depmod computes (depmod_load()).  *modules* in the order depmod found
    them (readdir order); *order* the lines of modules.order; *kernel_exports* given as
    depmod's -E/-F would (they only add CRCs and fake symbols: they are never
    dependencies).  With *report* (depmod -e), unknown symbols (and, with
    *check_symvers*, CRC mismatches) are appended with depmod's own words; paths shown
    under *moddir*."""
    mods = build_array(modules, order)
    symbols = load_symbols(mods, kernel_exports, kmod_compat, sym_prefix)
    load_dependencies(mods, symbols, sym_prefix)
    if report is not None:
        report_symbols(mods, symbols, report, check_symvers, sym_prefix, moddir)
    dm = Depmod(mods, symbols, sym_prefix)
    calculate_dependencies(dm)
    return dm


def build_array(modules: Sequence[DepmodModule | Module], order: list[str]
                ) -> list[DepmodMod]:
    """depmod_modules_build_array() and depmod_modules_sort(): one entry per module name
    (the first found), in kmod's name-hash order, then stably sorted by modules.order."""
    by_name: dict[str, DepmodMod] = {}
    for m in modules:
        if not isinstance(m, DepmodModule):   # the reference decoder's Module
            m = from_module(m)
        dm = DepmodMod(m, m.path, modname(m.path))
        by_name.setdefault(dm.name, dm)
    mods = [by_name[n] for n in hash_order(list(by_name), MODULE_HASH_BUCKETS)]
    if order:
        by_unc = {uncompressed_relpath(d.relpath): d for d in mods}
        total = len(order) + 1
        for d in mods:
            d.dep_sort_idx = 1
        for i, line in enumerate(order, 1):
            d = by_unc.get(line)
            if d is not None:
                d.dep_sort_idx = i - total
        mods.sort(key=lambda d: d.dep_sort_idx)
    for i, d in enumerate(mods):
        d.idx = i
        d.dep_sort_idx = 0x7FFFFFFF
    return mods


def load_symbols(mods: list[DepmodMod], kernel_exports: list[Export] | None = None,
                 kmod_compat: bool = False, sym_prefix: str = ""
                 ) -> dict[str, tuple[DepmodMod | None, int]]:
    """The symbol table, name -> (owner, CRC): the kernel's symbols as
    depmod_load_symvers() / depmod_load_system_map() add them, then every module's exports
    as depmod_load_modules() adds them (a later module overwrites an earlier owner)."""
    symbols: dict[str, tuple[DepmodMod | None, int]] = {}

    def add(name: str, owner: DepmodMod | None, crc: int, prefix_skipped: bool) -> None:
        if not prefix_skipped and sym_prefix and name.startswith(sym_prefix):
            name = name[1:]
        symbols[name] = (owner, crc)

    if kernel_exports is not None:
        for e in kernel_exports:
            add(e.name, None, e.crc or 0, False)
        add("__this_module", None, 0, True)
        add("_GLOBAL_OFFSET_TABLE_", None, 0, True)
        if "TOC." not in symbols:
            add("TOC.", None, 0, True)
    for d in mods:
        m = d.module
        if kmod_compat and _kmod_reads_other_names(m):
            names, crcs = m.kmod_symbols, repeat(0)
        else:
            names, crcs = m.exports, m.crcs
        if sym_prefix:
            for n, c in zip(names, crcs, strict=False):
                add(n, d, c, False)
        else:
            symbols.update(zip(names, zip(repeat(d), crcs, strict=False), strict=False))
    return symbols


def _symbol_keys(m: DepmodModule, sym_prefix: str) -> Sequence[str]:
    """The names a module needs as the symbol table holds them: a leading '.' and the
    symbol prefix dropped (as depmod_load_dependencies())."""
    # (DEP_DOTTED is the high flag: a module without dotted names has max() below it)
    if not sym_prefix and not (m.flags and max(m.flags) >= DEP_DOTTED):
        return m.deps
    keys = [n[1:] if n[:1] == "." else n for n in m.deps]
    if sym_prefix:
        keys = [k[1:] if k.startswith(sym_prefix) else k for k in keys]
    return keys


def load_dependencies(mods: list[DepmodMod], symbols: dict[str, tuple[DepmodMod | None, int]],
                      sym_prefix: str = "") -> None:
    """depmod_load_dependencies(): a module depends on the owner of each symbol it needs,
    in the order of first need."""
    get = symbols.get
    for d in mods:
        # at the speed of the builtins that iterate
        owners = dict.fromkeys(map(_owner, filter(None, map(get, _symbol_keys(d.module,
                                                                            sym_prefix)))))
        owners.pop(None, None)
        d.deps = list(owners)
        for owner in d.deps:
            owner.users += 1


def needs_lines(dm: Depmod, moddir: str | None = None) -> list[str]:
    """depmod -v: for each module, in depmod's order, the first symbol it needs of each
    module it depends on, as mod_add_dependency() shows it; paths under *moddir*."""
    get = dm.symbols.get
    lines = []
    for d in dm.mods:
        seen: set[int] = set()
        for key in _symbol_keys(d.module, dm.sym_prefix):
            hit = get(key)
            if hit is None or hit[0] is None or id(hit[0]) in seen:
                continue
            seen.add(id(hit[0]))
            lines.append(f'{_shown(d, moddir)} needs "{key}": {_shown(hit[0], moddir)}')
    return lines


def report_symbols(mods: list[DepmodMod], symbols: dict[str, tuple[DepmodMod | None, int]],
                   report: list[str], check_symvers: bool = False, sym_prefix: str = "",
                   moddir: str | None = None) -> None:
    """depmod -e, as depmod_load_dependencies() reports: each symbol no module or kernel
    supplies and, with *check_symvers*, each CRC the supplier disagrees about, in
    depmod's words (weak symbols never)."""
    get = symbols.get
    for d in mods:
        m = d.module
        crcs = memoryview(m.dep_crcs).cast("B")
        for i, (name, key, flags) in enumerate(zip(m.deps, _symbol_keys(m, sym_prefix),
                                                   m.flags, strict=True)):
            if flags & DEP_WEAK:
                continue
            hit = get(key)
            if hit is None:
                report.append(f"{_shown(d, moddir)} needs unknown symbol {name}")
            elif check_symvers and hit[1] != int.from_bytes(crcs[4 * i:4 * i + 4], "little"):
                report.append(f"{_shown(d, moddir)} disagrees about version of symbol {name}")


_owner = itemgetter(0)


def _kmod_reads_other_names(m: DepmodModule) -> bool:
    """Whether kmod_elf_get_symbols() names other symbols than the export tables (the
    namespaces of __ksymtab_strings, or __crc_ symbols of another set)."""
    if m.kmod_symbols == m.exports:
        return False
    names = set(m.exports)
    return len(m.kmod_symbols) != len(names) or set(m.kmod_symbols) != names


def _shown(d: DepmodMod, moddir: str | None) -> str:
    return d.relpath if moddir is None or d.relpath.startswith("/") else \
        f"{moddir}/{d.relpath}"


def calculate_dependencies(dm: Depmod) -> None:
    """depmod_calculate_dependencies(): Kahn's sort with a stack of roots; modules left
    over are in or behind a cycle, reported as depmod_report_cycles() does (CycleError)."""
    mods = dm.mods
    users = [d.users for d in mods]
    roots = [i for i, u in enumerate(users) if u == 0]
    n_sorted = 0
    while roots:
        src = mods[roots.pop()]
        src.dep_sort_idx = n_sorted
        n_sorted += 1
        for dst in src.deps:
            users[dst.idx] -= 1
            if users[dst.idx] == 0:
                roots.append(dst.idx)
    if n_sorted < len(mods):
        lines, cyclic, complete = _report_cycles(mods, users)
        dm.cycles = cyclic
        raise CycleError(lines, complete)
    for d in mods:
        d.deps.sort(key=lambda x: x.dep_sort_idx)


CYCLE_WALK_BUDGET = 1_000_000   # steps the cycle report may take before it stops
Vertex = tuple[int, "Vertex | None", int]   # struct vertex: module index, parent, depth


def _report_cycles(mods: list[DepmodMod], users: list[int]
                   ) -> tuple[list[str], list[str], bool]:
    """depmod_report_cycles() and depmod_report_cycles_from_root(): (depmod's lines, the
    names of the modules in cycles, whether the listing is complete).

    Every module left with users is a root, in array order; from each, a depth-first walk
    over its dependencies (pushed in order, popped last first) prints a path that returns
    to the root as ``Cycle detected: r -> ... -> r`` and drops the path's modules from the
    roots; a module without dependencies is dropped too.  As in kmod, 'visited' outlives
    one walk, so a root reached by an earlier walk prints ``Cycle detected: r`` alone.
    kmod never finishes when a walk meets a cycle that does not pass through its root;
    here such a path is not followed again and a module of another cycle is not marked
    visited, so that cycle is listed from its own root.  A branch that cannot lead back to
    the root is walked once (what it does is done), and the walk stops after
    CYCLE_WALK_BUDGET steps (complete = False: the count is then every module in a
    cycle)."""
    comp = _components(mods, users)
    roots = _RootList([i for i, u in enumerate(users) if u > 0])
    visited = [False] * len(mods)
    settled = [False] * len(mods)   # walked from a vertex that cannot reach its root
    loop_set: dict[str, None] = {}
    lines: list[str] = []
    budget = CYCLE_WALK_BUDGET
    while roots.head is not None and budget > 0:
        root = roots.head
        roots.remove(root)
        stack: list[Vertex] = [(root, None, 0)]
        while stack and budget > 0:
            vertex = stack.pop()
            m, parent, depth = vertex
            if visited[m] and m == root:
                # depmod_report_one_cycle(): the path from the root to here
                path = []
                while parent is not None:
                    path.append(parent[0])
                    parent = parent[1]
                path.reverse()
                for i in path:
                    loop_set.setdefault(mods[i].name)
                    roots.remove(i)
                lines.append("Cycle detected: "
                             + "".join(mods[i].name + " -> " for i in path) + mods[m].name)
                budget -= depth
                continue
            reach = comp[root] >= 0 and comp[m] == comp[root]
            if reach or comp[m] < 0:
                visited[m] = True
            if not mods[m].deps:
                roots.remove(m)
                continue
            if not reach:
                if settled[m]:
                    continue
                settled[m] = True
            elif m != root:
                budget -= depth
                if _on_path(parent, m):
                    continue
            budget -= 1
            stack.extend((dep.idx, vertex, depth + 1) for dep in mods[m].deps)
    complete = budget > 0
    if not complete:
        for i, d in enumerate(mods):
            if comp[i] >= 0:
                loop_set.setdefault(d.name)
    lines.append(f"Found {len(loop_set)} modules in dependency cycles!")
    return lines, list(loop_set), complete


class _RootList:
    """depmod's list of roots: kmod's circular list, where kmod_list_remove_data() returns
    the removed entry's successor as the new head (so the next root is not always the
    first one left in array order)."""

    def __init__(self, items: list[int]):
        self.head: int | None = items[0] if items else None
        self.nxt = {a: b for a, b in zip(items, items[1:] + items[:1], strict=True)}
        self.prv = {b: a for a, b in self.nxt.items()}

    def remove(self, i: int) -> None:
        nxt = self.nxt.pop(i, None)
        if nxt is None:
            return
        prv = self.prv.pop(i)
        if nxt == i:
            self.head = None
            return
        self.nxt[prv] = nxt
        self.prv[nxt] = prv
        self.head = nxt


def _on_path(vertex: Vertex | None, m: int) -> bool:
    while vertex is not None:
        if vertex[0] == m:
            return True
        vertex = vertex[1]
    return False


def _components(mods: list[DepmodMod], users: list[int]) -> list[int]:
    """Tarjan's strongly connected components of the modules left with users: a
    component number for a module in a cycle (one with a dependency on itself
    included), -1 for the others."""
    n = len(mods)
    index = [-1] * n
    low = [0] * n
    on_stack = [False] * n
    comp = [-1] * n
    stack: list[int] = []
    counter = ncomp = 0
    for start in range(n):
        if users[start] <= 0 or index[start] >= 0:
            continue
        work = [(start, 0)]
        while work:
            v, k = work.pop()
            if k == 0:
                index[v] = low[v] = counter
                counter += 1
                stack.append(v)
                on_stack[v] = True
            deps = mods[v].deps
            if k < len(deps):
                work.append((v, k + 1))
                w = deps[k].idx
                if index[w] < 0:
                    work.append((w, 0))
                elif on_stack[w]:
                    low[v] = min(low[v], index[w])
                continue
            if low[v] == index[v]:
                members = []
                while True:
                    w = stack.pop()
                    on_stack[w] = False
                    members.append(w)
                    if w == v:
                        break
                if len(members) > 1 or mods[v] in mods[v].deps:
                    for w in members:
                        comp[w] = ncomp
                    ncomp += 1
            if work:
                u = work[-1][0]
                low[u] = min(low[u], low[v])
    return comp
