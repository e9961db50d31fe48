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
from fastlkm.outputs.kmod_index import Index

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
          kmod_compat: bool = False, sym_prefix: str = "",
          report: list[str] | None = None, check_symvers: bool = False,
          moddir: str | None = None) -> Depmod:
    """Compute what depmod computes.  *modules* in the order depmod found them (readdir
    order); *order* the lines of modules.order; *kernel_exports* given as depmod's
    -E/-F would (they only add CRCs and fake symbols: they are never dependencies).
    With *report* (depmod -e), unknown symbols (and, with *check_symvers*, CRC
    mismatches) are appended with depmod's own words; paths shown under *moddir*."""
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
        path = d.relpath if moddir is None or d.relpath.startswith("/") else \
            f"{moddir}/{d.relpath}"
        for name, weak, crc in dependency_symbols_full(d.module):
            key = name[1:] if name.startswith(".") else name
            if sym_prefix and key.startswith(sym_prefix):
                key = key[1:]
            hit = symbols.get(key)
            if hit is None:
                if report is not None and not weak:
                    report.append(f"{path} needs unknown symbol {name}")
                continue
            if report is not None and check_symvers and hit[1] != crc and not weak:
                report.append(f"{path} disagrees about version of symbol {name}")
            if hit[0] is None:
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
    return [n for n, _, _ in dependency_symbols_full(m)]


def dependency_symbols_full(m: Module) -> list[tuple[str, bool, int]]:
    """(name, weak, expected CRC or 0) of each dependency symbol, in kmod's order."""
    out = [(i.name, i.weak, i.crc or 0) for i in m.imports]
    seen = {i.name for i in m.imports}
    out += [(n, False, c) for n, c in m.versions if n not in seen]
    return out


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


def _info(d: DepmodMod, key: str) -> list[str]:
    return [v for k, v in d.module.modinfo if k == key]


def modules_alias(dm: Depmod) -> bytes:
    out = ["# Aliases extracted from modules themselves.\n"]
    for d in dm.mods:
        out.extend(f"alias {v} {d.name}\n" for v in _info(d, "alias"))
    return "".join(out).encode()


def modules_softdep(dm: Depmod) -> bytes:
    out = ["# Soft dependencies extracted from modules themselves.\n"]
    for d in dm.mods:
        out.extend(f"softdep {d.name} {v}\n" for v in _info(d, "softdep"))
    return "".join(out).encode()


def modules_weakdep(dm: Depmod) -> bytes:
    out = ["# Weak dependencies extracted from modules themselves.\n"]
    for d in dm.mods:
        out.extend(f"weakdep {d.name} {v}\n" for v in _info(d, "weakdep"))
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
        devname = None
        kind = ""
        major = minor = 0
        for v in _info(d, "alias"):
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
    for d in dm.mods:
        deps = all_dependencies(d) if d.deps else []
        ix.insert(d.name, d.relpath + ":" + "".join(" " + x.relpath for x in deps), d.idx)
    return ix


def _alias_index(dm: Depmod) -> tuple[Index, list[str]]:
    ix = Index()
    warnings = []
    for d in dm.mods:
        for v in _info(d, "alias"):
            a = alias_normalize(v)
            if a is None:
                warnings.append(f"Unmatched bracket in {v}")
                continue
            ix.insert(a, d.name, d.idx)
    return ix, warnings


def _symbol_index(dm: Depmod) -> Index:
    ix = Index()
    names = [n for n, (owner, _) in dm.symbols.items() if owner is not None]
    for n in hash_order(names, SYMBOL_HASH_BUCKETS):
        owner = dm.symbols[n][0]
        assert owner is not None
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
        while pos < n and modinfo[pos] not in (end, 0):
            pos += 1
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
