"""Cyclic module dependencies: fastlkm depmod says what kmod's depmod says (its "Cycle
detected:" lines in its order, "Found N modules in dependency cycles!", status 1, nothing
written), checked against kmod 30 and kmod 34 on trees of real ELF modules whose imports
form random graphs; and it finishes where kmod never does."""

from __future__ import annotations

import random
import subprocess
from itertools import pairwise
from pathlib import Path

import pytest

from fastlkm.cli import main
from fastlkm.depmod import compute as depmod
from fastlkm.depmod.compute import build
from fastlkm.errors import CycleError
from fastlkm.kernel.facts import Export, Import, Module
from tests.conftest import require_kmod30
from tests.elf.elfbuild import (
    EM_X86_64,
    SHF_ALLOC,
    SHF_EXECINSTR,
    SHF_WRITE,
    STB_LOCAL,
    STT_FUNC,
    ElfBuilder,
    Reloc,
)

RELEASE = "6.0.0"
Graph = dict[str, list[str]]   # module -> the modules whose symbols it imports, in order


def dep_module(exports: list[str], imports: list[str]) -> bytes:
    """A module exporting *exports* (PREL32 __ksymtab entries) and importing *imports*
    (undefined symbols), as kmod's and fastlkm's depmod read them."""
    b = ElfBuilder(True, True, EM_X86_64)
    b.add(".text", b"\xc3" * (16 * len(exports) + 16), flags=SHF_ALLOC | SHF_EXECINSTR,
          align=16)
    strings = b""
    for i, e in enumerate(exports):
        b.sym(e, 16 * i, ".text", type=STT_FUNC, size=16)
        b.sym(f"__kstrtab_{e}", len(strings), "__ksymtab_strings", bind=STB_LOCAL)
        strings += e.encode() + b"\0"
    b.add("__ksymtab", bytes(12 * len(exports)), align=4)
    b.relocate("__ksymtab", [r for i, e in enumerate(exports) for r in
                             (Reloc(12 * i, e, 2), Reloc(12 * i + 4, f"__kstrtab_{e}", 2))])
    b.add("__ksymtab_strings", strings, flags=SHF_ALLOC | 0x30, entsize=1)
    for n in imports:
        b.sym(n)
    b.add(".modinfo", b"license=GPL\0")
    # struct module: without it the kernel refuses the module ("No module found in object")
    b.add(".gnu.linkonce.this_module", bytes(64), flags=SHF_ALLOC | SHF_WRITE, align=64)
    return b.build()


def make_tree(root: Path, graph: Graph, order: list[str] | None = None) -> Path:
    """ROOT/lib/modules/RELEASE/kernel/<m>.ko per module of *graph*, each exporting f_<m>;
    modules.order lists *order* when given."""
    moddir = root / "lib/modules" / RELEASE
    (moddir / "kernel").mkdir(parents=True)
    for m, deps in graph.items():
        (moddir / "kernel" / f"{m}.ko").write_bytes(
            dep_module([f"f_{m}"], [f"f_{d}" for d in deps]))
    if order is not None:
        (moddir / "modules.order").write_text("".join(f"kernel/{m}.ko\n" for m in order))
    return moddir


def random_graph(seed: int) -> tuple[Graph, list[str] | None]:
    rnd = random.Random(seed)
    names = [f"m{i}" for i in range(rnd.randint(2, 7))]
    p = rnd.choice([0.2, 0.35, 0.5])
    graph = {a: [b for b in names if rnd.random() < p and (b != a or rnd.random() < 0.2)]
             for a in names}
    for deps in graph.values():
        rnd.shuffle(deps)
    order = None
    if rnd.random() < 0.5:
        order = names[:]
        rnd.shuffle(order)
    return graph, order


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "ERROR" in line]


def run_kmod(tool: str, root: Path) -> tuple[int, list[str]] | None:
    """kmod's status and ERROR lines, or None when it does not finish in 3 s."""
    try:
        p = subprocess.run([tool, "-b", str(root), RELEASE], capture_output=True, text=True,
                           timeout=3)
    except subprocess.TimeoutExpired:
        return None
    return p.returncode, _errors(p.stderr)


def run_ours(root: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    capsys.readouterr()
    status = main(["depmod", "-b", str(root), RELEASE, "--no-cache"])
    return status, _errors(capsys.readouterr().err)


def _written(moddir: Path) -> list[str]:
    return sorted(p.name for p in moddir.iterdir() if p.name.startswith("modules.")
                  and p.name != "modules.order")


def _facts(graph: Graph) -> list[Module]:
    return [Module(m, f"kernel/{m}.ko", exports=(Export(f"f_{m}"),),
                   imports=tuple(Import(f"f_{d}") for d in deps)) for m, deps in graph.items()]


def _cycle(graph: Graph, order: list[str] | None = None) -> CycleError:
    with pytest.raises(CycleError) as e:
        build(_facts(graph), [f"kernel/{m}.ko" for m in order or []])
    return e.value


# --- against kmod's depmod ------------------------------------------------------------

FIXED = {
    "two": ({"a": ["b"], "b": ["a"], "c": ["a"]}, None),
    "self": ({"a": ["a"], "b": ["a"]}, ["b", "a"]),
    "three": ({"a": ["b"], "b": ["c"], "c": ["a"], "d": []}, ["d", "c", "b", "a"]),
    # a module behind a cycle that was walked before it is a root: kmod names it alone
    "behind": ({"a": ["b"], "b": ["a", "x"], "x": ["y"], "y": []}, ["a", "b", "x", "y"]),
}


@pytest.mark.corpus   # sid's kmod, fetched by scripts/corpus.py
@pytest.mark.parametrize("name", list(FIXED))
def test_cycles_as_kmod_reports_them(name: str, tmp_path: Path, kmod34: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Same ERROR lines in the same order, status 1, and no output file, as kmod 30 and
    kmod 34 on the same tree."""
    require_kmod30()
    graph, order = FIXED[name]
    moddir = make_tree(tmp_path, graph, order)
    for tool in ("depmod", str(kmod34 / "depmod")):
        assert run_kmod(tool, tmp_path) == run_ours(tmp_path, capsys)
        assert _written(moddir) == []
    if name == "behind":
        assert run_ours(tmp_path, capsys)[1] == [
            "depmod: ERROR: Cycle detected: a -> b -> a", "depmod: ERROR: Cycle detected: x",
            "depmod: ERROR: Found 2 modules in dependency cycles!"]


@pytest.mark.corpus
def test_random_graphs_as_kmod(tmp_path: Path, kmod34: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    """60 random import graphs of 2 to 7 modules, with and without modules.order: fastlkm
    always agrees with the graph itself (a cycle: status 1, nothing written, every module
    of every cycle named and counted; none: status 0 and the files written), and wherever
    kmod 30 finishes normally it prints the same lines and status (the order of the roots
    follows kmod's list quirks, the walk its stack); where kmod aborts (the assert on its
    stack in depmod_report_cycles_from_root()) or spins, fastlkm still finishes."""
    require_kmod30()
    same = 0
    for seed in range(60):
        root = tmp_path / str(seed)
        graph, order = random_graph(seed)
        moddir = make_tree(root, graph, order)
        kmod = run_kmod("depmod", root)
        assert run_kmod(str(kmod34 / "depmod"), root) == kmod, seed   # 30 and 34 agree
        ours = run_ours(root, capsys)
        cyclic = _in_cycles(graph)
        assert ours[0] == (1 if cyclic else 0), (seed, graph)
        assert (_written(moddir) == []) == bool(cyclic), seed   # a cycle: nothing written
        if cyclic:
            _check_against_graph(ours[1], graph, cyclic, seed)
        else:
            assert ours[1] == [], seed
        if kmod is not None and kmod[0] in (0, 1):
            assert kmod[0] == (1 if cyclic else 0), seed   # the oracle sees the graph too
            assert ours == kmod, (seed, graph, order)
            same += 1
    assert same >= 30


def _check_against_graph(lines: list[str], graph: Graph, cyclic: set[str], seed: int) -> None:
    """Every cycle line is a real cycle of *graph* (each step an import), every module of
    every cycle is named, and the count is of modules in cycles.  (A line naming one
    module alone is kmod's way of naming a root it reached again; it counts none.)"""
    walks = [line.removeprefix("depmod: ERROR: Cycle detected: ").split(" -> ")
             for line in lines[:-1]]
    for w in walks:
        assert set(w) <= set(graph), (seed, w)
        if len(w) > 1:
            assert w[0] == w[-1] and all(b in graph[a] for a, b in pairwise(w)), (seed, w)
    assert cyclic <= {n for w in walks for n in w}, seed
    counted = int(lines[-1].removeprefix("depmod: ERROR: Found ").split()[0])
    assert lines[-1] == f"depmod: ERROR: Found {counted} modules in dependency cycles!"
    assert {n for w in walks if len(w) > 1 for n in w} <= cyclic, seed
    assert 0 < counted <= len(cyclic), seed


def _in_cycles(graph: Graph) -> set[str]:
    def reach(a: str) -> set[str]:
        seen: set[str] = set()
        todo = list(graph[a])
        while todo:
            x = todo.pop()
            if x not in seen:
                seen.add(x)
                todo.extend(graph[x])
        return seen

    return {a for a in graph if a in reach(a)}


@pytest.mark.corpus
def test_cycles_that_kmod_never_finishes(tmp_path: Path, kmod34: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Two cycles, one behind the other: kmod 30 and 34 walk the second from the first's
    root forever (this test gives them 3 s); fastlkm lists both and stops."""
    require_kmod30()
    graph = {"a": ["b"], "b": ["a", "c"], "c": ["d"], "d": ["c"]}
    make_tree(tmp_path, graph)
    assert run_kmod("depmod", tmp_path) is None
    assert run_kmod(str(kmod34 / "depmod"), tmp_path) is None
    status, lines = run_ours(tmp_path, capsys)
    assert status == 1
    cycles = [line.removeprefix("depmod: ERROR: Cycle detected: ").split(" -> ")
              for line in lines[:-1]]
    assert sorted(sorted(set(c)) for c in cycles) == [["a", "b"], ["c", "d"]]
    _check_against_graph(lines, graph, _in_cycles(graph), 0)
    assert all(c[0] == c[-1] and len(c) == 3 for c in cycles)
    assert lines[-1] == "depmod: ERROR: Found 4 modules in dependency cycles!"


# --- the report itself -----------------------------------------------------------------

def test_no_cycle_no_error() -> None:
    dm = build(_facts({"a": [], "b": ["a"]}), [])
    assert dm.cycles == []


def test_every_cycle_through_a_root_is_listed() -> None:
    e = _cycle({"a": ["b", "c"], "b": ["a"], "c": ["a"]}, ["a", "b", "c"])
    assert e.lines == ["Cycle detected: a -> c -> a", "Cycle detected: a -> b -> a",
                       "Found 3 modules in dependency cycles!"]
    assert e.complete


def test_a_dense_graph_is_cut_short(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every module imports every other: kmod prints every simple cycle through the first
    root (n-1)! of them; fastlkm stops after its step budget and counts by components."""
    n = 12
    names = [f"m{i}" for i in range(n)]
    monkeypatch.setattr(depmod, "CYCLE_WALK_BUDGET", 10_000)
    e = _cycle({a: [b for b in names if b != a] for a in names})
    assert not e.complete
    assert 1 < len(e.lines) < 10_000
    assert e.lines[-1] == f"Found {n} modules in dependency cycles!"


def test_cli_says_when_the_list_is_cut(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    names = [f"m{i}" for i in range(8)]
    moddir = make_tree(tmp_path, {a: [b for b in names if b != a] for a in names})
    monkeypatch.setattr(depmod, "CYCLE_WALK_BUDGET", 100)
    assert main(["depmod", "-b", str(tmp_path), RELEASE, "--no-cache"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[-2] == "depmod: ERROR: Found 8 modules in dependency cycles!"
    assert err[-1].startswith("fastlkm: too many cycles")
    assert _written(moddir) == []
