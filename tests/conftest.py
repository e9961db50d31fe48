"""Fixtures shared by the whole suite."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

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
        fetch, kmod_sid, kmod_testsuite = module.fetch, module.kmod_sid, module.kmod_testsuite

        def guarded_fetch(name: str) -> tuple[Path, str]:
            require_mark("corpus", f"the corpus kernel {name}")
            return fetch(name)

        def guarded_kmod_sid() -> Path:
            require_mark("corpus", "sid's kmod")
            return kmod_sid()

        def guarded_kmod_testsuite() -> Path:
            require_mark("corpus", "kmod's test suite")
            return kmod_testsuite()

        kbuild = module.kbuild

        def guarded_kbuild(name: str) -> Path:
            require_mark("corpus", f"the headers of {name}")
            return kbuild(name)

        module.fetch, module.kmod_sid, module.kbuild = \
            guarded_fetch, guarded_kmod_sid, guarded_kbuild
        module.kmod_testsuite = guarded_kmod_testsuite
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


def corpus_tool(name: str) -> Path:
    """scripts/corpus.py's *name* (``kmod_sid``, ``kmod_testsuite``): a folder, fetched
    and built once; unavailable, the test is skipped, or failed where real-kernel tests
    are required."""
    try:
        return getattr(corpus_module(), name)()
    except (SystemExit, subprocess.CalledProcessError, OSError) as e:
        skip_or_fail(f"{name} unavailable: {e}")
        raise


def require_tools(*tools: str) -> None:
    """Skip (or, where real-kernel tests are required, fail) when a tool is missing."""
    import shutil

    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        skip_or_fail(f"missing tools: {', '.join(missing)}")


def kmod_major(tool: str) -> int:
    """The major version of the kmod behind *tool* (a path or a name on PATH), from its
    ``--version`` line ``kmod version 30``."""
    out = subprocess.run([tool, "--version"], capture_output=True, text=True)
    first = out.stdout.splitlines()[0] if out.stdout else ""
    assert out.returncode == 0 and first.startswith("kmod version "), \
        f"{tool} --version: {out.stdout!r} {out.stderr!r}"
    return int(first.removeprefix("kmod version ").split(".")[0])


def require_kmod30() -> None:
    """The oracle on PATH is Debian 12's kmod 30, as the README's claims say."""
    require_tools("depmod", "modprobe")
    for tool in ("depmod", "modprobe"):
        assert kmod_major(tool) == 30, f"{tool} on PATH is not kmod 30"


def skip_or_fail(msg: str) -> None:
    """Skip on a developer's machine; fail where real-kernel tests are required."""
    if REQUIRED:
        pytest.fail(msg)
    pytest.skip(msg)


# What .ci/run checks (scripts/required_tests.py): every test marked with one of MARKS
# that was collected (before -k, -m and --deselect take any away), what became of every
# test, what was deselected, modules whose collection was skipped or failed, and which C
# extensions import.
MARKS = ("corpus", "qemu")
EXTENSIONS = ("fastlkm.lookup._native", "fastlkm.depmod._scan", "fastlkm.depmod._kmod_index")
_REPORT: dict[str, Any] = {"counts": {"corpus": 0, "qemu": 0, "skipped": 0, "passed": 0},
                           "marked": {}, "outcomes": {}, "deselected": [],
                           "collection": {}, "extensions": {}}
_CURRENT: list[pytest.Item] = []


def require_mark(mark: str, what: str) -> None:
    """Fail the running test if it reaches *what* without being marked *mark*: the list of
    tests CI requires (tests/required.txt) is made from the marks."""
    if _CURRENT and _CURRENT[-1].get_closest_marker(mark) is None:
        pytest.fail(f"{_CURRENT[-1].nodeid} uses {what} but is not marked "
                    f"@pytest.mark.{mark}", pytrace=False)


def pytest_sessionstart(session: pytest.Session) -> None:
    for name in EXTENSIONS:
        try:
            importlib.import_module(name)
            _REPORT["extensions"][name] = True
        except ImportError:
            _REPORT["extensions"][name] = False


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Record every marked test before anything is deselected."""
    for item in items:
        marks = [m for m in MARKS if item.get_closest_marker(m) is not None]
        if marks:
            _REPORT["marked"][item.nodeid] = marks


def pytest_deselected(items: list[pytest.Item]) -> None:
    _REPORT["deselected"].extend(item.nodeid for item in items)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.skipped or report.failed:
        _REPORT["collection"][report.nodeid] = (
            f"{report.outcome}: {str(report.longrepr)[-300:]}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[object]:
    _CURRENT.append(item)
    try:
        return (yield)
    finally:
        _CURRENT.pop()


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test that takes a real kernel must say so with the corpus mark."""
    uses = sorted({"corpus", "system"} & set(getattr(item, "fixturenames", ())))
    if uses and item.get_closest_marker("corpus") is None:
        pytest.fail(f"{item.nodeid} takes the fixture {uses[0]} but is not marked "
                    "@pytest.mark.corpus", pytrace=False)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    counts, outcomes = _REPORT["counts"], _REPORT["outcomes"]
    if report.skipped:
        counts["skipped"] += 1
        outcomes[report.nodeid] = "skipped"
    elif report.failed:
        outcomes[report.nodeid] = "failed"
    elif report.when == "call":
        counts["passed"] += 1
        outcomes.setdefault(report.nodeid, "passed")
        for mark in MARKS:
            if mark in report.keywords:
                counts[mark] += 1


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Where .ci/run asks for it, write what ran (scripts/required_tests.py reads it)."""
    out = os.environ.get("FASTLKM_TEST_REPORT")
    if out:
        import json

        Path(out).write_text(json.dumps({**_REPORT, "exitstatus": int(exitstatus)}))


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never read or fill the user's fastlkm cache; each test has its own."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
