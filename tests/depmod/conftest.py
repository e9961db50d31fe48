"""Fixtures of the depmod tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import corpus_module, kmod_major, skip_or_fail


def _kmod_sid() -> Path:
    try:
        return corpus_module().kmod_sid()
    except (SystemExit, subprocess.CalledProcessError, OSError) as e:
        skip_or_fail(f"sid's kmod unavailable: {e}")
        raise


@pytest.fixture(scope="module")
def kmod34() -> Path:
    """A folder with sid's kmod 34 ``depmod`` and ``modprobe`` (scripts/corpus.py)."""
    d = _kmod_sid()
    for tool in ("depmod", "modprobe"):
        assert kmod_major(str(d / tool)) == 34, f"sid's {tool} is not kmod 34"
    return d
