"""A persistent cache under ``$XDG_CACHE_HOME/fastlkm`` (default ``~/.cache/fastlkm``).

Two levels, both keyed by what the files are, so that a changed module is never served
stale: per module file its facts, keyed by (size, mtime, ctime, inode, device); and per
depmod run its output files, keyed by every module file's key, the configuration and the
options.  A cache file that cannot be read is a miss, never an
error; writes are atomic.
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


def _name(kind: str, ident: str) -> Path:
    """One file per kind and directory: its name readable, its CRC for uniqueness (the
    directory itself is stored inside and checked on load)."""
    tail = re.sub(r"[^A-Za-z0-9.+-]+", "_", ident)[-48:]
    return cache_dir() / f"{kind}-{zlib.crc32(ident.encode()):08x}-{tail}{SUFFIX}"


def _load(path: Path) -> object | None:
    try:
        with open(path, "rb") as f:
            data = f.read()
        if not data.startswith(HEADER):
            return None
        return marshal.loads(memoryview(data)[len(HEADER):])
    except (OSError, EOFError, ValueError, TypeError):
        return None


def _save(path: Path, value: object) -> None:
    with contextlib.suppress(OSError, ValueError):
        data = HEADER + marshal.dumps(value)
        path.parent.mkdir(parents=True, exist_ok=True)
        # a cache may be lost in a crash (a miss next time), never half-read: no fsync
        atomic_write(path, data, 0o600, durable=False)


class FactsCache:
    """Facts read from the files of one directory (fastlkm keeps modules' facts here),
    by file path; a value is served only while its file's key is unchanged."""

    def __init__(self, ident: str):
        self.path = _name("facts", ident)
        loaded = _load(self.path)
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
            _save(self.path, (self.ident, self.fresh))


def outputs_key(parts: list[object]) -> bytes:
    """What a run's outputs depend on (plain values: strings, numbers, tuples, lists,
    None), as one comparable value, kept whole, not hashed: a digest would cost more to
    compute than the comparison.  marshal version 2 writes no back-references, so equal
    values always give equal bytes (and equal bytes always mean equal values)."""
    return marshal.dumps(parts, 2)


def load_outputs(ident: str, key: str | bytes) -> dict[str, bytes] | None:
    got = _load(_name("outputs", ident))
    if isinstance(got, tuple) and len(got) == 3 and got[0] == ident and got[1] == key \
            and isinstance(got[2], dict):
        return got[2]
    return None


def save_outputs(ident: str, key: str | bytes, files: dict[str, bytes]) -> None:
    _save(_name("outputs", ident), (ident, key, files))
