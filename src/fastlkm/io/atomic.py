"""Writers never lose data: temporary file in the same directory, fsync, rename."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable
from pathlib import Path

# the temporary files below: ".NAME." + 8 random hex digits + ".tmp"; a module walk never takes
# them for modules (they end in .tmp) and clean_temporaries() removes them (older ones
# had mkstemp's 8 characters of [a-z0-9_])
_TEMPORARY = re.compile(r"\.(.+)\.[a-z0-9_]{8}\.tmp")


def _temporary_beside(path: Path) -> Path:
    return path.parent / f".{path.name}.{os.urandom(4).hex()}.tmp"


def atomic_write(path: Path, data: bytes, mode: int | None = None,
                 sync_dir: bool = True, durable: bool = True) -> None:
    """Replace *path* with *data* so that a crash leaves the old or the new file whole.

    The mode of an existing file is kept unless *mode* is given (else 0644).  A caller
    writing several files into one directory may sync it once itself (sync_directory()).
    Not *durable*: no fsync, so a power cut may lose the write (but a process killed at
    any moment still leaves the old or the new file whole)."""
    path = Path(path)
    d = path.parent
    if mode is None:
        try:
            mode = path.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o644
    for _ in range(100):
        tmp = _temporary_beside(path)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"no free temporary name beside {path}")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if sync_dir and durable:
        sync_directory(d)


def sync_directory(d: Path) -> None:
    """Make the renames into *d* durable."""
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def atomic_symlink(target: str, link: Path) -> None:
    """Make *link* a symbolic link to *target*, replacing what is there in one rename."""
    link = Path(link)
    for _ in range(100):
        tmp = _temporary_beside(link)
        try:
            os.symlink(target, tmp)
        except FileExistsError:
            continue
        try:
            os.replace(tmp, link)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return
    raise FileExistsError(f"no free temporary name beside {link}")


def clean_temporaries(paths: Iterable[str]) -> int:
    """Remove the temporary files a writer killed mid-write left beside *paths* (the files
    about to be written); returns how many."""
    by_dir: dict[str, set[str]] = {}
    for p in paths:
        by_dir.setdefault(os.path.dirname(p) or ".", set()).add(os.path.basename(p))
    removed = 0
    for d, names in by_dir.items():
        try:
            entries = os.listdir(d)
        except OSError:
            continue
        for e in entries:
            m = _TEMPORARY.fullmatch(e)
            if m and m.group(1) in names:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(d, e))
                    removed += 1
    return removed
