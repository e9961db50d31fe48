"""The kernel's module loader, over facts: what load_module() would say for each module.

Mirrors kernel/module/main.c (Linux 6.x/7.x):
- find_symbol(): vmlinux's tables first (``__ksymtab``, then ``__ksymtab_gpl``), then the
  loaded modules, newest first; a GPL-only table (or a GPL-only flag in ``__kflagstab``)
  is invisible to a module whose license is not GPL-compatible, and the search goes on;
- resolve_symbol(): inherit_taint(), check_version() (modversions), then
  verify_namespace_is_imported();
- simplify_symbols(): every undefined symbol in symbol-table order; an unresolved weak
  symbol or one the architecture ignores is fine; every failure is reported and the last
  error code is the module's;
- verify_exported_symbols(): exporting a symbol someone already exports fails.
Each message is the kernel's own text.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from fastlkm.elf.structs import EM_386, EM_PPC64, EM_X86_64
from fastlkm.kernel.facts import KSYM_FLAG_PROTECTED, Export, Kernel, License, Module
from fastlkm.kernel.modinfo import license_is_gpl_compatible

ENOENT, ENOEXEC, EACCES, EEXIST, EINVAL = 2, 8, 13, 17, 22


@dataclass(frozen=True, slots=True)
class Message:
    """One line of the kernel log, with what it is about."""

    text: str            # exactly as the kernel prints it, without the timestamp
    kind: str            # unknown_symbol, version, namespace, gpl_taint, duplicate, ...
    symbol: str | None = None
    error: bool = True   # False for warnings that do not stop the load


@dataclass
class LoadResult:
    module: str
    path: str
    ok: bool
    err: int = 0
    messages: list[Message] = field(default_factory=list)
    lookups: int = 0
    resolved: int = 0

    @property
    def failures(self) -> list[Message]:
        return [m for m in self.messages if m.error]


@dataclass
class LoadedModule:
    """A module the model has loaded (struct module, as far as symbol search cares)."""

    name: str
    module: Module
    seq: int                         # load sequence number; the newest is searched first
    proprietary: bool
    using_gplonly_symbols: bool = False


def mod_strncmp_eq(a: str, b: str) -> bool:
    return a.replace("-", "_") == b.replace("-", "_")


def module_match(modname: str, patterns: str) -> bool:
    """Does *modname* match a comma-separated list of names with tail globs
    (module_match()/verify_module_namespace(), '-' and '_' alike)?"""
    m = modname.replace("-", "_")
    for pat in patterns.split(","):
        if not pat:
            continue
        p = pat.replace("-", "_")
        if p.endswith("*"):
            if m.startswith(p[:-1]):
                return True
        elif m == p:
            return True
    return False


def ignore_undef_symbol(machine: int, name: str) -> bool:
    """ignore_undef_symbol(): x86 toolchains leave an unreferenced _GLOBAL_OFFSET_TABLE_."""
    return machine in (EM_386, EM_X86_64) and name == "_GLOBAL_OFFSET_TABLE_"


class SymbolSearch(Protocol):
    """find_symbol() over vmlinux and the loaded modules; strategies plug in here."""

    def find(self, name: str, gplok: bool) -> tuple[LoadedModule | None, Export] | None: ...
    def add(self, mod: LoadedModule) -> None: ...
    def remove(self, mod: LoadedModule) -> None: ...


class DictSearch:
    """The reference search: a dict from name to its candidates in search order."""

    def __init__(self, kernel: Kernel):
        # name -> (owner or None, export); vmlinux first, then modules by load sequence
        self._index: dict[str, list[tuple[LoadedModule | None, Export]]] = {}
        for e in kernel.exports:
            self._index.setdefault(e.name, []).append((None, e))

    def find(self, name: str, gplok: bool) -> tuple[LoadedModule | None, Export] | None:
        cands = self._index.get(name)
        if not cands:
            return None
        best = None
        for owner, e in cands:
            if not gplok and e.license == License.GPL_ONLY:
                continue
            if owner is None:
                return owner, e                      # vmlinux is searched first
            if best is None or owner.seq > best[0].seq:  # type: ignore[union-attr]
                best = (owner, e)
        return best

    def add(self, mod: LoadedModule) -> None:
        for e in mod.module.exports:
            self._index.setdefault(e.name, []).append((mod, e))

    def remove(self, mod: LoadedModule) -> None:
        for e in mod.module.exports:
            lst = self._index.get(e.name, [])
            lst[:] = [c for c in lst if c[0] is not mod]


class Loader:
    """A running kernel as far as module symbol resolution goes."""

    def __init__(self, kernel: Kernel, search: SymbolSearch | None = None):
        self.kernel = kernel
        self.modversions = kernel.modversions
        self.force_load = kernel.config.get("CONFIG_MODULE_FORCE_LOAD", "y") == "y" \
            if kernel.config else True
        self.allow_missing_ns = kernel.config.get(
            "CONFIG_MODULE_ALLOW_MISSING_NAMESPACE_IMPORTS") == "y"
        self.loaded: dict[str, LoadedModule] = {}
        self._seq = 0
        self.tainted_proprietary = False
        # since the load_module() split of 6.4 (module_augment_kernel_taints()) the
        # proprietary taint is sampled before the license check, so the module that sets
        # it also gets the older "module license taints kernel." line; seen under QEMU on
        # Debian's 6.12 and 7.2, and not on 6.1 (tests/loader/test_kernel_verdicts.py)
        self.license_taint_twice = _major_minor(kernel.release) >= (6, 4)
        self.tainted_forced = False
        self.search: SymbolSearch = search if search is not None else DictSearch(kernel)

    def find_symbol(self, name: str, gplok: bool) -> tuple[LoadedModule | None, Export] | None:
        return self.search.find(name, gplok)

    def modprobe(self, modules: list[Module], wanted: list[str] | None = None
                 ) -> list[LoadResult]:
        """Load *wanted* (default: all of *modules*) with their dependencies, each after
        what it needs, as modprobe inserts them (load_order()); a result per load."""
        return [self.load(m) for m in load_order(modules, wanted, self.kernel)]

    # --- load_module ------------------------------------------------------------------

    def load(self, module: Module) -> LoadResult:
        name = module.info1("name") or module.name
        res = LoadResult(name, module.path, ok=False)
        msgs = res.messages
        if name in self.loaded:
            res.err = -EEXIST
            msgs.append(Message(f"{name}: module is already loaded", "already_loaded"))
            return res
        proprietary = self._check_modinfo(module, name, res)
        if res.err:
            return res
        mod = LoadedModule(name, module, self._seq + 1, proprietary)
        err = self._simplify_symbols(module, mod, res)
        if err == 0:
            err = self._verify_exported_symbols(module, name, res)
        res.err = err
        if err:
            return res
        self._seq += 1
        self.loaded[name] = mod
        self.search.add(mod)
        res.ok = True
        return res

    def unload(self, name: str) -> None:
        self.search.remove(self.loaded.pop(name))

    def _taint_forced(self, name: str, reason: str, res: LoadResult) -> int:
        """try_to_force_load()"""
        if not self.force_load:
            return -ENOEXEC
        if not self.tainted_forced:
            res.messages.append(Message(f"{name}: {reason}: kernel tainted.", "forced",
                                        error=False))
        self.tainted_forced = True
        return 0

    def _check_modinfo(self, module: Module, name: str, res: LoadResult) -> bool:
        """check_modinfo() and module_license_taint_check(); returns 'proprietary'."""
        kmagic = self.kernel.vermagic
        magic = module.info1("vermagic")
        if magic is None:
            err = self._taint_forced(name, "bad vermagic", res)
            if err:
                res.err = err
                return False
        elif kmagic is not None and not same_magic(magic, kmagic,
                                                   module.has_versions and self.modversions):
            res.messages.append(Message(f"{name}: version magic '{magic}' should be "
                                        f"'{kmagic}'", "vermagic"))
            res.err = -ENOEXEC
            return False
        lic = module.license or "unspecified"
        proprietary = not license_is_gpl_compatible(lic)
        if name in ("ndiswrapper", "driverloader"):
            proprietary = True
        if proprietary:
            if not self.tainted_proprietary:
                res.messages.append(Message(f"{name}: module license '{lic}' taints kernel.",
                                            "license_taint", error=False))
                if self.license_taint_twice:
                    res.messages.append(Message(f"{name}: module license taints kernel.",
                                                "license_taint", error=False))
            self.tainted_proprietary = True
        return proprietary

    def _simplify_symbols(self, module: Module, mod: LoadedModule, res: LoadResult) -> int:
        ret = 0
        name = mod.name
        machine = module.machine
        for c in module.common:
            res.messages.append(Message(f"{name}: please compile with -fno-common", "common",
                                        c))
            ret = -ENOEXEC
        for imp in module.imports:
            sym = imp.name
            if machine == EM_PPC64 and sym.startswith("."):
                if sym == ".TOC.":
                    continue      # dedotify() makes .TOC. absolute
                sym = sym[1:]
            res.lookups += 1
            err = self._resolve_symbol(module, mod, sym, imp.crc, res)
            if err == 0:
                res.resolved += 1
                continue
            if err == -ENOENT and (imp.weak or ignore_undef_symbol(machine, sym)):
                continue
            res.messages.append(Message(f"{name}: Unknown symbol {sym} (err {err})",
                                        "unknown_symbol", sym))
            ret = err
        return ret

    def _resolve_symbol(self, module: Module, mod: LoadedModule, sym: str, crc: int | None,
                        res: LoadResult) -> int:
        """resolve_symbol(): 0, or the negative errno simplify_symbols() reports."""
        hit = self.find_symbol(sym, gplok=not mod.proprietary)
        if hit is None:
            return -ENOENT
        owner, e = hit
        if e.license == License.GPL_ONLY:
            mod.using_gplonly_symbols = True
        # inherit_taint()
        if owner is not None and owner.proprietary:
            if mod.using_gplonly_symbols:
                res.messages.append(Message(
                    f"{mod.name}: module using GPL-only symbols uses symbols {sym} from "
                    f"proprietary module {owner.name}.", "gpl_taint", sym))
                return -ENOENT
            if not mod.proprietary:
                res.messages.append(Message(
                    f"{mod.name}: module uses symbols {sym} from proprietary module "
                    f"{owner.name}, inheriting taint.", "gpl_taint", sym, error=False))
                mod.proprietary = True
        # check_version()
        if self.modversions and e.crc is not None:
            if not module.has_versions:
                if self._taint_forced(mod.name, sym, res):
                    return -EINVAL
            elif crc is None:
                # a refusal, for every such symbol: seen under QEMU on Debian's 6.1 and
                # 6.12 (tests/loader/test_kernel_verdicts.py)
                res.messages.append(Message(f"{mod.name}: no symbol version for {sym}",
                                            "version", sym))
                return -EINVAL
            elif crc != e.crc:
                res.messages.append(Message(
                    f"{mod.name}: disagrees about version of symbol {sym}", "version", sym))
                return -EINVAL
        # verify_namespace_is_imported()
        ns = e.namespace
        if ns and not (ns.startswith("module:") and module_match(mod.name, ns[7:])) \
                and ns not in module.import_ns:
            res.messages.append(Message(
                f"{mod.name}: module uses symbol ({sym}) from namespace {ns}, but does not "
                f"import it.", "namespace", sym, error=not self.allow_missing_ns))
            if not self.allow_missing_ns:
                return -EINVAL
        if e.flags & KSYM_FLAG_PROTECTED and not module.signed:
            return -EACCES
        return 0

    def _verify_exported_symbols(self, module: Module, name: str, res: LoadResult) -> int:
        """verify_exported_symbols()"""
        for e in module.exports:
            hit = self.find_symbol(e.name, gplok=True)
            if hit is not None:
                owner = hit[0].name if hit[0] is not None else "kernel"
                res.messages.append(Message(
                    f"{name}: exports duplicate symbol {e.name} (owned by {owner})",
                    "duplicate", e.name))
                return -ENOEXEC
        return 0


def _major_minor(release: str) -> tuple[int, int]:
    """(6, 12) of "6.12.117+deb12-amd64"; (0, 0) when the release says no version."""
    parts = release.split(".", 2)
    try:
        return int(parts[0]), int("".join(c for c in parts[1][:3] if c.isdigit()) or 0)
    except (IndexError, ValueError):
        return 0, 0


def same_magic(amagic: str, bmagic: str, has_crcs: bool) -> bool:
    """same_magic(): with CRCs, the kernel release part is not compared."""
    if has_crcs:
        amagic = amagic[amagic.find(" ") + 1:] if " " in amagic else amagic
        bmagic = bmagic[bmagic.find(" ") + 1:] if " " in bmagic else bmagic
    return amagic == bmagic


# --- load order -------------------------------------------------------------------------


def dependency_map(modules: Iterable[Module], kernel: Kernel | None = None
                   ) -> dict[str, list[str]]:
    """module name -> names of the modules that export what it imports (as depmod
    computes dependencies: the owner of each undefined symbol)."""
    mods = list(modules)
    owner: dict[str, str] = {}
    builtin = {e.name for e in kernel.exports} if kernel else set()
    for m in mods:
        for e in m.exports:
            owner.setdefault(e.name, m.name)
    out: dict[str, list[str]] = {}
    for m in mods:
        deps: list[str] = []
        for i in m.imports:
            o = owner.get(i.name)
            if o is not None and o != m.name and i.name not in builtin and o not in deps:
                deps.append(o)
        out[m.name] = deps
    return out


def load_order(modules: list[Module], wanted: list[str] | None = None,
               kernel: Kernel | None = None) -> list[Module]:
    """The modules to load for *wanted* (default: all), dependencies first, as modprobe
    would insert them.  Cycles are broken where they are found (the kernel would fail
    those modules: their symbols are unknown)."""
    by_name = {m.name: m for m in modules}
    deps = dependency_map(modules, kernel)
    order: list[Module] = []
    state: dict[str, int] = {}
    roots = [w.replace("-", "_") for w in wanted] if wanted else [m.name for m in modules]
    for r in roots:
        if r not in by_name:
            continue
        stack: list[tuple[str, int]] = [(r, 0)]
        while stack:
            n, i = stack.pop()
            if i == 0:
                if state.get(n):
                    continue
                state[n] = 1
            d = deps.get(n, [])
            if i < len(d):
                stack.append((n, i + 1))
                if not state.get(d[i]):
                    stack.append((d[i], 0))
                continue
            state[n] = 2
            order.append(by_name[n])
    return order
