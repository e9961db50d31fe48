"""fastlkm depmod as a drop-in for kmod's: byte-identical to kmod 30 and kmod 34, the
options people use, depmod.d configuration, and kmod's own modprobe reading our indexes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from fastlkm.cli import main
from tests.conftest import KERNELS, require_kmod30
from tests.depmod.test_depmod import _shadow_root

Shadow = Callable[[str], tuple[Path, Path, str]]


@pytest.fixture
def shadow(corpus, tmp_path: Path) -> Shadow:
    """shadow(name) -> (root, moddir, release): a fresh root linking to a corpus tree."""
    def make(name: str) -> tuple[Path, Path, str]:
        root, release = corpus(name)
        sh = _shadow_root(root, release, tmp_path / name)
        return sh, sh / "lib/modules" / release, release
    return make


def _written(moddir: Path) -> list[str]:
    return sorted(p.name for p in moddir.iterdir() if p.is_file() and not p.is_symlink()
                  and p.name.startswith("modules.") and p.name not in (
                      "modules.order", "modules.builtin", "modules.builtin.modinfo"))


def _same_files(a: Path, b: Path) -> None:
    names = _written(a)
    assert names == _written(b)
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes(), n


@pytest.mark.corpus
@pytest.mark.parametrize("name", KERNELS)
def test_identical_to_kmod34(name: str, shadow: Shadow, kmod34: Path, tmp_path: Path) -> None:
    sh, moddir, release = shadow(name)
    subprocess.run([str(kmod34 / "depmod"), "-b", str(sh), release], check=True)
    out = tmp_path / "ours"
    assert main(["depmod", "-b", str(sh), release, "--kmod-compat=34", "--into", str(out)]) == 0
    _same_files(moddir, out)


def _modprobe(tool: str, sh: Path, release: str, args: list[str]) -> str:
    r = subprocess.run([tool, "-d", str(sh), "-S", release, *args], capture_output=True,
                       text=True)
    return (r.stdout + r.stderr).replace(str(sh), "ROOT")


def _instance(pattern: str) -> str:
    """A modalias that the alias pattern matches: '*' empty, '?' and '[..]' one char."""
    s = re.sub(r"\[([^]]*)\]", lambda m: m.group(1)[:1] or "x", pattern)
    return s.replace("*", "").replace("?", "x")


def _module_symvers(root: Path, release: str) -> tuple[set[str], set[str]]:
    """The names the modules export and every namespace, read from the headers'
    Module.symvers (CRC, name, module, export type, namespace; tab-separated)."""
    exported: set[str] = set()
    namespaces: set[str] = set()
    text = (root / f"usr/src/linux-headers-{release}/Module.symvers").read_text()
    for line in text.splitlines():
        fields = line.split("\t")
        if fields[2] != "vmlinux":
            exported.add(fields[1])
        if len(fields) > 4 and fields[4]:
            namespaces.add(fields[4])
    assert exported
    return exported, namespaces


@pytest.mark.corpus
@pytest.mark.parametrize("name", ["6.1-cloud-amd64", "sid-cloud-amd64"])
def test_kmods_modprobe_reads_our_indexes(name: str, corpus, kmod34: Path,
                                          tmp_path: Path) -> None:
    """kmod's own modprobe (30 and 34) answers the same from fastlkm's default outputs as
    from kmod's, for every module, every alias and every symbol -- except the symbols
    that kmod wrongly lists (namespace strings, docs/deviations.md)."""
    require_kmod30()
    root, release = corpus(name)
    theirs = _shadow_root(root, release, tmp_path / "theirs")
    ours = _shadow_root(root, release, tmp_path / "ours")
    subprocess.run(["depmod", "-b", str(theirs), release], check=True)
    assert main(["depmod", "-b", str(ours), release]) == 0
    moddir = theirs / "lib/modules" / release
    modules = [line.split(":", 1)[0].rsplit("/", 1)[-1].split(".", 1)[0]
               for line in (moddir / "modules.dep").read_text().splitlines()]
    aliases = sorted({_instance(line.split()[1]) for line in
                      (moddir / "modules.alias").read_text().splitlines()[1:]})
    symbols = [line.split()[1] for line in
               (moddir / "modules.symbols").read_text().splitlines()[1:]]
    # what the modules really export, and the namespaces, as the kernel's build lists them
    exported, namespaces = _module_symvers(root, release)
    wrong = {s for s in symbols if s.removeprefix("symbol:") not in exported}
    assert {s.removeprefix("symbol:") for s in wrong} <= namespaces   # docs/deviations.md
    for tool in ("modprobe", str(kmod34 / "modprobe")):
        for args in (["--show-depends", "-a", *modules], ["-R", "-a", *aliases],
                     ["-R", "-a", *[s for s in symbols if s not in wrong]]):
            a = _modprobe(tool, theirs, release, args)
            b = _modprobe(tool, ours, release, args)
            assert a == b, (tool, args[:2])
            assert a.strip()
        # the symbols kmod lists wrongly resolve with kmod's files only
        for s in sorted(wrong):
            assert "not found" in _modprobe(tool, ours, release, ["-R", s])


@pytest.mark.corpus
def test_depmod_d_configuration_as_kmod(shadow: Shadow, tmp_path: Path) -> None:
    """search, override, external and exclude choose the same files as kmod's depmod."""
    require_kmod30()
    sh, moddir, release = shadow("6.1-cloud-amd64")
    real = Path(os.readlink(moddir / "kernel"))
    leaf = "lib/crc-itu-t.ko"
    # a second copy of a module in updates/ and in extra/, and an external directory
    for d in ("updates", "extra"):
        (moddir / d).mkdir()
        shutil.copy(real / leaf, moddir / d / "crc-itu-t.ko")
    ext = tmp_path / "external"
    ext.mkdir()
    shutil.copy(real / "lib/crc7.ko", ext / "crc7.ko")
    confs = {
        "default": "",
        "override": "override crc-itu-t * extra\n",
        "search": "search built-in updates\n",
        "external": f"search external built-in\nexternal {release} {ext}\n",
        "exclude": "exclude 802 updates\n",
    }
    for label, text in confs.items():
        cfg = tmp_path / f"cfg-{label}"
        cfg.mkdir()
        if text:
            (cfg / "x.conf").write_text(text)
        kmod_err = subprocess.run(["depmod", "-C", str(cfg), "-b", str(sh), release],
                                  capture_output=True, text=True).stderr
        out = tmp_path / f"ours-{label}"
        assert main(["depmod", "-C", str(cfg), "-b", str(sh), release, "--kmod-compat=30",
                     "--into", str(out)]) == 0
        _same_files(moddir, out)
        assert "ERROR" not in kmod_err
        dep = (out / "modules.dep").read_text()
        if label == "override":
            assert "extra/crc-itu-t.ko:" in dep
        if label == "external":
            assert f"{ext}/crc7.ko:" in dep


@pytest.mark.corpus
def test_errsyms_warnings_as_kmod(shadow: Shadow, tmp_path: Path,
                                  capfd: pytest.CaptureFixture[str]) -> None:
    require_kmod30()
    sh, moddir, release = shadow("6.1-cloud-amd64")
    root = Path(os.readlink(moddir / "kernel")).parents[3]
    symvers = root / f"usr/src/linux-headers-{release}/Module.symvers"
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "x.conf").write_text("exclude 802\n")
    kmod = subprocess.run(["depmod", "-C", str(cfg), "-b", str(sh), release, "-e", "-E",
                           str(symvers), "-n"], capture_output=True, text=True)
    capfd.readouterr()
    assert main(["depmod", "-C", str(cfg), "-b", str(sh), release, "-e", "-E", str(symvers),
                 "-n", "--kmod-compat=30"]) == 0
    ours = capfd.readouterr()
    assert ours.err == kmod.stderr and "needs unknown symbol mrp_init_applicant" in ours.err
    assert ours.out == kmod.stdout and ours.out.startswith("kernel/")


@pytest.mark.corpus
def test_quick_does_nothing_when_up_to_date(shadow: Shadow) -> None:
    sh, moddir, release = shadow("6.1-cloud-amd64")
    assert main(["depmod", "-b", str(sh), release]) == 0
    dep = moddir / "modules.dep"
    os.utime(dep, (2**31, 2**31))          # newer than every module
    dep.write_bytes(b"marker\n")
    os.utime(dep, (2**31, 2**31))
    assert main(["depmod", "-A", "-b", str(sh), release]) == 0
    assert dep.read_bytes() == b"marker\n"
    os.utime(dep, (1, 1))                   # older than the modules
    assert main(["depmod", "-A", "-b", str(sh), release]) == 0
    assert dep.read_bytes() != b"marker\n"
