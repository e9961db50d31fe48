"""Fixtures shared by the whole suite."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from fastlkm.target import System, open_system

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
REQUIRED = os.environ.get("FASTLKM_REQUIRE_CORPUS") == "1"
KERNELS = ("6.1-cloud-amd64", "6.12-amd64", "6.1-686", "sid-cloud-amd64")


_CORPUS_MODULE: list[ModuleType] = []


def corpus_module() -> ModuleType:
    """scripts/corpus.py, loaded once."""
    if not _CORPUS_MODULE:
        spec = importlib.util.spec_from_file_location("fastlkm_corpus", SCRIPTS / "corpus.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up when made
        spec.loader.exec_module(module)
        _CORPUS_MODULE.append(module)
    return _CORPUS_MODULE[0]


@pytest.fixture(scope="session")
def corpus() -> Callable[[str], tuple[Path, str]]:
    """``corpus(name)`` is (root, release) of a real Debian kernel, fetched once and cached.

    Names are those of ``scripts/corpus.py --list``.  A kernel that cannot be fetched (no
    network, no apt) skips the test on a developer's machine and fails it where the real
    kernels are required (``FASTLKM_REQUIRE_CORPUS=1``, set by ``.ci/run``).
    """
    module = corpus_module()

    def fetch(name: str) -> tuple[Path, str]:
        try:
            return module.fetch(name)
        except (SystemExit, subprocess.CalledProcessError, OSError) as e:
            if REQUIRED:
                pytest.fail(f"corpus kernel {name} unavailable: {e}")
            pytest.skip(f"corpus kernel {name} unavailable: {e}")

    return fetch


@pytest.fixture(scope="session")
def system(corpus: Callable[[str], tuple[Path, str]]) -> Callable[..., System]:
    """``system(name, source=None)``: a corpus kernel opened once per session."""
    cache: dict[tuple[str, str | None], System] = {}

    def open_(name: str, source: str | None = None) -> System:
        key = (name, source)
        if key not in cache:
            root, _ = corpus(name)
            cache[key] = open_system(str(root), source=source)
        return cache[key]

    return open_


def require_tools(*tools: str) -> None:
    """Skip (or, where real-kernel tests are required, fail) when a tool is missing."""
    import shutil

    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        skip_or_fail(f"missing tools: {', '.join(missing)}")


def skip_or_fail(msg: str) -> None:
    """Skip on a developer's machine; fail where real-kernel tests are required."""
    if REQUIRED:
        pytest.fail(msg)
    pytest.skip(msg)


_RAN: dict[str, int] = {"corpus": 0, "qemu": 0, "skipped": 0, "passed": 0}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        _RAN["skipped"] += 1
    elif report.when == "call" and report.passed:
        _RAN["passed"] += 1
        for mark in ("corpus", "qemu"):
            if mark in report.keywords:
                _RAN[mark] += 1


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Where .ci/run asks for it, record how many real-kernel tests passed."""
    out = os.environ.get("FASTLKM_TEST_REPORT")
    if out:
        import json

        Path(out).write_text(json.dumps(_RAN))


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never read or fill the user's fastlkm cache; each test has its own."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
