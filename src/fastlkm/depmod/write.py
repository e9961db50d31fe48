"""Write a set of output files atomically, each one whole or not at all."""

from __future__ import annotations

from pathlib import Path

from fastlkm.io.atomic import atomic_write, sync_directory


def write_outputs(directory: Path, files: dict[str, bytes]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        atomic_write(directory / name, data, sync_dir=False)
    sync_directory(directory)
