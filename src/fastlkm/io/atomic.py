"""Writers never lose data: temporary file in the same directory, fsync, rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def atomic_write(path: Path, data: bytes, mode: int | None = None,
                 sync_dir: bool = True) -> None:
    """Replace *path* with *data* so that a crash leaves the old or the new file whole.

    The mode of an existing file is kept unless *mode* is given (else 0644).  A caller
    writing several files into one directory may sync it once itself (sync_directory())."""
    path = Path(path)
    d = path.parent
    if mode is None:
        try:
            mode = path.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if sync_dir:
        sync_directory(d)


def sync_directory(d: Path) -> None:
    """Make the renames into *d* durable."""
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
