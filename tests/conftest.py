"""Fixtures shared by the whole suite."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


@pytest.fixture(scope="session")
def corpus() -> Callable[[str], tuple[Path, str]]:
    """``corpus(name)`` is (root, release) of a real Debian kernel, fetched once and cached.

    Names are those of ``scripts/corpus.py --list``; a kernel that cannot be fetched (no
    network, no apt) skips the test instead of failing it.
    """
    spec = importlib.util.spec_from_file_location("fastlkm_corpus", SCRIPTS / "corpus.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being made
    spec.loader.exec_module(module)

    def fetch(name: str) -> tuple[Path, str]:
        try:
            return module.fetch(name)
        except (SystemExit, subprocess.CalledProcessError, OSError) as e:
            pytest.skip(f"corpus kernel {name} unavailable: {e}")

    return fetch
