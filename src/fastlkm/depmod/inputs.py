"""What a depmod run reads: the modules of a modules directory (or of a snapshot) as
:class:`~fastlkm.depmod.scan.DepmodModule` facts, through the facts cache, and the
kernel's symbols of ``-F``/``-E``.  Kept apart from :mod:`fastlkm.target` so that
``fastlkm depmod`` imports only what it uses (its whole run takes a tenth of a second)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fastlkm.depmod.scan import DepmodModule, from_module, scan_files
from fastlkm.errors import FastlkmError
from fastlkm.io.cache import FactsCache, FileKey

if TYPE_CHECKING:
    from fastlkm.kernel.facts import Export


def read_modules(moddir: Path, files: list[tuple[str, str]], jobs: int | None = None,
                 keys: list[FileKey | None] | None = None
                 ) -> tuple[list[DepmodModule], list[FastlkmError]]:
    """The facts depmod_load_modules() reads of each (path, shown path) of *files*
    (module_files()), on *jobs* threads; with their *keys* (file_key()) through the facts
    cache of *moddir*.  The files that could not be read are the errors beside."""
    if keys is None:
        got, errors = scan_files(files, jobs)
        return [m for m in got if m is not None], errors
    cache = FactsCache(str(moddir.resolve()))
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
    return [m for m in got if m is not None], errors


def snapshot_modules(path: str) -> tuple[list[DepmodModule], list[str]]:
    """The modules of a snapshot file and its modules.order."""
    from fastlkm.snapshot import load

    snap = load(path)
    return [from_module(m) for m in snap.modules], snap.order


def kernel_symbols(system_map: str | None, symvers: str | None, sym_prefix: str = "",
                   errors: list[str] | None = None) -> list[Export] | None:
    """The kernel's symbols as depmod -F (System.map, depmod_load_system_map()) or -E
    (Module.symvers, depmod_load_symvers()) reads them; -E wins.  A System.map line
    depmod cannot read is appended to *errors* in its words."""
    if symvers is not None:
        from fastlkm.kernel.symvers import parse_symvers, vmlinux_exports

        text = Path(symvers).read_text(errors="replace")
        return vmlinux_exports(parse_symvers(text, symvers))
    if system_map is not None:
        return system_map_symbols(Path(system_map).read_text(errors="replace"), system_map,
                                  sym_prefix, errors if errors is not None else [])
    return None


def system_map_symbols(text: str, path: str, sym_prefix: str, errors: list[str]
                       ) -> list[Export]:
    """depmod_load_system_map(): every ``__ksymtab_NAME`` in the third field of a line
    ``ADDRESS TYPE NAME`` (after the -P prefix), without CRC; Debian's one-line stub
    ("... B The real System.map is in the linux-image-<version>-dbg package") has
    none.  A line without two spaces is an error, and the rest is read."""
    from fastlkm.kernel.facts import Export

    out = []
    for n, line in enumerate(text.splitlines(keepends=True), 1):
        parts = line.split(" ", 2)
        if len(parts) < 3:
            errors.append(f"{path}:{n}: invalid line: {line}")   # its newline kept, as kmod
            continue
        name = parts[2]
        if sym_prefix and name.startswith(sym_prefix):
            name = name[1:]
        if name.startswith("__ksymtab_"):
            out.append(Export(name[len("__ksymtab_"):].split("\n", 1)[0]))
    return out
