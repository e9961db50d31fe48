"""What depmod reads of each module file, fast: the facts kmod's depmod takes from a
module (kmod_module_get_symbols(), kmod_module_get_dependency_symbols(), .modinfo) and
nothing else.

The native scanner (``_scan.c``) reads them in one pass of C without the GIL: plain files
are read and scanned by its own threads, compressed ones are decompressed (the codecs
release the GIL too) and scanned on Python threads, every core busy either way.  It
declines anything unusual; those files go through the reference decoder
(:func:`~fastlkm.kernel.module.parse_module`), whose facts give the same
:class:`DepmodModule` and whose errors are the ones reported.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from fastlkm.errors import FastlkmError, guarded
from fastlkm.kernel.modname import modname

if TYPE_CHECKING:
    from fastlkm.kernel.facts import Module

try:
    from fastlkm.depmod import _scan as _native
except ImportError:  # built without a C compiler: the reference decoder does it all
    _native = None  # type: ignore[assignment]


DEP_WEAK = 1      # a weak undefined symbol: never reported as unknown
DEP_DOTTED = 2    # a name with a leading '.', which depmod strips (ppc64 ELFv1)
MODINFO_KEYS = ("alias", "softdep", "weakdep")   # what depmod's outputs take of .modinfo


class DepmodModule(NamedTuple):
    """One module as depmod reads it."""

    path: str                       # as modules.dep names it
    exports: tuple[str, ...]        # export names, table by table (find_symbol() order)
    crcs: tuple[int, ...]           # their CRCs, 0 without one
    kmod_symbols: tuple[str, ...]   # the names as kmod_elf_get_symbols() reads them
    deps: tuple[str, ...]           # kmod_elf_get_dependency_symbols(), in its order
    flags: bytes                    # per dep: DEP_WEAK, DEP_DOTTED
    dep_crcs: bytes                 # per dep: the CRC it expects (0 without), u32 LE
    aliases: tuple[str, ...]        # .modinfo alias= values, in file order
    softdeps: tuple[str, ...]       # .modinfo softdep= values
    weakdeps: tuple[str, ...]       # .modinfo weakdep= values

    @property
    def name(self) -> str:
        return modname(self.path)


def available() -> bool:
    return _native is not None


def from_module(m: Module) -> DepmodModule:
    """The reference decoder's facts as depmod reads them."""
    deps = [(i.name, i.weak, i.crc or 0) for i in m.imports]
    seen = {i.name for i in m.imports}
    deps += [(n, False, c) for n, c in m.versions if n not in seen]
    exports = tuple(e.name for e in m.exports)
    return DepmodModule(
        m.path, exports, tuple(e.crc or 0 for e in m.exports),
        m.kmod_symbols if m.kmod_symbols is not None else exports,
        tuple(n for n, _, _ in deps),
        bytes((DEP_WEAK if w else 0) | (DEP_DOTTED if n[:1] == "." else 0)
              for n, w, _ in deps),
        b"".join(c.to_bytes(4, "little") for _, _, c in deps),
        *(tuple(m.info(k)) for k in MODINFO_KEYS))


def scan_image(data: bytes, path: str, shown: str) -> DepmodModule:
    """The facts of one decompressed image; FormatError as the reference reports it."""
    if _native is not None:
        got = _native.scan(data)
        if got is not None:
            return DepmodModule(shown, *got)
    from fastlkm.kernel.module import parse_module  # the reference decoder, when needed

    return from_module(parse_module(data, path, shown))


def scan_file(path: str, shown: str) -> DepmodModule:
    from fastlkm.io.codecs import decompress_file  # only what C left: compressed files

    return guarded(lambda: scan_image(decompress_file(path), path, shown), path, "module")


def scan_files(files: list[tuple[str, str]], jobs: int | None = None,
               cached: Callable[[str, str], DepmodModule | None] | None = None
               ) -> tuple[list[DepmodModule | None], list[FastlkmError]]:
    """Scan (path, shown path) files on *jobs* threads (default: every core); *cached*
    serves a file's facts without reading it.  Results in *files* order, None where the
    file could not be read; the errors beside."""
    out: list[DepmodModule | FastlkmError | None] = [None] * len(files)
    todo = []
    for i, (path, shown) in enumerate(files):
        hit = cached(path, shown) if cached is not None else None
        if hit is not None:
            out[i] = hit
        else:
            todo.append(i)

    def one(i: int) -> None:
        try:
            out[i] = scan_file(*files[i])
        except FastlkmError as e:
            out[i] = e

    jobs = jobs or os.cpu_count() or 1
    if _native is not None:
        # plain files are read and scanned in C on threads; what it leaves (compressed,
        # unreadable, declined) goes through Python below
        plain = [i for i in todo if files[i][0].endswith(".ko")]
        from fastlkm.io.codecs import max_decompressed

        got = _native.scan_files([os.fsencode(files[i][0]) for i in plain], jobs,
                                 max_decompressed())
        for i, g in zip(plain, got, strict=True):
            if g is not None:
                out[i] = DepmodModule(files[i][1], *g)
        todo = [i for i in todo if out[i] is None]
    if jobs <= 1 or len(todo) < 8:
        for i in todo:
            one(i)
    else:
        from concurrent.futures import ThreadPoolExecutor  # only when there is work to share

        with ThreadPoolExecutor(max_workers=jobs) as ex:
            for _ in ex.map(one, todo, chunksize=16):
                pass
    errors = [r for r in out if isinstance(r, FastlkmError)]
    return [r if isinstance(r, DepmodModule) else None for r in out], errors
