"""fastlkm bench: the scenario, the report, and a tree processed by fastlkm hash whose
embedded tables give the numbers of what was written."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fastlkm.bench.run import read_module_list, run_bench
from fastlkm.cli import main
from fastlkm.lookup import native
from fastlkm.target import open_system, shipped_snapshot


def test_bench_default_on_snapshot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "b.json"
    plot = tmp_path / "b.png"
    assert main(["bench", str(shipped_snapshot()), "--repeats", "1", "--json", str(out),
                 "--plot", str(plot)]) == 0
    text = capsys.readouterr().out
    assert "scenario boot" in text and "2009 claim" in text
    doc = json.loads(out.read_text())
    by = {s["name"]: s for s in doc["strategies"]}
    assert set(by) >= {"linear", "bsearch", "sysv", "gnu", "perfect", "global"}
    # every strategy replays the same lookups and finds the same symbols
    assert len({s["counters"]["found"] for s in by.values()}) == 1
    assert by["linear"]["counters"]["strcmp"] > by["bsearch"]["counters"]["strcmp"] > \
        by["sysv"]["counters"]["strcmp"]
    assert by["perfect"]["memory_per_export"] <= 3.0
    if native.available():
        assert all(s["ns_per_lookup"] for s in by.values())
    assert plot.stat().st_size > 10_000


def test_module_list_file_and_lsmod_output(tmp_path: Path) -> None:
    f = tmp_path / "lsmod.txt"
    f.write_text("Module                  Size  Used by\next4 1040384  1\njbd2 1 1 ext4\n"
                 "# a comment\ncrc16\n")
    assert read_module_list(f) == ["ext4", "jbd2", "crc16"]
    s = open_system(str(shipped_snapshot()))
    b = run_bench(s, str(f), ["bsearch"], repeats=0, use_native=False)
    assert b.modules_loaded >= 3 and b.strategies[0].lookups > 100


@pytest.mark.corpus
def test_bench_on_embedded_tables(corpus, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A tree processed with --style gnu: the bench reads the modules' tables back from
    their sections and counts exactly what it counts with tables it builds itself."""
    from tests.depmod.test_depmod import _shadow_root

    root, release = corpus("6.1-cloud-amd64")
    sh = _shadow_root(root, release, tmp_path / "r")
    for d in ("boot", "usr"):
        (sh / d).symlink_to(root / d)
    moddir = sh / "lib/modules" / release
    real = Path(os.readlink(moddir / "kernel"))
    (moddir / "kernel").unlink()
    (moddir / "kernel/net").mkdir(parents=True)
    for sub in ("net/8021q", "net/802", "net/llc"):
        assert main(["hash", "--style", "gnu", "--strip-signature", "--output",
                     str(moddir / "kernel" / sub), str(real / sub)]) == 0
    names = tmp_path / "mods.txt"
    names.write_text("8021q\n")
    runs = []
    for extra in ([], ["--embedded"]):
        out = tmp_path / f"b{len(runs)}.json"
        assert main(["bench", str(sh), "--scenario", str(names), "--strategies", "gnu",
                     "--repeats", "0", "--json", str(out), *extra]) == 0
        runs.append(json.loads(out.read_text()))
    capsys.readouterr()
    a, b = runs[0]["strategies"][0], runs[1]["strategies"][0]
    assert "embedded" in runs[1]["scenario"] and runs[0]["modules_loaded"] >= 4
    assert a["counters"] == b["counters"] and a["memory"] == b["memory"]


def test_unload_adds_removals_and_the_report_counts_upkeep(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--unload ends the session by unloading every module, last first: the same lookups
    are found; with the native engine each strategy reports its index upkeep, and the
    all-in cost per load is lookups plus upkeep over the modules loaded."""
    out = tmp_path / "b.json"
    assert main(["bench", str(shipped_snapshot()), "--strategies", "gnu", "global",
                 "--repeats", "1", "--unload", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "then every module unloaded" in text and "index upkeep ms" in text
    doc = json.loads(out.read_text())
    plain = run_bench(open_system(str(shipped_snapshot())), "boot", ["gnu"], repeats=0,
                      use_native=False)
    assert doc["modules_loaded"] == plain.modules_loaded
    for s in doc["strategies"]:
        assert s["counters"]["found"] == plain.strategies[0].counters["found"]
        if native.available():
            assert s["ns_update"] is not None and s["ns_all"] == s["ns_total"] + s["ns_update"]
            assert s["ns_per_load"] == s["ns_all"] / doc["modules_loaded"]
        else:
            assert s["ns_update"] is None and s["ns_per_load"] is None
