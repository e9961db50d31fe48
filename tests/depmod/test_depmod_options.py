"""fastlkm depmod as kmod 34's depmod: its options with kmod's meaning, checked against
sid's kmod 34 on real trees, and the ``depmod`` name (argv[0]) running the command
lines Debian's kernel packages and kernel-install use."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from fastlkm.cli import main
from tests.conftest import corpus_tool
from tests.depmod.test_depmod import _shadow_root
from tests.depmod.test_depmod_kmod import _same_files
from tests.depmod.test_kmod_testsuite import setup_rootfs

Corpus = Callable[[str], tuple[Path, str]]


def _kmod(kmod34: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(kmod34 / "depmod"), *args], capture_output=True, text=True)


def _depmod_name(tmp_path: Path) -> Path:
    """A folder whose ``depmod`` is a symlink to the installed ``fastlkm`` command: the
    drop-in installation of the README."""
    fastlkm = Path(sys.executable).parent / "fastlkm"
    assert fastlkm.is_file(), "the fastlkm console script is not installed beside python"
    d = tmp_path / "bin"
    d.mkdir()
    (d / "depmod").symlink_to(fastlkm)
    return d


@pytest.mark.corpus
def test_debian_command_lines_through_the_depmod_name(corpus: Corpus, kmod34: Path,
                                                      tmp_path: Path) -> None:
    """Debian's kernel postinst (``depmod -a -F /boot/System.map-VER VER``, whose
    System.map is Debian's one-line stub) and kernel-install (``depmod -a VER``), each
    with -b for a test root, give kmod 34's files and messages through a symlink named
    depmod."""
    root, release = corpus("6.1-cloud-amd64")
    bindir = _depmod_name(tmp_path)
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    system_map = root / f"boot/System.map-{release}"
    assert system_map.is_file()
    for label, args in (("postinst", ["-a", "-F", str(system_map), release]),
                        ("kernel-install", ["-a", release])):
        theirs = _shadow_root(root, release, tmp_path / f"{label}-kmod")
        ours = _shadow_root(root, release, tmp_path / f"{label}-ours")
        k = _kmod(kmod34, ["-b", str(theirs), *args])
        r = subprocess.run(["depmod", "-b", str(ours), *args], capture_output=True,
                           text=True, env=env)
        assert (r.returncode, r.stdout, r.stderr) == (k.returncode, k.stdout, k.stderr)
        assert r.returncode == 0
        _same_files(theirs / "lib/modules" / release, ours / "lib/modules" / release)
    # the same name answers as depmod: its usage, its version line
    r = subprocess.run(["depmod", "-h"], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and "depmod -[aA] [options] [forced_version]" in r.stdout
    r = subprocess.run(["depmod", "-V"], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and "(depmod of kmod 34)" in r.stdout


@pytest.mark.corpus
def test_no_arguments_is_all_for_the_running_release(corpus: Corpus, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    root, release = corpus("6.1-cloud-amd64")
    sh = _shadow_root(root, release, tmp_path / "root")
    real = os.uname()
    monkeypatch.setattr(os, "uname", lambda: os.uname_result(
        (real.sysname, real.nodename, release, real.version, real.machine)))
    assert main(["-b", str(sh)], prog="depmod") == 0
    assert (sh / "lib/modules" / release / "modules.dep").stat().st_size > 0


@pytest.mark.corpus
def test_verbose_warn_and_prefix_as_kmod34(corpus: Corpus, kmod34: Path, tmp_path: Path,
                                           capfd: pytest.CaptureFixture[str]) -> None:
    """-v prints what kmod prints (each module's first need of each supplier), -w the
    duplicates of the indexes, and -P changes nothing where no name has the prefix."""
    root, release = corpus("6.1-686")          # a tree with duplicate aliases
    theirs = _shadow_root(root, release, tmp_path / "kmod")
    ours = _shadow_root(root, release, tmp_path / "ours")
    for args in (["-v"], ["-w"], ["-w", "-P", "_"]):
        k = _kmod(kmod34, [*args, "-b", str(theirs), release])
        capfd.readouterr()
        assert main(["depmod", *args, "-b", str(ours), release]) == 0
        got = capfd.readouterr()
        assert (got.out.replace(str(ours), "ROOT"), got.err) == \
            (k.stdout.replace(str(theirs), "ROOT"), k.stderr), args
        assert got.out if "-v" in args else "duplicate module alias" in got.err
        _same_files(theirs / "lib/modules" / release, ours / "lib/modules" / release)


@pytest.mark.corpus
def test_system_map_lines_and_module_files_as_kmod34(corpus: Corpus, kmod34: Path,
                                                     tmp_path: Path,
                                                     capfd: pytest.CaptureFixture[str]
                                                     ) -> None:
    """-F: a line depmod cannot read is named in its words and the rest is read; module
    files given after the version are the only ones depmod takes (absolute paths)."""
    root, release = corpus("6.1-cloud-amd64")
    theirs = _shadow_root(root, release, tmp_path / "kmod")
    ours = _shadow_root(root, release, tmp_path / "ours")
    sysmap = tmp_path / "System.map"
    sysmap.write_text("ffffffff T __ksymtab_printk\nbroken\nffffffff R __ksymtab_kfree\n")
    picked = ["kernel/lib/crc-itu-t.ko", "kernel/lib/crc7.ko", "kernel/fs/fat/fat.ko",
              "kernel/fs/fat/vfat.ko"]
    for sh in (theirs, ours):
        assert all((sh / "lib/modules" / release / p).exists() for p in picked)
    for args, chosen in ((["-e", "-F", str(sysmap), "-n"], []), ([], picked), (["-n"], picked)):
        k = _kmod(kmod34, [*args, "-b", str(theirs), release,
                           *(str(theirs / "lib/modules" / release / p) for p in chosen)])
        capfd.readouterr()
        status = main(["depmod", *args, "-b", str(ours), release,
                       *(str(ours / "lib/modules" / release / p) for p in chosen)])
        got = capfd.readouterr()
        assert (status, got.out, got.err.replace(str(ours), "ROOT")) == \
            (k.returncode, k.stdout, k.stderr.replace(str(theirs), "ROOT")), args
        if args and args[0] == "-e":
            assert f"{sysmap}:2: invalid line: broken\n" in got.err
    assert "vfat.ko: kernel/fs/fat/fat.ko" in \
        (ours / "lib/modules" / release / "modules.dep").read_text()
    _same_files(theirs / "lib/modules" / release, ours / "lib/modules" / release)


def test_what_depmod_refuses(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Refused before anything is read, with kmod's words, one line, status 2."""
    (tmp_path / "lib/modules/1.2.3").mkdir(parents=True)
    root = str(tmp_path)
    for args, line in (
            (["-b", root, "not-a-version"], "Bad version passed not-a-version"),
            (["-b", root, "-P", "ab", "1.2.3"], "-P only takes a single char"),
            (["-b", root, "1.2.3", "relative.ko"], "relative.ko: not absolute path."),
            (["-b", root, "-o", root, "--into", root, "1.2.3"], "exclude each other")):
        capfd.readouterr()
        assert main(args, prog="depmod") == 2
        err = capfd.readouterr().err
        assert err.startswith("depmod: error: ") and line in err and err.count("\n") == 1


def test_outdir_moduledir_and_into(tmp_path: Path) -> None:
    """-o is a root (OUTDIR/MODULEDIR/VERSION), -m the module directory under both roots
    (a leading / changes nothing), --into a directory taken as it is; -A -n does
    nothing."""
    (tmp_path / "in/boot/mods/1.2.3").mkdir(parents=True)
    base = ["-b", str(tmp_path / "in"), "1.2.3"]
    assert main(["depmod", *base, "-m", "/boot/mods", "-o", str(tmp_path / "out"),
                 "--no-cache"]) == 0
    assert (tmp_path / "out/boot/mods/1.2.3/modules.dep").is_file()
    assert not (tmp_path / "in/boot/mods/1.2.3/modules.dep").exists()
    assert main(["depmod", *base, "-m", "boot/mods", "--into", str(tmp_path / "x")]) == 0
    assert (tmp_path / "x/modules.dep").is_file()
    assert main(["depmod", *base, "-m", "boot/mods"]) == 0
    dep = tmp_path / "in/boot/mods/1.2.3/modules.dep"
    dep.unlink()
    assert main(["depmod", *base, "-m", "boot/mods", "-A", "-n"]) == 0
    assert not dep.exists()
    assert main(["depmod", *base]) == 2    # no lib/modules/1.2.3 in that root


@pytest.mark.corpus
def test_configuration_messages_as_kmod34(corpus: Corpus, kmod34: Path, tmp_path: Path,
                                          capfd: pytest.CaptureFixture[str]) -> None:
    """depmod.d's bad lines and entries: kmod's ERROR lines always, its INFO lines with
    -vv, in its order (kmod's own -vv lines of libkmod's context, which name pointers,
    left out)."""
    root, release = corpus("6.1-cloud-amd64")
    sh = _shadow_root(root, release, tmp_path / "root")
    cfg = tmp_path / "cfg"
    (cfg / "x.conf").mkdir(parents=True)
    (cfg / "README").write_text("not read\n")
    (cfg / "a.conf").write_text("bogus line\noverride crc7 9.9.9 extra\ninclude foo\n"
                                "external 9.9 /nowhere\noverride onlyone\n")
    for args in (["-n"], ["-n", "-vv"]):
        k = _kmod(kmod34, [*args, "-C", str(cfg), "-b", str(sh), release])
        capfd.readouterr()
        assert main(["depmod", *args, "-C", str(cfg), "-b", str(sh), release]) == 0
        got = capfd.readouterr().err
        theirs = [line for line in k.stderr.splitlines(keepends=True)
                  if not line.startswith(("depmod: INFO: custom logging function",
                                          "depmod: INFO: context "))]
        assert got == "".join(theirs) and "ignoring bad line starting with 'bogus'" in got
        assert ("did not match 9.9.9" in got) == ("-vv" in args)


@pytest.mark.corpus
def test_files_beside_the_modules_as_kmod34(kmod34: Path, tmp_path: Path,
                                            capfd: pytest.CaptureFixture[str]) -> None:
    """A missing modules.order, modules.builtin or modules.builtin.modinfo is kmod's
    warning (the builtin indexes are then written empty, and -n reads neither); a
    modules.order whose last line lacks its newline is kmod's error, and the order is
    not used.  On one of kmod's own test roots, against kmod 34."""
    kmod = corpus_tool("kmod_testsuite") / "kmod"
    for label, order in (("missing", None), ("cut", "kernel/crypto/mod-simple.ko")):
        roots = {}
        for who in ("kmod", "ours"):
            setup_rootfs(kmod, tmp_path / label / who)
            roots[who] = tmp_path / label / who / "test-depmod/search-order-simple"
            if order is not None:
                (roots[who] / "lib/modules/4.4.4/modules.order").write_text(order)
        for args in (["-n"], []):
            k = _kmod(kmod34, [*args, "-b", str(roots["kmod"]), "4.4.4"])
            capfd.readouterr()
            status = main(["depmod", *args, "-b", str(roots["ours"]), "4.4.4"])
            got = capfd.readouterr()
            assert (status, got.out, got.err.replace(str(roots["ours"]), "ROOT")) == \
                (k.returncode, k.stdout, k.stderr.replace(str(roots["kmod"]), "ROOT"))
            assert ("could not open modules.builtin " in got.err) == (args == [])
        assert ("corrupted line" in got.err) == (order is not None)
        _same_files(roots["kmod"] / "lib/modules/4.4.4", roots["ours"] / "lib/modules/4.4.4")
