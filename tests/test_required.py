"""scripts/required_tests.py, the check .ci/run makes after the suite: each way a
required test can fail to prove anything is named, and a complete run passes."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SCRIPTS

spec = importlib.util.spec_from_file_location("required_tests", SCRIPTS / "required_tests.py")
assert spec is not None and spec.loader is not None
required_tests = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = required_tests
spec.loader.exec_module(required_tests)

A, B, Q = "tests/a.py::test_a[x]", "tests/a.py::test_b", "tests/q.py::test_boot"
REQUIRED = {A: ["corpus"], B: ["corpus"], Q: ["corpus", "qemu"]}


def report(**change: Any) -> dict[str, Any]:
    """A run in which every required test passed, with *change* applied."""
    r: dict[str, Any] = {
        "counts": {"corpus": 3, "qemu": 1, "skipped": 0, "passed": 4},
        "marked": dict(REQUIRED), "outcomes": {A: "passed", B: "passed", Q: "passed",
                                               "tests/u.py::test_unit": "passed"},
        "deselected": [], "collection": {},
        "extensions": {"fastlkm.lookup._native": True, "fastlkm.depmod._scan": True},
    }
    r.update(change)
    return r


def without(d: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != key}


def test_a_complete_run_passes() -> None:
    assert required_tests.problems(report(), REQUIRED) == []


@pytest.mark.parametrize(("change", "said"), [
    ({"outcomes": without(report()["outcomes"], B), "deselected": [B]},
     "1 required tests deselected:"),
    ({"outcomes": {**report()["outcomes"], B: "skipped"}}, "1 required tests skipped:"),
    ({"outcomes": {**report()["outcomes"], Q: "failed"}}, "1 required tests failed:"),
    ({"outcomes": without(report()["outcomes"], B), "marked": without(REQUIRED, B)},
     "1 required tests not collected (deleted, or module skipped):"),
    ({"marked": {**REQUIRED, Q: ["corpus"]}},
     "1 required tests whose marks differ from tests/required.txt (a mark removed?):"),
    ({"marked": without(REQUIRED, A)}, "1 required tests no longer marked corpus or qemu:"),
    ({"marked": {**REQUIRED, "tests/new.py::test_new": ["qemu"]}},
     "1 corpus/qemu tests not in tests/required.txt:"),
    ({"extensions": {"fastlkm.lookup._native": False, "fastlkm.depmod._scan": True}},
     "1 C extensions missing (pip install -e . with gcc and python3-dev):"),
    ({"collection": {"tests/depmod/test_scan.py": "skipped: no scanner"}},
     "1 modules whose collection was skipped or failed:"),
    ({"outcomes": {**report()["outcomes"], "tests/u.py::test_unit": "skipped"}},
     "1 tests skipped (every test must run here):"),
])
def test_each_gap_is_named(change: dict[str, Any], said: str) -> None:
    found = required_tests.problems(report(**change), REQUIRED)
    assert said in found and len(found) >= 2
    if "not in tests/required.txt" in said:
        assert any("required_tests.py update" in line for line in found)


def test_check_reads_the_report_and_the_manifest(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = tmp_path / "required.txt"
    required_tests.write_manifest(REQUIRED, manifest)
    assert required_tests.read_manifest(manifest) == REQUIRED
    monkeypatch.setattr(required_tests, "MANIFEST", manifest)
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(report()))
    bad.write_text(json.dumps(report(deselected=[A], outcomes={B: "passed", Q: "passed"})))
    assert required_tests.check(str(good)) == 0
    assert required_tests.check(str(bad)) == 1
    assert required_tests.check(str(tmp_path / "missing.json")) == 1


def test_the_manifest_lists_marked_tests_only() -> None:
    """Every line of tests/required.txt names a corpus or qemu test, with its marks."""
    listed = required_tests.read_manifest()
    assert listed
    assert all(m and set(m) <= {"corpus", "qemu"} for m in listed.values())
    assert any("corpus" in m for m in listed.values())
    assert any("qemu" in m for m in listed.values())
