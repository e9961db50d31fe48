"""What a depmod run reads: the modules of a modules directory (or of a snapshot) as
:class:`~fastlkm.kernel.scan.DepmodModule` facts, through the facts cache, and the
kernel's symbols of ``-F``/``-E``.  Kept apart from :mod:`fastlkm.target` so that
``fastlkm depmod`` imports only what it uses (its whole run takes a tenth of a second)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fastlkm.errors import FastlkmError
from fastlkm.io.cache import FactsCache, FileKey, file_key
from fastlkm.kernel.depmod_d import DepmodConfig
from fastlkm.kernel.modfiles import module_files, read_order, release_dir
from fastlkm.kernel.scan import DepmodModule, from_module, scan_files

if TYPE_CHECKING:
    from fastlkm.kernel.facts import Export


def modules_for_depmod(basedir: str | None, version: str | None, jobs: int | None = None,
                       config: DepmodConfig | None = None, use_cache: bool = False,
                       files: list[tuple[str, str]] | None = None,
                       keys: list[FileKey | None] | None = None
                       ) -> tuple[Path | None, list[DepmodModule], list[str], list[FastlkmError]]:
    """What depmod reads: ``BASEDIR/lib/modules/VERSION`` (or ``usr/lib/modules``), or the
    modules of a snapshot.  The kernel's own exports are not needed.  *files* and their
    *keys* (module_files(), file_key()) when the caller has them already."""
    moddir = release_dir(basedir, version)
    if moddir is None:
        from fastlkm.snapshot import load

        snap = load(version)  # type: ignore[arg-type]
        return None, [from_module(m) for m in snap.modules], snap.order, []
    if files is None:
        files = module_files(moddir, config)
    if not use_cache:
        got, errors = scan_files(files, jobs)
        return moddir, [m for m in got if m is not None], read_order(moddir), errors
    cache = FactsCache(str(moddir.resolve()))
    if keys is None:
        keys = [file_key(p) for p, _ in files]
    key_of = dict(zip((p for p, _ in files), keys, strict=True))

    def cached(path: str, shown: str) -> DepmodModule | None:
        hit = cache.get(path, key_of[path])   # stored as a plain tuple
        if isinstance(hit, tuple) and len(hit) == len(DepmodModule._fields) and hit[0] == shown:
            return DepmodModule._make(hit)
        return None

    got, errors = scan_files(files, jobs, cached)
    for (path, _), m in zip(files, got, strict=True):
        if m is not None and path not in cache.fresh:
            cache.put(path, key_of[path], tuple(m))
    cache.save()
    return moddir, [m for m in got if m is not None], read_order(moddir), errors


def depmod_kernel_symbols(system_map: str | None, symvers: str | None
                          ) -> list[Export] | None:
    """The kernel's symbols as depmod -F (System.map) or -E (Module.symvers) reads them."""
    if symvers is not None:
        from fastlkm.kernel.symvers import parse_symvers, vmlinux_exports

        text = Path(symvers).read_text(errors="replace")
        return vmlinux_exports(parse_symvers(text, symvers))
    if system_map is not None:
        from fastlkm.kernel.sysmap import parse_system_map

        text = Path(system_map).read_text(errors="replace")
        return parse_system_map(text, system_map)
    return None
