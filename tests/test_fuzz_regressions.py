"""Every input the fuzzers ever found (fuzz/regressions/TARGET/*) is replayed, one test
each: the parser may only succeed or raise FormatError.  Seeded inputs (``seed-*``) prove
the replay reaches the parsers.  Plus a short smoke run of every target's seeds."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from fastlkm.errors import FormatError

FUZZ = Path(__file__).resolve().parents[1] / "fuzz"
sys.path.insert(0, str(FUZZ))

from targets import TARGETS, run_one  # noqa: E402

REGRESSIONS = FUZZ / "regressions"


def regressions() -> list[tuple[str, Path]]:
    return sorted((p.parent.name, p) for p in REGRESSIONS.glob("*/*") if p.is_file())


def test_every_regression_folder_names_a_target() -> None:
    """A folder no target reads would be replayed by nothing."""
    folders = {p.name for p in REGRESSIONS.iterdir() if p.is_dir()}
    assert folders and folders <= set(TARGETS)


@pytest.mark.parametrize(("target", "path"), regressions(),
                         ids=[f"{t}/{p.name}" for t, p in regressions()])
def test_regression(target: str, path: Path) -> None:
    run_one(target, path.read_bytes())   # anything but FormatError fails the test


def test_seeded_inputs_reach_the_parser() -> None:
    """The known inputs seeded among the regressions are replayed and each is refused by
    its parser (raised, not passed over)."""
    seeded = [(t, p) for t, p in regressions() if p.name.startswith("seed-")]
    assert {t for t, _ in seeded} >= {"elf", "codecs"}
    for target, path in seeded:
        with pytest.raises(FormatError):
            TARGETS[target](path.read_bytes())


@pytest.mark.parametrize("target", list(TARGETS))
def test_targets_take_garbage(target: str) -> None:
    for data in (b"", b"\0", b"\x7fELF", b"\xff" * 100, bytes(range(256)) * 4):
        run_one(target, data)
