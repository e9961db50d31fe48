"""Fixtures of the depmod tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import corpus_tool, kmod_major


@pytest.fixture(scope="module")
def kmod34() -> Path:
    """A folder with sid's kmod 34 ``depmod`` and ``modprobe`` (scripts/corpus.py)."""
    d = corpus_tool("kmod_sid")
    for tool in ("depmod", "modprobe"):
        assert kmod_major(str(d / tool)) == 34, f"sid's {tool} is not kmod 34"
    return d
