"""A persistent cache under ``$XDG_CACHE_HOME/fastlkm`` (default ``~/.cache/fastlkm``):
values stored per kind and directory (:func:`load_value`, :func:`save_value`), and the
facts read from a directory's files, each served only while its file is unchanged, by
(size, mtime, ctime, inode, device) (:class:`FactsCache`).  A cache file that cannot be
read is a miss, never an error; writes are atomic.  (depmod's use of it:
fastlkm.depmod.cache.)
"""

from __future__ import annotations

import contextlib
import marshal
import os
import re
import sys
import zlib
from pathlib import Path
from typing import Any

from fastlkm.io.atomic import atomic_write

FORMAT = 3
# marshal is the fastest way in and out for plain tuples, strings and bytes, and it cannot
# run code (pickle can); its format belongs to one Python, so the interpreter is part of
# the header and a cache written by another one is a miss
HEADER = f"fastlkm-cache {FORMAT} {sys.implementation.cache_tag}\n".encode()
SUFFIX = ".cache"
FileKey = tuple[int, int, int, int, int]


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"),
                                                            ".cache")
    return Path(base) / "fastlkm"


def file_key(path: str) -> FileKey | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def cache_file(kind: str, ident: str) -> Path:
    """One file per kind and directory: its name readable, its CRC for uniqueness (the
    directory itself is stored inside and checked on load)."""
    tail = re.sub(r"[^A-Za-z0-9.+-]+", "_", ident)[-48:]
    return cache_dir() / f"{kind}-{zlib.crc32(ident.encode()):08x}-{tail}{SUFFIX}"


def load_value(path: Path) -> object | None:
    try:
        with open(path, "rb") as f:
            data = f.read()
        if not data.startswith(HEADER):
            return None
        return marshal.loads(memoryview(data)[len(HEADER):])
    except (OSError, EOFError, ValueError, TypeError):
        return None


def save_value(path: Path, value: object) -> None:
    with contextlib.suppress(OSError, ValueError):
        data = HEADER + marshal.dumps(value)
        path.parent.mkdir(parents=True, exist_ok=True)
        # a cache may be lost in a crash (a miss next time), never half-read: no fsync
        atomic_write(path, data, 0o600, durable=False)


class FactsCache:
    """Facts read from the files of one directory (fastlkm keeps modules' facts here),
    by file path; a value is served only while its file's key is unchanged."""

    def __init__(self, ident: str):
        self.path = cache_file("facts", ident)
        loaded = load_value(self.path)
        self.ident = ident
        self.entries: dict[str, tuple[FileKey, Any]] = \
            loaded[1] if isinstance(loaded, tuple) and len(loaded) == 2 and \
            loaded[0] == ident and isinstance(loaded[1], dict) else {}
        self.fresh: dict[str, tuple[FileKey, Any]] = {}
        self.hits = 0

    def get(self, path: str, key: FileKey | None) -> Any:
        e = self.entries.get(path)
        if e is not None and key is not None and e[0] == key:
            self.fresh[path] = e
            self.hits += 1
            return e[1]
        return None

    def put(self, path: str, key: FileKey | None, value: Any) -> None:
        if key is not None:
            self.fresh[path] = (key, value)

    def save(self) -> None:
        """Keep what this run saw (files gone from the tree drop out)."""
        if self.fresh != self.entries:
            save_value(self.path, (self.ident, self.fresh))
