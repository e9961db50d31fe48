"""The kernel's module loader, over facts: what load_module() would say for each module.

Mirrors kernel/module/main.c (Linux 6.x/7.x), in load_module()'s order, stopping where it
stops:
- module_sig_check(): an unsigned module, unsupported crypto or an unavailable key are
  forgiven unless signatures are enforced; any other failure (a signature that does not
  match) is fatal;
- elf_validity_check(): the machine; since 6.4 the ``.gnu.linkonce.this_module`` section
  against the kernel's own struct module size;
- check_modstruct_version(): module_layout's CRC, where vmlinux exports it;
- check_modinfo(): version magic, livepatch support; then the taints of
  module_augment_kernel_taints() (out-of-tree, staging, livepatch, license, test, unsigned),
  each taint line once per boot as the kernel prints it;
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

from dataclasses import dataclass, field
from typing import Protocol

from fastlkm.elf.structs import (
    ELFMAG,
    EM_386,
    EM_PPC64,
    EM_X86_64,
    LAYOUTS,
)
from fastlkm.errors import FormatError
from fastlkm.kernel.elfcheck import elf_validity, this_module_problem
from fastlkm.kernel.facts import KSYM_FLAG_PROTECTED, Export, Kernel, License, Module
from fastlkm.kernel.modinfo import license_is_gpl_compatible
from fastlkm.kernel.modname import modname
from fastlkm.kernel.module import elf_header_problem, parse_module
from fastlkm.kernel.signature import (
    EKEYREJECTED,
    ENODATA,
    ENOKEY,
    ENOPKG,
    SigCheck,
    split_signature,
)

ENOENT, ENOEXEC, EACCES, EEXIST, EINVAL = 2, 8, 13, 17, 22
EM_486 = 6   # elf_check_arch() of i386 takes it too

# module_sig_check(): the signature errors forgiven unless signatures are enforced
SIG_FORGIVEN = {ENODATA: "unsigned module", ENOPKG: "module with unsupported crypto",
                ENOKEY: "module with unavailable key"}


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
    sig: SigCheck | None = None     # the signature check of the file, when it was made

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

    def __init__(self, kernel: Kernel, search: SymbolSearch | None = None,
                 sig_enforce: bool = False):
        self.kernel = kernel
        self.modversions = kernel.modversions
        self.force_load = kernel.config.get("CONFIG_MODULE_FORCE_LOAD", "y") == "y" \
            if kernel.config else True
        self.allow_missing_ns = kernel.config.get(
            "CONFIG_MODULE_ALLOW_MISSING_NAMESPACE_IMPORTS") == "y"
        config = kernel.config
        self.module_sig = config.get("CONFIG_MODULE_SIG") == "y"
        self.sig_enforce = sig_enforce or config.get("CONFIG_MODULE_SIG_FORCE") == "y"
        self.livepatch = config.get("CONFIG_LIVEPATCH", "y") == "y"
        self.loaded: dict[str, LoadedModule] = {}
        self._seq = 0
        self.tainted_proprietary = False
        self.taints: set[str] = set()       # the taint flags set so far this boot
        self.debug_locks = True             # until a taint makes lockdep unreliable
        # the load_module() of 6.4 on (module_augment_kernel_taints(), the checks of
        # .gnu.linkonce.this_module in elf_validity_check()): the proprietary taint is
        # sampled before the license check, so the module that sets it also gets the
        # older "module license taints kernel." line (seen under QEMU on Debian's 6.12 and
        # 7.2, not on 6.1: tests/loader/test_kernel_verdicts.py), and a struct module of
        # another size is refused before module_layout is compared (6.1 compares only
        # module_layout: tests/loader/test_foreign_modules.py)
        self.version = _major_minor(kernel.release)
        self.split_load_module = self.version >= (6, 4)
        self.tainted_forced = False
        self.search: SymbolSearch = search if search is not None else DictSearch(kernel)

    def find_symbol(self, name: str, gplok: bool) -> tuple[LoadedModule | None, Export] | None:
        return self.search.find(name, gplok)

    # --- load_module ------------------------------------------------------------------

    def load(self, module: Module, sig: SigCheck | None = None) -> LoadResult:
        """load_module(): its checks in the kernel's order, stopping where it stops.
        *sig* is the verified signature of the module file; without it a signed module
        is taken as verified (a tree's own modules) and an unsigned one as unsigned."""
        name = module.info1("name") or module.name
        res = LoadResult(name, module.path, ok=False, sig=sig)
        sig_ok = self._module_sig_check(module.signed, sig, res)
        if res.err or self._elf_validity(module, res):
            return res
        # early_mod_check(): check_modstruct_version(), then check_modinfo()
        if self._check_modstruct_version(module, name, res):
            return res
        self._check_modinfo(module, name, res)
        if res.err:
            return res
        if self.split_load_module and self._already_loaded(name, res):
            return res
        proprietary = self._augment_taints(module, name, res, sig_ok)
        if not self.split_load_module and self._already_loaded(name, res):
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

    def _already_loaded(self, name: str, res: LoadResult) -> bool:
        if name in self.loaded:
            res.err = -EEXIST
            res.messages.append(Message(f"{name}: module is already loaded", "already_loaded"))
        return bool(res.err)

    def load_image(self, data: bytes, path: str, sig: SigCheck) -> LoadResult:
        """load_module() of a module file's (decompressed) bytes whose signature check is
        *sig*: an image the kernel refuses before it reads it as a module (the ELF
        header's type and machine, the section headers: kernel/elfcheck.py) is refused
        here too, with the kernel's line, after the signature check; any other image is
        read and loaded with :meth:`load`."""
        problem = self.image_problem(data)
        if problem is None:
            return self.load(parse_module(data, path), sig)
        return self.refuse_image(path, sig, problem)

    def refuse_image(self, path: str, sig: SigCheck, problem: str) -> LoadResult:
        """load_module() of an image whose *problem* image_problem() found: the
        signature is checked first, as the kernel does."""
        res = LoadResult(modname(path), path, ok=False, sig=sig)
        self._module_sig_check(False, sig, res)
        if not res.err:
            res.messages.append(Message(problem, "elf"))
            res.err = -ENOEXEC
        return res

    def image_problem(self, data: bytes) -> str | None:
        """The kernel's line for a module file's (decompressed) bytes that it refuses
        before it reads them as a module, or None: the ELF header's type and machine
        (elf_validity_ehdr()), then the section headers (kernel/elfcheck.py)."""
        problem = elf_header_problem(data)
        if problem is None and len(data) >= 64 and data[:4] == ELFMAG and data[4] in (1, 2):
            problem = self._machine_problem(
                LAYOUTS[(data[4], data[5] != 2)].read_ehdr(data).machine)
        if problem is None:
            try:
                image = split_signature(data)[0]   # module_sig_check() cut the trailer
            except FormatError:
                image = data
            problem = elf_validity(image, self.version, self.kernel.struct_module_size)
        return problem

    def _module_sig_check(self, signed: bool, sig: SigCheck | None, res: LoadResult
                          ) -> bool:
        """module_sig_check(): 'sig_ok'; sets res.err where the kernel refuses.  Without
        CONFIG_MODULE_SIG there is no check (and no taint)."""
        if not self.module_sig:
            return True
        if sig is None:
            err = 0 if signed else -ENODATA
        else:
            err = sig.err
            res.messages.extend(Message(t, "signature") for t in sig.lines)
        if err == 0:
            return True
        reason = SIG_FORGIVEN.get(-err)
        if reason is None:
            res.err = err     # a bad signature is fatal even without enforcement
            return False
        if self.sig_enforce:
            res.messages.append(Message(f"Loading of {reason} is rejected", "signature"))
            res.err = -EKEYREJECTED
        return False

    def _machine_problem(self, e_machine: int) -> str | None:
        """elf_check_arch(); the line names no module."""
        machine = self.kernel.machine
        if machine and e_machine != machine and \
                not (machine == EM_386 and e_machine == EM_486):
            return f"Invalid architecture in ELF header: {e_machine}"
        return None

    def _elf_validity(self, module: Module, res: LoadResult) -> bool:
        """elf_validity_ehdr() and, since 6.4, elf_validity_cache_index_mod(): True when
        the module is refused (res.err set)."""
        problem = self._machine_problem(module.machine)
        if problem:
            res.messages.append(Message(problem, "elf"))
            res.err = -ENOEXEC
            return True
        tm = module.this_module
        if tm is None:
            return False      # not known (facts from an older snapshot)
        problem = this_module_problem(module.info1("name"), tm.count, tm.type, tm.flags,
                                      tm.size, self.version, self.kernel.struct_module_size)
        if problem is None:
            return False
        res.messages.append(Message(problem, "elf"))
        res.err = -ENOEXEC
        return True

    def _check_modstruct_version(self, module: Module, name: str, res: LoadResult) -> bool:
        """check_modstruct_version(): check_version() of module_layout, where vmlinux
        exports it with a CRC; True when the module is refused."""
        if not self.modversions:
            return False
        hit = self.find_symbol("module_layout", gplok=True)
        if hit is None or hit[1].crc is None:
            return False
        err = self._check_version(module, name, "module_layout", dict(module.versions)
                                  .get("module_layout"), hit[1].crc, res)
        if err:
            res.err = -ENOEXEC
        return bool(err)

    def _taint_forced(self, name: str, reason: str, res: LoadResult) -> int:
        """try_to_force_load()"""
        if not self.force_load:
            return -ENOEXEC
        if not self.tainted_forced:
            res.messages.append(Message(f"{name}: {reason}: kernel tainted.", "forced",
                                        error=False))
        self.tainted_forced = True
        self._lockdep_unreliable(res)
        return 0

    def _lockdep_unreliable(self, res: LoadResult) -> None:
        """add_taint(..., LOCKDEP_NOW_UNRELIABLE): the first such taint of a boot turns
        lock debugging off and says so (kernel/panic.c)."""
        if self.debug_locks:
            res.messages.append(Message("Disabling lock debugging due to kernel taint",
                                        "taint", error=False))
        self.debug_locks = False

    def _check_modinfo(self, module: Module, name: str, res: LoadResult) -> None:
        """check_modinfo(): the version magic and livepatch support; sets res.err."""
        kmagic = self.kernel.vermagic
        magic = module.info1("vermagic")
        if magic is None:
            err = self._taint_forced(name, "bad vermagic", res)
            if err:
                res.err = err
                return
        elif kmagic is not None and not same_magic(magic, kmagic,
                                                   module.has_versions and self.modversions):
            res.messages.append(Message(f"{name}: version magic '{magic}' should be "
                                        f"'{kmagic}'", "vermagic"))
            res.err = -ENOEXEC
            return
        if module.info1("livepatch") is not None and not self.livepatch:
            res.messages.append(Message(f"{name}: module is marked as livepatch module, but "
                                        "livepatch support is disabled", "livepatch"))
            res.err = -ENOEXEC

    def _taint_once(self, flag: str, text: str, res: LoadResult) -> None:
        """A taint line the kernel prints only while the taint is not yet set."""
        if flag not in self.taints:
            res.messages.append(Message(text, "taint", error=False))
        self.taints.add(flag)

    def _augment_taints(self, module: Module, name: str, res: LoadResult, sig_ok: bool
                        ) -> bool:
        """module_augment_kernel_taints() (6.4+; before, the same lines from
        check_modinfo() and load_module() in the same order); returns 'proprietary'."""
        if module.info1("intree") is None:
            self._taint_once("O", f"{name}: loading out-of-tree module taints kernel.", res)
        if module.info1("staging") is not None:
            res.messages.append(Message(f"{name}: module is from the staging directory, the "
                                        "quality is unknown, you have been warned.", "taint",
                                        error=False))
        if module.info1("livepatch") is not None:
            self._taint_once("K", f"{name}: tainting kernel with TAINT_LIVEPATCH", res)
        prev_proprietary = self.tainted_proprietary
        lic = module.license or "unspecified"
        proprietary = not license_is_gpl_compatible(lic)
        if proprietary:
            # module_license_taint_check()
            if not self.tainted_proprietary:
                res.messages.append(Message(f"{name}: module license '{lic}' taints kernel.",
                                            "license_taint", error=False))
            self.tainted_proprietary = True
            self._lockdep_unreliable(res)
        if module.info1("test") is not None:
            self._taint_once("N", f"{name}: loading test module taints kernel.", res)
        if self.module_sig and not sig_ok:
            # pr_notice_once(): once per boot, whichever module
            self._taint_once("E", f"{name}: module verification failed: signature and/or "
                             "required key missing - tainting kernel", res)
        # ndiswrapper taints the kernel but may still use GPL-only symbols; driverloader
        # and lve are tainted themselves
        if name in ("driverloader", "lve"):
            proprietary = True
        if name in ("ndiswrapper", "driverloader", "lve"):
            self.tainted_proprietary = True
            self._lockdep_unreliable(res)
        if self.split_load_module and not prev_proprietary and self.tainted_proprietary:
            # seen under QEMU on Debian's 6.12 and 7.2, not on 6.1
            # (tests/loader/test_kernel_verdicts.py)
            res.messages.append(Message(f"{name}: module license taints kernel.",
                                        "license_taint", error=False))
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
        if self.modversions and e.crc is not None and \
                self._check_version(module, mod.name, sym, crc, e.crc, res):
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

    def _check_version(self, module: Module, name: str, sym: str, crc: int | None,
                       want: int, res: LoadResult) -> int:
        """check_version(): 0, or -EINVAL when the module's CRC of *sym* is not *want*."""
        if not module.has_versions:
            return -EINVAL if self._taint_forced(name, sym, res) else 0
        if crc is None:
            # a refusal, for every such symbol: seen under QEMU on Debian's 6.1 and
            # 6.12 (tests/loader/test_kernel_verdicts.py)
            res.messages.append(Message(f"{name}: no symbol version for {sym}", "version",
                                        sym))
            return -EINVAL
        if crc != want:
            res.messages.append(Message(
                f"{name}: disagrees about version of symbol {sym}", "version", sym))
            return -EINVAL
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
