"""depmod's text outputs, ``modules.dep`` and ``modules.symbols``, as kmod writes them.

Byte-identical output needs kmod's own orders, which this module reproduces:
- modules are ordered by ``modules.order``; those it does not list follow in the iteration
  order of kmod's name hash (depmod_modules_sort(), a stable sort);
- a module's dependencies are the owners of its undefined symbols, and are printed in a
  topological order computed as depmod_calculate_dependencies() does;
- ``modules.symbols`` follows the iteration order of kmod's symbol hash: bucket by bucket
  (hash_superfast() of the name, 2048 buckets), names sorted within a bucket.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fastlkm.errors import FastlkmError
from fastlkm.kernel.facts import Export, Module
from fastlkm.kernel.module import modname

SYMBOL_HASH_BUCKETS = 2048   # hash_new(2048, ...) for depmod->symbols
MODULE_HASH_BUCKETS = 512    # hash_new(512, ...) for depmod->modules_by_name


def hash_superfast(key: bytes) -> int:
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


def hash_order(names: list[str], buckets: int) -> list[str]:
    """The order in which kmod's hash_iter visits *names*."""
    keyed = [(hash_superfast(n.encode()) & (buckets - 1), n.encode(), n) for n in names]
    keyed.sort()
    return [n for _, _, n in keyed]


@dataclass
class DepmodMod:
    """One module as depmod tracks it (struct mod in kmod's depmod.c)."""

    module: Module
    relpath: str
    name: str
    idx: int = 0
    users: int = 0
    deps: list[DepmodMod] = field(default_factory=list)
    dep_sort_idx: int = 0x7FFFFFFF


@dataclass
class Depmod:
    """depmod's computation over a set of modules, for the text outputs and the indexes."""

    mods: list[DepmodMod]
    symbols: dict[str, tuple[DepmodMod | None, int]]   # name -> (owner, crc)
    cycles: list[str] = field(default_factory=list)


def uncompressed_relpath(relpath: str) -> str:
    """relpath with its compression suffix dropped, as kmod's uncrelpath."""
    d, _, base = relpath.rpartition("/")
    n = modname(base)
    cut = (len(d) + 1 if d else 0) + len(n) + len(".ko")
    return relpath[:cut]


def build(modules: list[Module], order: list[str], kernel_exports: list[Export] | None = None,
          kmod_compat: bool = False, sym_prefix: str = "") -> Depmod:
    """Compute what depmod computes.  *modules* in the order depmod found them (readdir
    order); *order* the lines of modules.order; *kernel_exports* given as depmod's
    -E/-F would (they only add CRCs and fake symbols: they are never dependencies)."""
    by_name: dict[str, DepmodMod] = {}
    for m in modules:
        dm = DepmodMod(m, m.path, modname(m.path))
        by_name.setdefault(dm.name, dm)
    # depmod_modules_build_array(): hash iteration order, then stable sort by modules.order
    mods = [by_name[n] for n in hash_order(list(by_name), MODULE_HASH_BUCKETS)]
    if order:
        by_unc = {uncompressed_relpath(d.relpath): d for d in mods}
        total = len(order) + 1
        sort_idx = {id(d): 1 for d in mods}
        for i, line in enumerate(order, 1):
            d = by_unc.get(line)
            if d is not None:
                sort_idx[id(d)] = i - total
        mods.sort(key=lambda d: sort_idx[id(d)])
    for i, d in enumerate(mods):
        d.idx = i

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
    # depmod_load_modules(): later modules overwrite earlier owners of a name
    for d in mods:
        m = d.module
        if kmod_compat and m.kmod_symbols is not None:
            for n in m.kmod_symbols:
                add(n, d, 0, False)
        else:
            for e in m.exports:
                add(e.name, d, e.crc or 0, False)
    # depmod_load_dependencies()
    for d in mods:
        for name in dependency_symbols(d.module):
            key = name[1:] if name.startswith(".") else name
            if sym_prefix and key.startswith(sym_prefix):
                key = key[1:]
            hit = symbols.get(key)
            if hit is None or hit[0] is None:
                continue
            owner = hit[0]
            if owner not in d.deps:
                d.deps.append(owner)
                owner.users += 1
    dm = Depmod(mods, symbols)
    _calculate_dependencies(dm)
    return dm


def dependency_symbols(m: Module) -> list[str]:
    """kmod_elf_get_dependency_symbols(): the undefined symbols, then the __versions
    entries no undefined symbol named (module_layout)."""
    names = [i.name for i in m.imports]
    seen = set(names)
    extra = [n for n, _ in m.versions if n not in seen]
    return names + extra


def _calculate_dependencies(dm: Depmod) -> None:
    """depmod_calculate_dependencies(): Kahn's sort with a stack of roots."""
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
        dm.cycles = [mods[i].name for i, u in enumerate(users) if u > 0]
        raise FastlkmError(f"found {len(dm.cycles)} modules in dependency cycles: "
                           + ", ".join(sorted(dm.cycles)[:10]))
    for d in mods:
        d.deps.sort(key=lambda x: x.dep_sort_idx)


def all_dependencies(d: DepmodMod) -> list[DepmodMod]:
    """mod_get_all_sorted_dependencies(): the transitive closure in topological order."""
    seen: set[int] = set()
    out: list[DepmodMod] = []
    stack = list(reversed(d.deps))
    while stack:
        x = stack.pop()
        if x.idx in seen:
            continue
        seen.add(x.idx)
        out.append(x)
        stack.extend(reversed(x.deps))
    out.sort(key=lambda x: x.dep_sort_idx)
    return out


def modules_dep(dm: Depmod) -> bytes:
    lines = []
    for d in dm.mods:
        deps = all_dependencies(d) if d.deps else []
        lines.append(d.relpath + ":" + "".join(" " + x.relpath for x in deps) + "\n")
    return "".join(lines).encode()


def modules_symbols(dm: Depmod) -> bytes:
    out = ["# Aliases for symbols, used by symbol_request().\n"]
    names = [n for n, (owner, _) in dm.symbols.items() if owner is not None]
    for n in hash_order(names, SYMBOL_HASH_BUCKETS):
        out.append(f"alias symbol:{n} {dm.symbols[n][0].name}\n")   # type: ignore[union-attr]
    return "".join(out).encode()
