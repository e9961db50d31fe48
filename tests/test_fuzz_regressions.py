"""Every input the fuzzers ever found (fuzz/regressions/TARGET/*) is replayed: each may
only succeed or raise FormatError.  Plus a short smoke run of every target's seeds."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parents[1] / "fuzz"
sys.path.insert(0, str(FUZZ))

from targets import TARGETS, run_one  # noqa: E402


def test_regressions() -> None:
    cases = sorted((p.parent.name, p) for p in (FUZZ / "regressions").glob("*/*")
                   if p.is_file() and p.parent.name in TARGETS)
    for target, path in cases:
        run_one(target, path.read_bytes())


@pytest.mark.parametrize("target", list(TARGETS))
def test_targets_take_garbage(target: str) -> None:
    for data in (b"", b"\0", b"\x7fELF", b"\xff" * 100, bytes(range(256)) * 4):
        run_one(target, data)
