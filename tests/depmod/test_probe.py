"""One rule for module dependencies, depmod's, and modprobe's order of insertion: decided
against kmod's own modprobe (30 and 34) on a real tree given a second exporter of some
names, where the last exporter in depmod's order wins, not the first one found."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from fastlkm.depmod.probe import Probe, dependencies, probe_order
from fastlkm.kernel.facts import Export, Import, Module
from fastlkm.target import open_system
from tests.conftest import corpus_module, require_kmod30


def mod(name: str, imports: tuple[str, ...] = (), exports: tuple[str, ...] = (),
        path: str | None = None) -> Module:
    return Module(name, path or f"kernel/{name}.ko",
                  exports=tuple(Export(e) for e in exports),
                  imports=tuple(Import(i) for i in imports))


def names(modules: list[Module]) -> list[str]:
    return [m.name for m in modules]


def test_dependencies_first_in_modprobes_order() -> None:
    a = mod("a", exports=("fa",))
    b = mod("b", ("fa",), exports=("fb",))
    c = mod("c", ("fb", "fa"))
    order = ["kernel/a.ko", "kernel/b.ko", "kernel/c.ko"]
    assert dependencies([c, b, a], order) == {"a": [], "b": ["a"], "c": ["b", "a"]}
    assert names(probe_order([c, b, a], order)) == ["a", "b", "c"]
    assert names(probe_order([c, b, a], order, ["b"])) == ["a", "b"]
    assert names(probe_order([c, b, a], order, ["c", "a"])) == ["a", "b", "c"]
    assert names(probe_order([c, b, a], order, ["no_such"])) == []


def test_the_last_exporter_in_depmods_order_wins() -> None:
    """Two modules export fx: the one modules.order lists later owns it, and a module
    modules.order does not list comes after every listed one."""
    x1, x2 = mod("x1", exports=("fx",)), mod("x2", exports=("fx",))
    user = mod("user", ("fx",))
    assert dependencies([x1, x2, user], ["kernel/x1.ko", "kernel/x2.ko"])["user"] == ["x2"]
    assert dependencies([x1, x2, user], ["kernel/x2.ko", "kernel/x1.ko"])["user"] == ["x1"]
    extra = mod("x3", exports=("fx",), path="extra/x3.ko")
    assert dependencies([extra, x1, x2, user], ["kernel/x1.ko", "kernel/x2.ko"]
                        )["user"] == ["x3"]
    # the kernel is never asked to choose: only the owner is inserted before its user
    assert names(probe_order([x1, x2, user], ["kernel/x1.ko", "kernel/x2.ko"], ["user"])
                 ) == ["x2", "user"]


def test_a_cycle_is_broken_where_it_is_met() -> None:
    a = mod("a", ("fb",), exports=("fa",))
    b = mod("b", ("fa",), exports=("fb",))
    top = mod("top", ("fa",))
    order = ["kernel/a.ko", "kernel/b.ko", "kernel/top.ko"]
    assert names(probe_order([a, b, top], order, ["top"])) == ["b", "a", "top"]


def _twin_tree(tmp_path: Path) -> tuple[Path, Path, str, list[str]]:
    """A shadow of the 6.1 cloud tree where two exporting modules have a twin under
    another name: one in extra/ (unlisted: last in depmod's order), one in updates/ that
    modules.order lists first (so the original, listed later, keeps its names).  Returns
    (root, moddir, release, the users of the twinned names)."""
    cm = corpus_module()
    root, release = cm.fetch("6.1-cloud-amd64")
    sh = cm.shadow_root(root, release, tmp_path / "root")
    (sh / "boot").symlink_to(root / "boot")
    moddir = sh / "lib/modules" / release
    order = (moddir / "modules.order").read_text()
    (moddir / "modules.order").unlink()        # a link into the cache: written anew below
    (moddir / "modules.order").write_text(order)
    s = open_system(str(moddir))
    users: dict[str, set[str]] = {}
    for m in s.modules:
        for i in m.imports:
            users.setdefault(i.name, set()).add(m.name)

    def user_count(m: Module) -> int:
        return len({u for e in m.exports for u in users.get(e.name, ())})

    exporters = sorted((m for m in s.modules if user_count(m) >= 2), key=lambda m: m.name)
    assert len(exporters) >= 2
    first, second = exporters[0], exporters[1]
    for d in ("extra", "updates"):
        (moddir / d).mkdir()
    shutil.copy(moddir / first.path, moddir / "extra" / f"{first.name}_twin.ko")
    shutil.copy(moddir / second.path, moddir / "updates" / f"{second.name}_twin.ko")
    (moddir / "modules.order").write_text(f"updates/{second.name}_twin.ko\n" + order)
    twinned = {e.name for m in (first, second) for e in m.exports}
    affected = sorted({u for n in twinned for u in users.get(n, ())})
    return sh, moddir, release, affected


def _show_depends(tool: str, root: Path, release: str, modules: list[str],
                  config: Path) -> str:
    r = subprocess.run([tool, "-C", str(config), "-d", str(root), "-S", release,
                        "--show-depends", "-a", *modules],
                       capture_output=True, text=True, check=True)
    return r.stdout


@pytest.mark.corpus
def test_probe_order_is_kmods_modprobe(tmp_path: Path, kmod34: Path) -> None:
    """For every module of a real tree with twinned exporters, modprobe --show-depends
    (after kmod's own depmod) lists what probe_order() gives, in its order."""
    require_kmod30()
    root, moddir, release, affected = _twin_tree(tmp_path)
    subprocess.run(["depmod", "-b", str(root), release], check=True)
    # softdeps are configuration, not dependencies: probe_order() leaves them out
    (moddir / "modules.softdep").unlink()
    config = tmp_path / "modprobe.d"
    config.mkdir()
    s = open_system(str(moddir))
    every = [m.name for m in s.modules]
    probe = Probe(s.modules, s.order)
    deps = probe.dependencies()
    # the twins decide for some users: the rule is exercised, both ways
    assert any(d.endswith("_twin") for u in affected for d in deps[u])
    assert any(not d.endswith("_twin") for u in affected for d in deps[u])
    # modprobe -a lists each module's probe list in turn, without skipping repeats
    want = "".join(f"insmod {moddir}/{m.path} \n"
                   for n in every for m in probe.insert_order([n]))
    for tool in ("modprobe", str(kmod34 / "modprobe")):
        assert _show_depends(tool, root, release, every, config) == want, tool
