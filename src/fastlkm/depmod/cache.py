"""depmod's outputs cache: a run's output files, keyed by every module file's key, the
configuration, the options and fastlkm's version, so that an unchanged tree is answered
without reading a module (the facts of single files: fastlkm.io.cache.FactsCache)."""

from __future__ import annotations

import marshal
import os
from typing import TYPE_CHECKING

from fastlkm.io.cache import FileKey, cache_file, file_key, load_value, save_value

if TYPE_CHECKING:
    from fastlkm.depmod.config import DepmodConfig

BESIDE = ("modules.order", "modules.builtin", "modules.builtin.modinfo")   # also read


def run_key(moddir: str, files: list[tuple[str, str]], keys: list[FileKey | None],
            config: DepmodConfig, options: list[object]) -> bytes:
    """The key of a depmod run over *files* (with their *keys*) of *moddir*."""
    from fastlkm import __version__

    inputs = [(p, shown, k) for (p, shown), k in zip(files, keys, strict=True)]
    extra = [(n, file_key(os.path.join(moddir, n))) for n in BESIDE]
    return outputs_key([__version__, inputs, extra, repr(config), *options])


def outputs_key(parts: list[object]) -> bytes:
    """What a run's outputs depend on (plain values: strings, numbers, tuples, lists,
    None), as one comparable value, kept whole, not hashed: a digest would cost more to
    compute than the comparison.  marshal version 2 writes no back-references, so equal
    values always give equal bytes (and equal bytes always mean equal values)."""
    return marshal.dumps(parts, 2)


def load_outputs(ident: str, key: str | bytes) -> dict[str, bytes] | None:
    got = load_value(cache_file("outputs", ident))
    if isinstance(got, tuple) and len(got) == 3 and got[0] == ident and got[1] == key \
            and isinstance(got[2], dict):
        return got[2]
    return None


def save_outputs(ident: str, key: str | bytes, files: dict[str, bytes]) -> None:
    save_value(cache_file("outputs", ident), (ident, key, files))
