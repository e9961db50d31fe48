#!/usr/bin/env python3
"""Regenerate the snapshot shipped in the package from the newest Debian 6.12 amd64 kernel.

Usage: make_snapshot.py  (writes src/fastlkm/data/debian-6.12-amd64.snap)
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
spec = importlib.util.spec_from_file_location("fastlkm_corpus", HERE / "corpus.py")
assert spec is not None and spec.loader is not None
corpus = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = corpus
spec.loader.exec_module(corpus)

from fastlkm.snapshot import save  # noqa: E402
from fastlkm.target import SHIPPED_SNAPSHOT, open_system, to_snapshot  # noqa: E402


def main() -> int:
    root, release = corpus.fetch("6.12-amd64")
    system = open_system(str(root))
    out = HERE.parent / "src/fastlkm/data" / SHIPPED_SNAPSHOT
    size = save(to_snapshot(system), out)
    print(f"{out}: {release}, {len(system.modules)} modules, {size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
