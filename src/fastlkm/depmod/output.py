"""depmod's outputs, every file in its order (depmod_output() and its output_*() in
kmod's tools/depmod.c): ``modules.dep`` and ``modules.symbols`` in kmod's orders, the
other text files, and kmod's binary indexes of them.

``modules.symbols`` follows the iteration order of kmod's symbol hash: bucket by bucket
(hash_superfast() of the name, 2048 buckets), names sorted within a bucket.
"""

from __future__ import annotations

from itertools import repeat

from fastlkm.depmod.compute import SYMBOL_HASH_BUCKETS, Depmod, DepmodMod, hash_order
from fastlkm.depmod.kmod_index import Index
from fastlkm.kernel.modname import modname


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


def _dep_index(dm: Depmod, warnings: list[str] | None = None) -> Index:
    """output_deps_bin(); with *warnings* (depmod -w), a line per duplicate."""
    ix = Index()
    for d, line in zip(dm.mods, dep_lines(dm), strict=True):
        if ix.insert(d.name, line, d.idx) and warnings is not None:
            warnings.append(f"duplicate module deps:\n{line}")
    return ix


def _alias_index(dm: Depmod, warn_dups: bool = False) -> tuple[Index, list[str]]:
    """output_aliases_bin(): (index, warnings); with *warn_dups* (depmod -w) the
    duplicates too, in the order depmod meets them."""
    keys: list[str] = []
    values: list[str] = []
    prios: list[int] = []
    events: list[str | int] = []   # a warning, or the position of an insertion
    for d in dm.mods:
        for v in d.module.aliases:
            a = alias_normalize(v)
            if a is None:
                events.append(f"Unmatched bracket in {v}")
                continue
            events.append(len(keys))
            keys.append(a)
            values.append(d.name)
            prios.append(d.idx)
    ix = Index()
    dups = ix.insert_many(keys, values, prios)
    warnings = [e if isinstance(e, str) else f"duplicate module alias:\n{keys[e]} {values[e]}"
                for e in events if isinstance(e, str) or (warn_dups and dups[e])]
    return ix, warnings


def _symbol_index(dm: Depmod, warnings: list[str] | None = None) -> Index:
    ix = Index()
    for n, owner in module_symbols(dm):
        if ix.insert("symbol:" + n, owner.name, owner.idx) and warnings is not None:
            warnings.append(f"duplicate module syms:\nsymbol:{n} {owner.name}")
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


def depmod_files(dm: Depmod, builtin: bytes | str | None = None,
                 builtin_modinfo: bytes | str | None = None, index_version: int = 34,
                 warn_dups: bool = False) -> tuple[dict[str, bytes], list[str]]:
    """Every file depmod writes, in its order, as kmod *index_version* (30 or 34) writes
    its binary indexes; kmod 30 writes no modules.weakdep.  *builtin* and
    *builtin_modinfo* are the files read beside the modules, or why they could not be
    read.  (files, warnings in the order depmod writes them; with *warn_dups* (-w), the
    duplicates in the indexes)"""
    warnings: list[str] = []
    dups: list[str] | None = warnings if warn_dups else None
    files = {"modules.dep": modules_dep(dm),
             "modules.dep.bin": _dep_index(dm, dups).write(index_version),
             "modules.alias": modules_alias(dm)}
    alias_ix, w = _alias_index(dm, warn_dups)
    warnings += w
    files["modules.alias.bin"] = alias_ix.write(index_version)
    files["modules.softdep"] = modules_softdep(dm)
    if index_version >= 34:
        files["modules.weakdep"] = modules_weakdep(dm)
    files["modules.symbols"] = modules_symbols(dm)
    files["modules.symbols.bin"] = _symbol_index(dm, dups).write(index_version)
    for out, data, index in (("modules.builtin.bin", builtin, builtin_index),
                             ("modules.builtin.alias.bin", builtin_modinfo,
                              builtin_alias_index)):
        if isinstance(data, bytes):
            ix, w = index(data)
            warnings += w
            files[out] = ix.write(index_version)
        else:
            # as kmod: without its input the index is written empty (and the input's
            # absence, a str, is a warning in its turn)
            warnings += [data] if data is not None else []
            files[out] = b""
    devname, w = modules_devname(dm)
    warnings += w
    files["modules.devname"] = devname
    return files, warnings
