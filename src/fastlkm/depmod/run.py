"""``fastlkm depmod``: one run of depmod, step by step as kmod's main() of depmod
(tools/depmod.c): the quick check (-A), the configuration, the walk, the cached outputs
of an unchanged tree, the modules read, depmod_load()'s computation, the outputs written
(or shown, -n), the cache kept.

Imports stay light until work is to be done: a warm run (every module file unchanged)
needs the walk, the configuration and the outputs cache, nothing else.
"""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path
from typing import IO, NamedTuple

from fastlkm.errors import EXIT_FAIL, EXIT_SKIPPED, CycleError, UsageError, warn_skipped


class DepmodOptions(NamedTuple):
    """depmod's options (depmod(8) of kmod 34), as ``fastlkm depmod`` takes them."""

    basedir: str | None = None        # -b: the root read (ROOT/MODULEDIR/VERSION)
    version: str | None = None        # the release (default: uname -r), or a snapshot file
    into: str | None = None           # --into: write the files into this directory
    show: bool = False                # -n: the text files to standard output
    quick: bool = False               # -A
    errsyms: bool = False             # -e
    filesyms: str | None = None       # -F System.map
    symvers: str | None = None        # -E Module.symvers
    warn: bool = False                # -w
    config: list[str] | None = None   # -C
    kmod_compat: str | None = None    # "30", "34" or None
    no_cache: bool = False
    jobs: int | None = None
    moduledir: str | None = None      # -m: the module directory (default /lib/modules)
    outdir: str | None = None         # -o: the output root (OUTDIR/MODULEDIR/VERSION)
    symbol_prefix: str | None = None  # -P: a character the symbol names start with
    verbose: int = 0                  # -v, once per -v
    all: bool = False                 # -a (the default without module files)
    files: list[str] | None = None    # module files, instead of every module (without -a)
    sysroot: str | None = None        # --sysroot: as if run chrooted there


def depmod(o: DepmodOptions, out: IO[bytes] | None = None, err: IO[str] | None = None
           ) -> int:
    """Run depmod; its messages go to *err* (standard error) as kmod's depmod words them,
    -n and -v write to *out* (standard output).  The exit status: 0, EXIT_FAIL (a
    dependency cycle, nothing written), EXIT_SKIPPED (files were skipped, each named on
    *err*)."""
    # a run allocates a few hundred thousand objects that live until it ends: the cyclic
    # collector would only walk them again and again
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _depmod(o, out, err or sys.stderr)
    finally:
        if enabled:
            gc.enable()


def _names_snapshot(version: str | None) -> bool:
    if version is None or not os.path.isfile(version):
        return False
    from fastlkm.snapshot import is_snapshot  # only for this rare form

    return is_snapshot(version)


def _check(o: DepmodOptions) -> None:
    """What kmod's depmod refuses before it reads anything (its words)."""
    from fastlkm.depmod.modfiles import is_version_number

    if o.symbol_prefix is not None and len(o.symbol_prefix) != 1:
        raise UsageError("-P only takes a single char")
    if o.version is not None and not is_version_number(o.version) \
            and not _names_snapshot(o.version):
        raise UsageError(f"Bad version passed {o.version}")
    if o.into is not None and o.outdir is not None:
        raise UsageError("--into and -o/--outdir exclude each other")
    for f in () if o.all or o.quick else o.files or ():
        if not f.startswith("/"):
            raise UsageError(f"{f}: not absolute path.")


def _depmod(o: DepmodOptions, out: IO[bytes] | None, err: IO[str]) -> int:
    from fastlkm.depmod.cache import BESIDE, load_outputs, run_key, save_outputs
    from fastlkm.depmod.config import DEFAULT_PATHS, DepmodConfig, load_config
    from fastlkm.depmod.modfiles import (
        depfile_up_to_date,
        depmod_dirs,
        inside,
        module_files,
        read_order,
    )
    from fastlkm.depmod.write import write_outputs
    from fastlkm.io.cache import file_key

    _check(o)
    sysroot = os.path.abspath(o.sysroot) if o.sysroot else ""
    moddir: Path | None = None
    target: Path | None = Path(o.into) if o.into else None
    shown: str | None = None
    skipped: list = []
    key = None
    # module files named after the version are all there is, unless -a (or -A, which
    # turns into -a when there is work to do)
    chosen = o.files if o.files and not (o.all or o.quick) else None
    if not _names_snapshot(o.version):
        dirs = depmod_dirs(o.basedir, o.version, o.moduledir, o.outdir, sysroot)
        moddir, shown = dirs.moddir, dirs.shown
        target = target or dirs.outdir
        # depmod -A -n does nothing at all; -A, nothing when modules.dep is newer than
        # every module
        if o.quick and (o.show or depfile_up_to_date(moddir)):
            return 0
        # as kmod: the kernel's symbols first (-E, -F), then depmod.d
        kernel_syms = _kernel_symbols(o, sysroot, err)
        # kmod reads depmod.d only to search the modules directory (-a)
        config = load_config(o.version or os.uname().release,
                             [inside(sysroot, p) for p in (o.config or DEFAULT_PATHS)]) \
            if chosen is None else DepmodConfig()
        for level, line in config.messages:
            if level == "ERROR" or o.verbose >= 2:   # kmod's INFO lines need -vv
                err.write(f"depmod: {level}: {line}\n")
        if chosen is not None:
            files = [(inside(sysroot, f), f.removeprefix(shown + "/")) for f in chosen]
        else:
            files = module_files(moddir, config, skipped, sysroot)
        keys = None if o.no_cache else [file_key(p) for p, _ in files]
        # a run that prints more than its outputs is computed: -e, -w, -v, depmod.d's
        # messages, a file missing beside the modules (kmod's warnings)
        if keys is not None and not skipped and not (o.errsyms or o.warn or o.verbose) \
                and all(level != "ERROR" for level, _ in config.messages) \
                and all((moddir / n).is_file() for n in BESIDE):
            key = run_key(str(moddir), files, keys, config,
                          [o.kmod_compat, o.filesyms, o.symvers, o.symbol_prefix, sysroot])
            warm = None if o.show else load_outputs(str(moddir.resolve()), key)
            if warm is not None:
                write_outputs(target, warm)
                return 0
    else:
        kernel_syms = _kernel_symbols(o, sysroot, err)
    from fastlkm.depmod.compute import build, needs_lines
    from fastlkm.depmod.inputs import read_modules, snapshot_modules
    from fastlkm.depmod.output import depmod_files

    if moddir is not None:
        modules, errors = read_modules(moddir, files, o.jobs, keys)
        notes: list[tuple[str, str]] = []
        order = read_order(moddir, notes, shown)
        for level, line in notes:
            err.write(f"depmod: {level}: {line}\n")
    else:
        modules, order = snapshot_modules(o.version)  # type: ignore[arg-type]
        errors = []
    errors = skipped + errors
    warn_skipped(errors, err)
    report: list[str] | None = [] if o.errsyms and kernel_syms is not None else None
    try:
        dm = build(modules, order, kernel_exports=kernel_syms,
                   kmod_compat=o.kmod_compat is not None, report=report,
                   check_symvers=o.symvers is not None, sym_prefix=o.symbol_prefix or "",
                   moddir=shown)
    except CycleError as e:
        # as kmod's depmod: the cycles as errors, nothing written, status 1
        _warnings(report or [], err)
        for line in e.lines:
            err.write(f"depmod: ERROR: {line}\n")
        if not e.complete:
            err.write("fastlkm: too many cycles: the list above stops early; the count is "
                      "every module in a cycle\n")
        return EXIT_FAIL
    _warnings(report or [], err)
    stream = out or sys.stdout.buffer
    if o.verbose:
        # depmod -v: each module's first need of each other module (kmod's SHOW lines)
        stream.write("".join(f"{line}\n" for line in needs_lines(dm, shown))
                     .encode(errors="surrogateescape"))

    def beside(name: str) -> bytes | str | None:
        """A file depmod reads beside the modules (dfdopen()); missing, kmod's warning."""
        if moddir is None or o.show:   # depmod -n does not show the indexes it feeds
            return None
        try:
            return (moddir / name).read_bytes()
        except OSError as e:
            return f"could not open {name} at {shown}: {e.strerror}"

    version = int(o.kmod_compat) if o.kmod_compat is not None else 34
    outputs, warnings = depmod_files(dm, beside("modules.builtin"),
                                     beside("modules.builtin.modinfo"), version,
                                     warn_dups=o.warn)
    _warnings(warnings, err)
    status = EXIT_SKIPPED if errors else 0
    if o.show:
        # depmod -n writes the text files to standard output (indexes are binary)
        for name, data in outputs.items():
            if not name.endswith(".bin"):
                stream.write(data)
        return status
    if target is None:
        raise UsageError("a snapshot has no modules directory: give --into DIR")
    write_outputs(target, outputs)
    if key is not None and not errors and moddir is not None:
        save_outputs(str(moddir.resolve()), key, outputs)
    return status


def _kernel_symbols(o: DepmodOptions, sysroot: str, err: IO[str]) -> list | None:
    """The kernel's symbols of -E or -F, kmod's errors on System.map's lines and its
    warning for -e without either, as depmod's main() loads them."""
    if not (o.filesyms or o.symvers):
        if o.errsyms:
            err.write("depmod: WARNING: -e needs -E or -F\n")
        return None
    from fastlkm.depmod.inputs import kernel_symbols
    from fastlkm.depmod.modfiles import inside

    errors: list[str] = []
    syms = kernel_symbols(o.filesyms and inside(sysroot, o.filesyms),
                          o.symvers and inside(sysroot, o.symvers), o.symbol_prefix or "",
                          errors)
    for line in errors:
        err.write(f"depmod: ERROR: {line}\n")
    return syms


def _warnings(lines: list[str], err: IO[str]) -> None:
    for line in lines:
        err.write(f"depmod: WARNING: {line}\n")
