"""Open what the user names (a root, a modules directory, a release, a snapshot, or
nothing) as one :class:`System`: the kernel, its modules and where they came from."""

from __future__ import annotations

import dataclasses
import os
import platform
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from fastlkm.depmod.modfiles import module_files, read_order
from fastlkm.errors import EXIT_SKIPPED, FastlkmError, NotFoundError, warn_skipped
from fastlkm.kernel.facts import Kernel, Module
from fastlkm.kernel.modname import MODULE_DIRS
from fastlkm.kernel.tree import (
    Tree,
    compare_exports,
    find_tree,
    load_kernel,
    read_module_files,
)
from fastlkm.snapshot import Snapshot, is_snapshot, load

SHIPPED_SNAPSHOT = "debian-6.12-amd64.snap"


@dataclass
class System:
    kernel: Kernel
    modules: list[Module]            # in the order depmod's walk finds them
    order: list[str]                 # modules.order
    origin: str                      # what was opened, for messages
    tree: Tree | None = None
    notes: list[str] = field(default_factory=list)
    errors: list[FastlkmError] = field(default_factory=list)   # unreadable modules

    def module(self, name: str) -> Module | None:
        n = name.replace("-", "_")
        for m in self.modules:
            if m.name == n:
                return m
        return None


def shipped_snapshot() -> Path:
    from importlib import resources  # costly to import; most runs never need it

    return Path(str(resources.files("fastlkm") / "data" / SHIPPED_SNAPSHOT))


def kernel_vermagic(modules: list[Module]) -> str | None:
    """The kernel's vermagic as its own modules record it (the most common one)."""
    c = Counter(v for m in modules if (v := m.info1("vermagic")))
    return c.most_common(1)[0][0] if c else None


def struct_module_size(modules: list[Module]) -> int | None:
    """sizeof(struct module) of the kernel its own modules were built with: the size of
    their ``.gnu.linkonce.this_module`` section (the most common one)."""
    c = Counter(m.this_module.size for m in modules
                if m.this_module is not None and m.this_module.count == 1)
    return c.most_common(1)[0][0] if c else None


def open_system(arg: str | None = None, *, source: str | None = None,
                jobs: int | None = None, compare: bool = False,
                progress: Callable[[int], None] | None = None) -> System:
    """Open *arg*; with none, the running kernel if its modules are installed, else the
    snapshot shipped with fastlkm.  *source* forces where vmlinux's exports come from."""
    if arg is None:
        if Path("/lib/modules", platform.release()).is_dir():
            return open_tree(find_tree(None), source=source, jobs=jobs, compare=compare,
                             progress=progress)
        arg = str(shipped_snapshot())
    if os.path.isfile(arg) and not is_snapshot(arg):
        return open_archive(arg, source=source, jobs=jobs, compare=compare,
                            progress=progress)
    if os.path.isfile(arg):
        snap = load(arg)
        return System(snap.kernel, snap.modules, snap.order, f"snapshot {arg}",
                      notes=[f"kernel exports: {snap.kernel.source} (from the snapshot)"])
    return open_tree(find_tree(arg), source=source, jobs=jobs, compare=compare,
                     progress=progress)


def open_archive(arg: str, *, source: str | None = None, jobs: int | None = None,
                 compare: bool = False, progress: Callable[[int], None] | None = None
                 ) -> System:
    """A Debian kernel package or a tarball of a kernel root, opened as the root it
    unpacks to (extracted once, see io/archive.py)."""
    from fastlkm.io.archive import archive_kind, extracted

    if archive_kind(arg) is None:
        raise NotFoundError("not a kernel root, modules directory, snapshot, Debian "
                            "package or tarball", arg)
    root = extracted(arg)
    if not any((root / d).is_dir() for d in MODULE_DIRS):
        raise NotFoundError(f"no kernel modules in this archive (no {' or '.join(MODULE_DIRS)})",
                            arg)
    try:
        tree = find_tree(str(root))
    except NotFoundError as e:
        raise NotFoundError(f"in this archive: {e.message}", arg) from None
    system = open_tree(tree, source=source, jobs=jobs, compare=compare, progress=progress)
    system.origin = arg
    return system


def open_tree(tree: Tree, *, source: str | None = None, jobs: int | None = None,
              compare: bool = False, progress: Callable[[int], None] | None = None) -> System:
    notes: list[str] = []
    kernel = load_kernel(tree, prefer=source, notes=notes)
    notes.append(f"kernel exports: {len(kernel.exports)} from {kernel.source}")
    skipped: list[FastlkmError] = []   # what the walk could not take
    modules, errors = read_module_files(module_files(tree.moddir, skipped=skipped),
                                        jobs=jobs, progress=progress)
    errors = skipped + errors
    kernel = dataclasses.replace(kernel, vermagic=kernel_vermagic(modules),
                                 struct_module_size=struct_module_size(modules))
    if compare:
        notes.extend(compare_sources(tree, kernel))
    return System(kernel, modules, read_order(tree.moddir), str(tree.moddir), tree, notes,
                  errors)


def compare_sources(tree: Tree, used: Kernel) -> list[str]:
    """Load every other available source of vmlinux's exports and say where they differ."""
    out = []
    used_src = used.source.split()[0]
    for src in tree.sources:
        if src == used_src:
            continue
        try:
            other = load_kernel(tree, prefer=src)
        except FastlkmError as e:
            out.append(f"{src}: not usable ({e})")
            continue
        diffs = compare_exports(used.exports, other.exports, used_src, src)
        if diffs:
            out.extend(f"sources disagree: {d}" for d in diffs)
        else:
            out.append(f"{src} agrees with {used_src} ({len(other.exports)} exports)")
    return out


def to_snapshot(system: System) -> Snapshot:
    return Snapshot(system.kernel, system.modules, system.order)


def save_snapshot(target: str | None, output: str, source: str | None = None,
                  jobs: int | None = None, err: IO[str] | None = None) -> int:
    """``fastlkm snapshot``: the facts of *target* stored in the file *output*; the skipped
    files and a line of counts on *err*.  EXIT_SKIPPED when files were skipped."""
    from fastlkm.snapshot import save

    err = err if err is not None else sys.stderr
    system = open_system(target, source=source, jobs=jobs)
    warn_skipped(system.errors, err)
    size = save(to_snapshot(system), output)
    err.write(f"fastlkm: {output}: {len(system.modules)} modules, "
              f"{len(system.kernel.exports)} kernel exports, {size} bytes\n")
    return EXIT_SKIPPED if system.errors else 0
