"""Module files by name: where a release keeps them, which file names are modules, and the
module name of a file.  Light on purpose: a warm ``fastlkm depmod`` imports it."""

from __future__ import annotations

MODULE_DIRS = ("lib/modules", "usr/lib/modules")
MODULE_EXTS = (".ko", ".ko.xz", ".ko.zst", ".ko.gz", ".ko.bz2", ".ko.lz4")


def modname(path: str) -> str:
    """The module name of a file: basename up to the first '.', '-' -> '_'
    (modname_normalize() in kmod)."""
    return path.rpartition("/")[2].split(".", 1)[0].replace("-", "_")   # os.path.basename


def is_module_path(path: str) -> bool:
    return path.endswith(MODULE_EXTS)
