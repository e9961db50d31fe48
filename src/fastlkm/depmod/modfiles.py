"""Which module files a modules directory holds, as depmod walks it, and the files beside
them it reads.  Light on purpose: a warm ``fastlkm depmod`` needs nothing else."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from fastlkm.depmod.config import DepmodConfig
from fastlkm.errors import FastlkmError, NotFoundError
from fastlkm.kernel.modname import MODULE_DIRS, is_module_path, modname


def release_dir(basedir: str | None, version: str | None) -> Path:
    """The modules directory depmod works on: ``BASEDIR/lib/modules/VERSION`` or
    ``BASEDIR/usr/lib/modules/VERSION`` (as depmod's -b)."""
    return depmod_dirs(basedir, version).moddir


DEFAULT_MODULE_DIRECTORY = "/lib/modules"   # kmod's MODULE_DIRECTORY


def is_version_number(text: str) -> bool:
    """As kmod's is_version_number(): the text starts with two numbers and a dot between
    (``sscanf("%u.%u")``)."""
    return re.match(r"\s*[+-]?\d+\.\s*[+-]?\d+", text) is not None


class DepmodDirs(NamedTuple):
    """Where a depmod run reads and writes (the directories of kmod's main_depmod())."""

    moddir: Path      # the modules directory read (ROOT/MODULEDIR/VERSION)
    shown: str        # that directory as depmod names it (inside the system root)
    outdir: Path      # where the outputs go (OUTDIR/MODULEDIR/VERSION, else moddir)
    sysroot: str      # "" or the directory every absolute path is taken inside


def inside(sysroot: str, path: str) -> str:
    """*path* as seen from inside *sysroot* ("" for the real root): an absolute path is
    taken under *sysroot*, a relative one as it is."""
    if not sysroot or not path.startswith("/"):
        return path
    return sysroot.rstrip("/") + path


def depmod_dirs(basedir: str | None, version: str | None, moduledir: str | None = None,
                outdir: str | None = None, sysroot: str | None = None) -> DepmodDirs:
    """kmod's cfg.dirname and cfg.outdirname: ``ROOT/MODULEDIR/VERSION`` read,
    ``OUTDIR/MODULEDIR/VERSION`` written (OUTDIR defaults to ROOT, MODULEDIR to
    /lib/modules and is always relative to them, VERSION to the running kernel's).
    Without -m, a root whose modules lie only in ``usr/lib/modules`` is read there (kmod
    would need ``ROOT/lib -> usr/lib``).  With *sysroot*, every absolute path is taken
    inside it, as if depmod ran chrooted there."""
    release = version or os.uname().release   # platform.release(), without importing it
    sysroot = os.path.abspath(sysroot) if sysroot else ""
    root, root_real = _root(basedir, sysroot) if basedir else ("", sysroot)
    mdirs = [(moduledir or DEFAULT_MODULE_DIRECTORY).lstrip("/")]
    if moduledir is None:
        mdirs += [d for d in MODULE_DIRS if d not in mdirs]
    for m in mdirs:
        if Path(f"{root_real}/{m}/{release}").is_dir():
            break
    else:
        m = mdirs[0]
        raise NotFoundError(f"no modules directory for {release}", f"{root_real}/{m}/{release}")
    moddir = Path(f"{root_real}/{m}/{release}")
    out = moddir
    if outdir:
        out = Path(f"{_root(outdir, sysroot)[1]}/{m}/{release}")
    return DepmodDirs(moddir, f"{root}/{m}/{release}", out, sysroot)


def _root(path: str, sysroot: str) -> tuple[str, str]:
    """A root given on the command line as depmod names it (path_make_absolute_cwd():
    a relative path is joined to the current directory, nothing else is changed) and as
    it is read (an absolute path inside *sysroot*)."""
    if path.startswith("/"):
        return path, inside(sysroot, path)
    shown = os.getcwd() + "/" + path
    return shown, shown


EXCLUDED_DIRS = frozenset({".", "..", "build", "source"})


def walk_modules(moddir: Path, excludes: frozenset[str] = frozenset(),
                 skipped: list[FastlkmError] | None = None) -> Iterator[str]:
    """Module files under *moddir*, relative, depth-first in readdir order as depmod walks
    them (depmod_modules_search_dir()); 'build' and 'source' are skipped, and a directory
    seen before (a symlink loop) is not entered twice.  What cannot be read, a loop, and a
    module name that is no regular file are appended to *skipped*, one error each."""
    base = str(moddir)
    yield from _walk_sub(base, base, excludes, {}, skipped if skipped is not None else [])


def _walk_sub(d: str, base: str, excludes: frozenset[str],
              seen: dict[tuple[int, int], str], skipped: list[FastlkmError]) -> Iterator[str]:
    try:
        st = os.stat(d)
        entries = list(os.scandir(d))
    except OSError as e:
        skipped.append(FastlkmError(f"cannot read directory: {e.strerror or e}", d))
        return
    first = seen.setdefault((st.st_dev, st.st_ino), d)
    if first != d:
        # depmod would follow the link until it runs out of file descriptors
        skipped.append(FastlkmError(f"symbolic link loop: the directory {first} again, "
                                    "not entered", d))
        return
    prefix = d[len(base) + 1:] + "/" if d != base else ""
    for e in entries:
        if e.name in EXCLUDED_DIRS or e.name in excludes:
            continue
        try:
            if e.is_dir():
                yield from _walk_sub(e.path, base, excludes, seen, skipped)
                continue
            if not is_module_path(e.name):
                continue
            if e.is_file():
                yield prefix + e.name
                continue
            why = ("dangling symbolic link" if e.is_symlink() and not os.path.exists(e.path)
                   else "not a regular file")
        except OSError as err:
            why = f"cannot stat: {err.strerror or err}"
        skipped.append(FastlkmError(why, e.path))


def choose_modules(files: list[tuple[str, str | None]], config: DepmodConfig
                   ) -> list[tuple[str, str | None]]:
    """One file per module name, as depmod_modules_search_file() chooses between files of
    the same name: *files* are (path, path relative to the modules directory or None) in
    the order found; the config's overrides and search order decide."""
    chosen: dict[str, tuple[str, str | None]] = {}
    for path, rel in files:
        name = modname(path)
        old = chosen.get(name)
        if old is not None and config.existing_wins((old[1], old[0]), (rel, path)):
            continue
        chosen[name] = (path, rel)
    keep = set(chosen.values())
    return [f for f in files if f in keep]


def module_files(moddir: Path, config: DepmodConfig | None = None,
                 skipped: list[FastlkmError] | None = None, sysroot: str = ""
                 ) -> list[tuple[str, str]]:
    """The module files depmod takes: (full path, path as modules.dep names it: relative
    to the modules directory, or absolute for an external directory); what the walk
    skipped is appended to *skipped* (walk_modules()).  An external directory is read
    inside *sysroot* and named as the configuration names it."""
    config = config or DepmodConfig(searches=["updates"])
    excludes = frozenset(config.excludes)
    base = str(moddir).rstrip("/") + "/"   # strings, not Paths: a thousand joins add up
    found: list[tuple[str, str | None]] = [
        (base + r, r) for r in walk_modules(moddir, excludes, skipped)]
    real: dict[str, str] = {}
    for ext in reversed(config.externals):   # depmod searches them in file order
        d = Path(inside(sysroot, ext))
        if d.is_dir():
            eb = ext.rstrip("/") + "/"
            for r in walk_modules(d, excludes, skipped):
                found.append((eb + r, None))
                if sysroot:
                    real[eb + r] = str(d).rstrip("/") + "/" + r
    return [(real.get(p, p), rel if rel is not None else p)
            for p, rel in choose_modules(found, config)]


def read_order(moddir: Path, messages: list[tuple[str, str]] | None = None,
               shown: str | None = None) -> list[str]:
    """modules.order lines (relative paths of uncompressed names).  With *messages*, as
    depmod_modules_sort() reads it: a missing file is a warning, and a last line without
    its newline an error that drops the whole order; *shown* names the directory."""
    f = moddir / "modules.order"
    if messages is None:
        return f.read_text(errors="replace").splitlines() if f.is_file() else []
    where = shown if shown is not None else str(moddir)
    try:
        text = f.read_text(errors="replace")
    except OSError as e:   # dfdopen()
        messages.append(("WARNING", f"could not open modules.order at {where}: {e.strerror}"))
        return []
    lines = text.splitlines()
    if text and not text.endswith("\n"):
        messages.append(("ERROR", f"{where}/modules.order:{len(lines)} corrupted line "
                                  "misses '\\n'"))
        return []
    return lines


def depfile_up_to_date(moddir: Path) -> bool:
    """depfile_up_to_date(): is modules.dep at least as new as every module file?"""
    try:
        mtime = int((moddir / "modules.dep").stat().st_mtime)
    except OSError:
        return False
    for rel in walk_modules(moddir):
        try:
            if int((moddir / rel).stat().st_mtime) > mtime:
                return False
        except OSError:
            continue
    return True
