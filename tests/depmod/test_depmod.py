"""depmod's text outputs against kmod's own depmod on real trees, byte for byte."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from fastlkm.cli import main
from fastlkm.depmod.compute import build, hash_order, hash_superfast, uncompressed_relpath
from fastlkm.depmod.output import modules_dep, modules_symbols
from fastlkm.kernel.facts import Export, Import, Module
from tests.conftest import KERNELS, corpus_module, require_kmod30

DEPMOD_FILES = ("modules.dep", "modules.symbols")


def test_hash_superfast_branches() -> None:
    # the real check is byte-identical modules.symbols on the corpus trees below; here,
    # only that the empty key hashes to 0 and every tail length has its own branch
    assert hash_superfast(b"") == 0
    assert hash_superfast(b"a") != hash_superfast(b"b")
    # every tail length goes through its own branch
    assert len({hash_superfast(b"abcd"[:n]) for n in range(1, 5)}) == 4


def test_uncompressed_relpath() -> None:
    assert uncompressed_relpath("kernel/fs/ext4/ext4.ko.xz") == "kernel/fs/ext4/ext4.ko"
    assert uncompressed_relpath("kernel/a/crc-itu-t.ko.zst") == "kernel/a/crc-itu-t.ko"
    assert uncompressed_relpath("x.ko") == "x.ko"


def _m(path: str, imports: tuple[str, ...] = (), exports: tuple[str, ...] = ()) -> Module:
    name = Path(path).name.split(".")[0].replace("-", "_")
    return Module(name, path, exports=tuple(Export(e) for e in exports),
                  imports=tuple(Import(i) for i in imports))


def test_dependencies_are_transitive_and_topologically_sorted() -> None:
    mods = [_m("k/c.ko", ("fb",)), _m("k/b.ko", ("fa",), ("fb",)), _m("k/a.ko", (), ("fa",)),
            _m("k/x.ko")]
    dm = build(mods, ["k/a.ko", "k/b.ko", "k/c.ko"])
    assert modules_dep(dm).decode().splitlines() == [
        "k/a.ko:", "k/b.ko: k/a.ko", "k/c.ko: k/b.ko k/a.ko", "k/x.ko:"]
    syms = modules_symbols(dm).decode().splitlines()
    assert syms[0] == "# Aliases for symbols, used by symbol_request()."
    assert sorted(syms[1:]) == ["alias symbol:fa a", "alias symbol:fb b"]
    assert syms[1:] == [f"alias symbol:{n} {n[1]}" for n in hash_order(["fa", "fb"], 2048)]


def test_dotted_names_and_weak_symbols() -> None:
    # a leading '.' is stripped before the lookup (ppc64 ELFv1 function entry points);
    # an unknown weak symbol is no error, an unknown strong one is reported with -e
    mods = [_m("k/a.ko", (".fa",)), _m("k/b.ko", (), ("fa",)),
            Module("c", "k/c.ko", imports=(Import("gone", weak=True), Import("lost")))]
    for report in (None, []):
        dm = build(mods, [], report=report, kernel_exports=[] if report is not None else None)
        assert sorted(modules_dep(dm).decode().splitlines()) == [
            "k/a.ko: k/b.ko", "k/b.ko:", "k/c.ko:"]   # in kmod's hash order
        if report is not None:
            assert report == ["k/c.ko needs unknown symbol lost"]


def test_cycle_is_reported() -> None:
    from fastlkm.errors import FastlkmError

    mods = [_m("a.ko", ("fb",), ("fa",)), _m("b.ko", ("fa",), ("fb",))]
    with pytest.raises(FastlkmError, match="2 modules in dependency cycles"):
        build(mods, [])


def _shadow_root(root: Path, release: str, dest: Path) -> Path:
    """A root linking to a cached tree, for a depmod to write into (scripts/corpus.py)."""
    return corpus_module().shadow_root(root, release, dest)


@pytest.fixture(scope="module")
def kmod_outputs(corpus: Callable[[str], tuple[Path, str]],
                 tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Path, str]]:
    """kmod's depmod run on a shadow of each corpus tree: (its modules dir, release)."""
    require_kmod30()
    done: dict[str, tuple[Path, str]] = {}

    def get(name: str) -> tuple[Path, str]:
        if name not in done:
            root, release = corpus(name)
            shadow = _shadow_root(root, release, tmp_path_factory.mktemp(f"kmod-{name}"))
            subprocess.run(["depmod", "-b", str(shadow), release], check=True)
            done[name] = (shadow / "lib/modules" / release, release)
        return done[name]

    return get


@pytest.mark.corpus
@pytest.mark.parametrize("name", KERNELS)
def test_depmod_matches_kmod(name: str, corpus, kmod_outputs, tmp_path: Path) -> None:
    kmod_dir, release = kmod_outputs(name)
    root, _ = corpus(name)
    out = tmp_path / "compat"
    assert main(["depmod", "-b", str(root), release, "--kmod-compat=30", "--into", str(out)]) == 0
    written = sorted(p.name for p in kmod_dir.iterdir() if not p.is_symlink())
    assert set(DEPMOD_FILES) <= set(written) and "modules.alias.bin" in written
    assert sorted(p.name for p in out.iterdir()) == written
    for f in written:
        assert (out / f).read_bytes() == (kmod_dir / f).read_bytes(), f
    # the default output differs from kmod only where kmod is wrong: on 7.x kmod takes
    # namespace strings of __ksymtab_strings for exported symbols
    out = tmp_path / "default"
    assert main(["depmod", "-b", str(root), release, "--into", str(out)]) == 0
    assert (out / "modules.dep").read_bytes() == (kmod_dir / "modules.dep").read_bytes()
    ours = (out / "modules.symbols").read_text().splitlines()
    theirs = (kmod_dir / "modules.symbols").read_text().splitlines()
    extra = [x for x in theirs if x not in set(ours)]
    assert [x for x in ours if x not in set(theirs)] == []
    assert [x for x in theirs if x in set(ours)] == ours   # same order otherwise
    namespaces = {e.namespace for m in _system_modules(root, release) for e in m.exports}
    assert all(x.split()[1].removeprefix("symbol:") in namespaces for x in extra), extra
    if name.startswith("sid"):
        assert extra, "the 7.x tree is expected to show kmod's namespace error"


def _system_modules(root: Path, release: str) -> list[Module]:
    from fastlkm.depmod.modfiles import module_files, release_dir
    from fastlkm.kernel.tree import read_module_files

    moddir = release_dir(str(root), release)
    assert moddir is not None
    return read_module_files(module_files(moddir))[0]


@pytest.mark.corpus
def test_depmod_in_place_is_atomic_and_keeps_mode(corpus, tmp_path: Path) -> None:
    root, release = corpus("6.1-cloud-amd64")
    shadow = _shadow_root(root, release, tmp_path / "r")
    moddir = shadow / "lib/modules" / release
    (moddir / "modules.dep").write_text("old\n")
    os.chmod(moddir / "modules.dep", 0o600)
    assert main(["depmod", "-b", str(shadow), release]) == 0
    assert (moddir / "modules.dep").read_text() != "old\n"
    assert (moddir / "modules.dep").stat().st_mode & 0o777 == 0o600
    assert not [p for p in moddir.iterdir() if p.name.endswith(".tmp")]
    shutil.rmtree(shadow)
