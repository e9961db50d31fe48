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

from collections.abc import Sequence
from itertools import repeat
from operator import itemgetter
from typing import TYPE_CHECKING

from fastlkm.errors import CycleError
from fastlkm.kernel.modfiles import modname
from fastlkm.kernel.scan import DEP_DOTTED, DEP_WEAK, DepmodModule, from_module
from fastlkm.outputs.kmod_index import Index

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
    from fastlkm.outputs._kmod_index import (  # type: ignore[import-not-found]
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

    __slots__ = ("cycles", "lines", "mods", "owned", "symbols")

    def __init__(self, mods: list[DepmodMod],
                 symbols: dict[str, tuple[DepmodMod | None, int]]) -> None:
        self.mods = mods
        self.symbols = symbols                           # name -> (owner, crc)
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
    """Compute what depmod computes.  *modules* in the order depmod found them (readdir
    order); *order* the lines of modules.order; *kernel_exports* given as depmod's
    -E/-F would (they only add CRCs and fake symbols: they are never dependencies).
    With *report* (depmod -e), unknown symbols (and, with *check_symvers*, CRC
    mismatches) are appended with depmod's own words; paths shown under *moddir*."""
    by_name: dict[str, DepmodMod] = {}
    for m in modules:
        if not isinstance(m, DepmodModule):   # the reference decoder's Module
            m = from_module(m)
        dm = DepmodMod(m, m.path, modname(m.path))
        by_name.setdefault(dm.name, dm)
    # depmod_modules_build_array(): hash iteration order, then stable sort by modules.order
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
        if kmod_compat and _kmod_reads_other_names(m):
            names, crcs = m.kmod_symbols, repeat(0)
        else:
            names, crcs = m.exports, m.crcs
        if sym_prefix:
            for n, c in zip(names, crcs, strict=False):
                add(n, d, c, False)
        else:
            symbols.update(zip(names, zip(repeat(d), crcs, strict=False), strict=False))
    # depmod_load_dependencies(): a module depends on the owner of each symbol it needs,
    # in the order of first need
    get = symbols.get
    for d in mods:
        m = d.module
        # (DEP_DOTTED is the high flag: a module without dotted names has max() below it)
        if report is None and not sym_prefix and not (m.flags and max(m.flags) >= DEP_DOTTED):
            # the same, at the speed of the builtins that iterate
            owners = dict.fromkeys(map(_owner, filter(None, map(get, m.deps))))
            owners.pop(None, None)
            d.deps = list(owners)
            for owner in d.deps:
                owner.users += 1
            continue
        deps = d.deps
        crcs = memoryview(m.dep_crcs).cast("B")
        for i, (name, flags) in enumerate(zip(m.deps, m.flags, strict=True)):
            crc = int.from_bytes(crcs[4 * i:4 * i + 4], "little")
            weak = flags & DEP_WEAK
            key = name[1:] if name[:1] == "." else name
            if sym_prefix and key.startswith(sym_prefix):
                key = key[1:]
            hit = get(key)
            if hit is None:
                if report is not None and not weak:
                    report.append(f"{_shown(d, moddir)} needs unknown symbol {name}")
                continue
            if report is not None and check_symvers and hit[1] != crc and not weak:
                report.append(f"{_shown(d, moddir)} disagrees about version of symbol {name}")
            owner = hit[0]
            if owner is not None and owner not in deps:
                deps.append(owner)
                owner.users += 1
    dm = Depmod(mods, symbols)
    _calculate_dependencies(dm)
    return dm


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


def _calculate_dependencies(dm: Depmod) -> None:
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


def dep_lines(dm: Depmod) -> list[str]:
    """Each module's modules.dep line without its newline, in dm.mods order."""
    if dm.lines is None:
        dm.lines = [d.relpath + ":" + "".join(" " + x.relpath for x in all_dependencies(d))
                    if d.deps else d.relpath + ":" for d in dm.mods]
    return dm.lines


def modules_dep(dm: Depmod) -> bytes:
    return "".join(line + "\n" for line in dep_lines(dm)).encode()


def module_symbols(dm: Depmod) -> list[tuple[str, DepmodMod]]:
    """(name, owner) of every symbol a module exports, in kmod's symbol-hash order."""
    if dm.owned is None:
        owners = {n: owner for n, (owner, _) in dm.symbols.items() if owner is not None}
        dm.owned = [(n, owners[n]) for n in hash_order(list(owners), SYMBOL_HASH_BUCKETS)]
    return dm.owned


def modules_symbols(dm: Depmod) -> bytes:
    out = ["# Aliases for symbols, used by symbol_request().\n"]
    out += [f"alias symbol:{n} {owner.name}\n" for n, owner in module_symbols(dm)]
    return "".join(out).encode()


# --- every output file ------------------------------------------------------------------


def alias_normalize(alias: str) -> str | None:
    """alias_normalize(): '-' -> '_' outside [...] ranges; None on an unmatched bracket."""
    if "[" not in alias and "]" not in alias:
        return alias.replace("-", "_")
    out = []
    i = 0
    while i < len(alias):
        c = alias[i]
        if c == "-":
            out.append("_")
        elif c == "]":
            return None
        elif c == "[":
            j = alias.find("]", i)
            if j < 0:
                return None
            out.append(alias[i:j + 1])
            i = j
        else:
            out.append(c)
        i += 1
    return "".join(out)


def modules_alias(dm: Depmod) -> bytes:
    out = ["# Aliases extracted from modules themselves.\n"]
    for d in dm.mods:
        out.extend(f"alias {v} {d.name}\n" for v in d.module.aliases)
    return "".join(out).encode()


def modules_softdep(dm: Depmod) -> bytes:
    out = ["# Soft dependencies extracted from modules themselves.\n"]
    for d in dm.mods:
        out.extend(f"softdep {d.name} {v}\n" for v in d.module.softdeps)
    return "".join(out).encode()


def modules_weakdep(dm: Depmod) -> bytes:
    out = ["# Weak dependencies extracted from modules themselves.\n"]
    for d in dm.mods:
        out.extend(f"weakdep {d.name} {v}\n" for v in d.module.weakdeps)
    return "".join(out).encode()


def _major_minor(value: str, prefix: str) -> tuple[int, int] | None:
    """sscanf(value, "PREFIX%u-%u") == 2"""
    if not value.startswith(prefix):
        return None
    rest = value[len(prefix):]
    a, sep, b = rest.partition("-")
    da = len(a) - len(a.lstrip("0123456789"))
    if not a[:1].isdigit() or da != len(a) or not sep:
        return None
    digits = b[:len(b) - len(b.lstrip("0123456789"))] if b[:1].isdigit() else ""
    if not digits:
        return None
    return int(a) & 0xFFFFFFFF, int(digits) & 0xFFFFFFFF


def modules_devname(dm: Depmod) -> tuple[bytes, list[str]]:
    """output_devname(): (file, warnings) -- the file is empty when no module has one."""
    out: list[str] = []
    warnings: list[str] = []
    for d in dm.mods:
        aliases = d.module.aliases
        if not any(map(str.startswith, aliases, repeat("devname:"))):
            continue   # nothing to write or warn about
        devname = None
        kind = ""
        major = minor = 0
        for v in aliases:
            if v.startswith("devname:"):
                devname = v[len("devname:"):]
            elif (mm := _major_minor(v, "char-major-")) is not None:
                kind, (major, minor) = "c", mm
            elif (mm := _major_minor(v, "block-major-")) is not None:
                kind, (major, minor) = "b", mm
            if kind and devname is not None:
                break
        if devname is not None:
            if kind:
                if not out:
                    out.append("# Device nodes to trigger on-demand module loading.\n")
                out.append(f"{d.name} {devname} {kind}{major}:{minor}\n")
            else:
                warnings.append(f"Module '{d.name}' has devname ({devname}) but lacks major "
                                "and minor information. Ignoring.")
    return "".join(out).encode(), warnings


def _dep_index(dm: Depmod) -> Index:
    ix = Index()
    for d, line in zip(dm.mods, dep_lines(dm), strict=True):
        ix.insert(d.name, line, d.idx)
    return ix


def _alias_index(dm: Depmod) -> tuple[Index, list[str]]:
    keys: list[str] = []
    values: list[str] = []
    prios: list[int] = []
    warnings = []
    for d in dm.mods:
        for v in d.module.aliases:
            a = alias_normalize(v)
            if a is None:
                warnings.append(f"Unmatched bracket in {v}")
                continue
            keys.append(a)
            values.append(d.name)
            prios.append(d.idx)
    ix = Index()
    ix.insert_many(keys, values, prios)
    return ix, warnings


def _symbol_index(dm: Depmod) -> Index:
    ix = Index()
    for n, owner in module_symbols(dm):
        ix.insert("symbol:" + n, owner.name, owner.idx)
    return ix


def builtin_index(builtin: bytes) -> tuple[Index, list[str]]:
    """output_builtin_bin(): modules.builtin, one path per line."""
    ix = Index()
    warnings = []
    for line in builtin.decode("utf-8", "replace").splitlines(keepends=True):
        if not line[:1].isalpha():
            warnings.append(f"Invalid modules.builtin line: {line}")
            continue
        ix.insert(modname(line.rstrip("\n")), "", 0)
    return ix, warnings


def builtin_alias_index(modinfo: bytes) -> tuple[Index, list[str]]:
    """output_builtin_alias_bin(): modules.builtin.modinfo, 'modname.key=value' strings
    separated by NULs, read as depmod's stream reader does."""
    ix = Index()
    warnings = []
    pos, n = 0, len(modinfo)

    def upto(end: int) -> tuple[str, bool]:
        """flush_stream_to(): bytes up to *end*, a NUL or EOF; (text, stopped at end)"""
        nonlocal pos
        start = pos
        nul = modinfo.find(b"\0", pos)
        if nul < 0:
            nul = n
        stop = modinfo.find(end.to_bytes(1, "little"), pos, nul) if end else -1
        pos = stop if stop >= 0 else nul
        hit = pos < n and modinfo[pos] == end
        text = modinfo[start:pos].decode("utf-8", "replace")
        pos += 1 if pos < n else 0
        return text, hit

    while pos < n:
        mod, ok = upto(ord("."))
        if not ok or not mod:
            continue
        key, ok = upto(ord("="))
        if not ok or key != "alias":
            # flush_stream(): after a key that ended at a NUL this swallows the next entry
            upto(0)
            continue
        value, ok = upto(0)
        if not ok or not value:
            continue
        a = alias_normalize(value)
        if a is None:
            warnings.append(f"Unmatched bracket in {value}")
            continue
        ix.insert(a, mod, 0)
    return ix, warnings


def depmod_files(dm: Depmod, builtin: bytes | None = None, builtin_modinfo: bytes | None = None,
                 index_version: int = 34) -> tuple[dict[str, bytes], list[str]]:
    """Every file depmod writes, in its order, as kmod *index_version* (30 or 34) writes
    its binary indexes; kmod 30 writes no modules.weakdep.  (files, warnings)"""
    warnings: list[str] = []
    alias_ix, w = _alias_index(dm)
    warnings += w
    devname, w = modules_devname(dm)
    warnings += w
    files = {
        "modules.dep": modules_dep(dm),
        "modules.dep.bin": _dep_index(dm).write(index_version),
        "modules.alias": modules_alias(dm),
        "modules.alias.bin": alias_ix.write(index_version),
        "modules.softdep": modules_softdep(dm),
    }
    if index_version >= 34:
        files["modules.weakdep"] = modules_weakdep(dm)
    files["modules.symbols"] = modules_symbols(dm)
    files["modules.symbols.bin"] = _symbol_index(dm).write(index_version)
    if builtin is not None:
        ix, w = builtin_index(builtin)
        warnings += w
        files["modules.builtin.bin"] = ix.write(index_version)
    if builtin_modinfo is not None:
        ix, w = builtin_alias_index(builtin_modinfo)
        warnings += w
        files["modules.builtin.alias.bin"] = ix.write(index_version)
    files["modules.devname"] = devname
    return files, warnings
