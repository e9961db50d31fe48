"""Find what a root, a modules directory or a release holds, and read it.

A *root* is what depmod's ``-b`` takes: ``ROOT/lib/modules/RELEASE`` (or
``ROOT/usr/lib/modules/RELEASE``).  The kernel's own exports come, in order of preference,
from an ELF ``vmlinux``, from the ELF inside ``vmlinuz``, from a real ``System.map``, or
from the headers' ``Module.symvers`` (behind ``build``, a symlink resolved inside the root).
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fastlkm.elf.reader import ElfFile
from fastlkm.errors import (
    DecompressError,
    FastlkmError,
    FormatError,
    NotFoundError,
    result_or_error,
)
from fastlkm.io.codecs import decompress_file
from fastlkm.kernel.facts import Export, Kernel, Module
from fastlkm.kernel.imagesyms import recover_exports
from fastlkm.kernel.kconfig import parse_config
from fastlkm.kernel.ksymtab import read_exports
from fastlkm.kernel.modname import MODULE_DIRS
from fastlkm.kernel.module import read_module
from fastlkm.kernel.signature import system_certificates
from fastlkm.kernel.symvers import parse_symvers, vmlinux_exports
from fastlkm.kernel.sysmap import is_stub, parse_system_map
from fastlkm.kernel.vmlinuz import payloads


def resolve_in_root(root: Path | None, path: Path) -> Path:
    """Follow symlinks in *path* as if *root* were '/' (depmod -b semantics)."""
    if root is None:
        return path.resolve()
    root = root.resolve()
    parts = list(path.relative_to(root).parts) if path.is_absolute() else list(path.parts)
    cur = root
    hops = 0
    while parts:
        p = parts.pop(0)
        if p in ("", "."):
            continue
        if p == "..":
            cur = cur.parent if cur != root else root
            continue
        nxt = cur / p
        if nxt.is_symlink():
            hops += 1
            if hops > 40:
                raise FormatError("too many levels of symbolic links", str(path))
            target = os.readlink(nxt)
            if target.startswith("/"):
                cur = root
                parts = list(Path(target).parts[1:]) + parts
            else:
                parts = list(Path(target).parts) + parts
            continue
        cur = nxt
    return cur


@dataclass(frozen=True)
class Tree:
    """Where one kernel's files are."""

    moddir: Path                  # .../lib/modules/RELEASE
    release: str
    root: Path | None = None
    vmlinux: Path | None = None
    vmlinuz: Path | None = None
    system_map: Path | None = None
    symvers: Path | None = None
    config: Path | None = None

    @property
    def sources(self) -> dict[str, Path]:
        return {k: v for k, v in (("vmlinux", self.vmlinux), ("vmlinuz", self.vmlinuz),
                                   ("System.map", self.system_map),
                                   ("Module.symvers", self.symvers)) if v is not None}


def _first(*cands: Path) -> Path | None:
    for c in cands:
        if c.is_file():
            return c
    return None


def _releases(root: Path) -> list[tuple[Path, str]]:
    out = []
    seen = set()
    for d in MODULE_DIRS:
        base = root / d
        if base.is_dir():
            for e in sorted(base.iterdir()):
                if (e.is_dir() and (e / "kernel").exists()) or (e / "modules.order").exists():
                    key = e.resolve()
                    if key not in seen:
                        seen.add(key)
                        out.append((e, e.name))
    return out


def find_tree(arg: str | None = None, release: str | None = None) -> Tree:
    """Locate a kernel from a root, a modules directory, a release or nothing.

    With no argument: the running kernel's ``/lib/modules/$(uname -r)``.
    """
    if arg is None:
        release = release or platform.release()
        moddir = Path("/lib/modules") / release
        if not moddir.is_dir():
            raise NotFoundError(f"no modules for the running kernel {release}", str(moddir))
        return _describe(moddir, release, Path("/"))
    p = Path(arg)
    if p.is_dir():
        # a root as depmod -b takes it
        if any((p / d).is_dir() for d in MODULE_DIRS):
            if release is not None:
                for d in MODULE_DIRS:
                    if (p / d / release).is_dir():
                        return _describe(p / d / release, release, p)
                raise NotFoundError(f"no modules for {release} under {p}", arg)
            rels = _releases(p)
            if len(rels) == 1:
                return _describe(rels[0][0], rels[0][1], p)
            if not rels:
                raise NotFoundError("no kernel modules found under this root", arg)
            names = ", ".join(r for _, r in rels)
            raise NotFoundError(f"several kernels under this root ({names}): name one", arg)
        # a modules directory itself
        root = None
        parts = p.resolve().parts
        for d in MODULE_DIRS:
            n = len(Path(d).parts)
            if len(parts) > n + 1 and parts[-(n + 1):-1] == Path(d).parts:
                root = Path(*parts[:-(n + 1)])
        return _describe(p, release or p.resolve().name, root)
    if "/" not in arg:
        # a release name
        for base in ("/lib/modules", "/usr/lib/modules"):
            if (Path(base) / arg).is_dir():
                return _describe(Path(base) / arg, arg, Path("/"))
        raise NotFoundError(f"no kernel {arg} in /lib/modules", arg)
    raise NotFoundError("no such directory", arg)


def _describe(moddir: Path, release: str, root: Path | None) -> Tree:
    r = root if root is not None else Path("/nonexistent")
    build = moddir / "build"
    symvers = None
    if build.is_symlink() or build.exists():
        b = resolve_in_root(root, build) if root is not None else build.resolve()
        symvers = _first(b / "Module.symvers")
    system_map = _first(r / "boot" / f"System.map-{release}", moddir / "System.map")
    return Tree(
        moddir=moddir, release=release, root=root,
        vmlinux=_first(r / "boot" / f"vmlinux-{release}", moddir / "vmlinux",
                       r / "usr/lib/debug/boot" / f"vmlinux-{release}",
                       r / "usr/lib/debug/lib/modules" / release / "vmlinux"),
        vmlinuz=_first(r / "boot" / f"vmlinuz-{release}", moddir / "vmlinuz",
                       r / "boot" / f"vmlinux-{release}"),
        system_map=system_map,
        symvers=symvers,
        config=_first(r / "boot" / f"config-{release}", moddir / "config"),
    )


# --- the kernel's own exports ---------------------------------------------------------


@dataclass(frozen=True)
class ImageExports:
    exports: list[Export]
    machine: int       # e_machine of an ELF vmlinux, 0 for a raw image
    how: str           # where in the image the tables were found, for notes
    recovered: bool    # from the loaded bytes (kernel/imagesyms.py), not ELF sections
    certificates: tuple[bytes, ...] = ()   # the X.509 certificates compiled in


def exports_from_image(path: Path) -> ImageExports:
    """vmlinux's exports from a vmlinux or vmlinuz file: from the ``__ksymtab*`` sections of
    the ELF vmlinux it is or holds, else recovered from the loaded bytes of the kernel
    (kernel/imagesyms.py) -- an arm64 Image, the payload of a zImage, of s390x's image or
    of MIPS's ELF decompressor."""
    data = decompress_file(str(path))
    undecodable: list[DecompressError] = []
    failures: list[FormatError] = []      # of payloads decoded from the image
    itself: list[FormatError] = []        # of the image taken as the kernel's bytes
    for p in payloads(data, str(path), errors=undecodable):
        seen = itself if p.data is data else failures
        if p.elf:
            try:
                elf = ElfFile(p.data, str(path))
            except FormatError as e:
                seen.append(e)
                continue
            if elf.section("__ksymtab") is not None or elf.section("__ksymtab_gpl") is not None:
                return ImageExports(read_exports(elf), elf.machine,
                                    f"{p.form}, __ksymtab sections", recovered=False,
                                    certificates=system_certificates(p.data))
        try:
            got = recover_exports(p.data, str(path))
        except FormatError as e:
            seen.append(e)
            continue
        how = f"{p.form}, tables recovered: {got.describe()}"
        return ImageExports(got.exports, 0, "; ".join((how, *got.notes)), recovered=True,
                            certificates=system_certificates(p.data))
    # the most telling reason: a payload that decoded but held no tables, else a payload
    # that did not decode (a truncated image), else why the image itself held none
    for reasons in (failures, undecodable, itself):
        if reasons:
            raise reasons[0]
    raise FormatError("kernel image holds no ELF vmlinux and no raw kernel", str(path))


def certificates_from_image(path: Path) -> tuple[bytes, ...]:
    """The X.509 certificates compiled into a vmlinux or vmlinuz file: those of the first
    candidate for the kernel proper that holds any."""
    data = decompress_file(str(path))
    for p in payloads(data, str(path)):
        certs = system_certificates(p.data)
        if certs:
            return certs
    return ()


def exports_from_symvers(path: Path) -> list[Export]:
    return vmlinux_exports(parse_symvers(path.read_text(errors="replace"), str(path)))


def exports_from_system_map(path: Path) -> list[Export] | None:
    text = path.read_text(errors="replace")
    if is_stub(text):
        return None
    return parse_system_map(text, str(path))


def load_kernel(tree: Tree, prefer: str | None = None,
                notes: list[str] | None = None) -> Kernel:
    """The kernel proper, from the best available source (or the one *prefer* names:
    'vmlinux', 'vmlinuz', 'System.map', 'Module.symvers')."""
    notes = notes if notes is not None else []
    config = parse_config(tree.config.read_text(errors="replace")) if tree.config else {}
    order = ["vmlinux", "vmlinuz", "System.map", "Module.symvers"]
    if prefer is not None:
        if prefer not in tree.sources:
            raise NotFoundError(f"no {prefer} found for {tree.release}", str(tree.moddir))
        order = [prefer]
    machine = 0
    certs: tuple[bytes, ...] | None = None
    for src in order:
        path = tree.sources.get(src)
        if path is None:
            continue
        try:
            if src in ("vmlinux", "vmlinuz"):
                image = exports_from_image(path)
                exports, machine, certs = image.exports, image.machine, image.certificates
                if image.recovered:
                    notes.append(f"{src}: {image.how}")
            elif src == "System.map":
                got = exports_from_system_map(path)
                if got is None:
                    stub = FormatError("a stub without symbols (Debian ships the real "
                                       "System.map in the -dbg package)", str(path))
                    if prefer is not None:
                        raise stub
                    notes.append(f"{stub}; not used")
                    continue
                exports = got
            else:
                exports = exports_from_symvers(path)
        except FastlkmError as e:
            if prefer is not None:
                raise
            notes.append(f"{e.with_path(str(path))}; trying the next source")
            continue
        shown = path
        if tree.root is not None and tree.root != Path("/"):
            # relative to the root, so a snapshot does not carry this machine's paths
            with contextlib.suppress(ValueError):
                shown = path.relative_to(tree.root)
        if certs is None:
            certs = ()
            image = tree.vmlinux or tree.vmlinuz
            if image is not None:
                try:
                    certs = certificates_from_image(image)
                except FastlkmError as e:
                    notes.append(f"built-in keys not read: {e.with_path(str(image))}")
        return Kernel(
            release=tree.release, exports=tuple(exports), source=f"{src} {shown}",
            machine=machine, modversions=config.get("CONFIG_MODVERSIONS") == "y",
            config=config, certificates=certs,
        )
    raise NotFoundError(f"no usable source of the kernel's exports for {tree.release} "
                        f"(looked for vmlinux, vmlinuz, System.map, Module.symvers)",
                        str(tree.moddir))


def compare_exports(a: list[Export] | tuple[Export, ...], b: list[Export] | tuple[Export, ...],
                    an: str, bn: str) -> list[str]:
    """Where two sources of the kernel's exports disagree, one line per kind."""
    da = {e.name: e for e in a}
    db = {e.name: e for e in b}
    out = []
    only_a = sorted(set(da) - set(db))
    only_b = sorted(set(db) - set(da))
    if only_a:
        out.append(f"{len(only_a)} exports only in {an}: {', '.join(only_a[:5])}"
                   + (" ..." if len(only_a) > 5 else ""))
    if only_b:
        out.append(f"{len(only_b)} exports only in {bn}: {', '.join(only_b[:5])}"
                   + (" ..." if len(only_b) > 5 else ""))
    for what, key in (("license", lambda e: e.license), ("namespace", lambda e: e.namespace),
                      ("CRC", lambda e: e.crc)):
        diff = sorted(n for n in set(da) & set(db)
                      if key(da[n]) != key(db[n])
                      and not (what == "CRC" and None in (da[n].crc, db[n].crc)))
        if diff:
            out.append(f"{len(diff)} exports differ in {what} between {an} and {bn}: "
                       + ", ".join(diff[:5]) + (" ..." if len(diff) > 5 else ""))
    return out


def _read_one(args: tuple[str, str]) -> Module | FastlkmError:
    path, rel = args
    return result_or_error(lambda: read_module(path, rel), path, "module")


def read_modules(moddir: Path, relpaths: list[str], jobs: int | None = None,
                 progress: Callable[[int], None] | None = None
                 ) -> tuple[list[Module], list[FastlkmError]]:
    """Read the modules at *relpaths* under *moddir* (see read_module_files())."""
    return read_module_files([(str(moddir / r), r) for r in relpaths], jobs, progress)


def read_module_files(args: list[tuple[str, str]], jobs: int | None = None,
                      progress: Callable[[int], None] | None = None
                      ) -> tuple[list[Module], list[FastlkmError]]:
    """Read (path, shown path) module files in parallel on the machine's cores; errors are
    returned, not raised.  (depmod reads less, faster: depmod/scan.py.)"""
    jobs = jobs or os.cpu_count() or 1
    if jobs <= 1 or len(args) < 16:
        done = list(map(_read_one, args))
    else:
        from concurrent.futures import ProcessPoolExecutor  # only when there is work to share

        with ProcessPoolExecutor(max_workers=jobs) as ex:
            done = list(ex.map(_read_one, args, chunksize=max(1, len(args) // (jobs * 8))))
    if progress:
        progress(len(args))
    mods = [r for r in done if isinstance(r, Module)]
    errors = [r for r in done if isinstance(r, FastlkmError)]
    return mods, errors
