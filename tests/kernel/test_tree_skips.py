"""Files of a module tree that cannot be read: every command that reads a tree names each
one in a ``fastlkm: warning: PATH: why; skipped`` line, processes the rest, and exits 3.

The tests run as root, where ``chmod 000`` stops nothing, so the tree holds what stops
root too, each for a reason of its own:
- ``mem.ko``, a symlink to ``/proc/self/mem``: a regular file whose read fails with EIO
  for every user -- the unreadable file;
- ``fifo.ko``, a FIFO: no regular file; opening it would block for ever, so this also
  proves the file is skipped without being opened;
- ``dangling.ko``, a symlink to nothing;
- ``bad.ko``, a malformed ELF file;
- ``sub/loop``, a directory symlink to its parent: a symlink loop;
- ``locked.ko``, mode 000: skipped only when the tests do not run as root.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fastlkm.cli import main
from fastlkm.depmod.modfiles import walk_modules as scan_modules
from tests.depmod.test_depmod_cycles import dep_module

RELEASE = "6.0.0"
ROOT_USER = os.geteuid() == 0
SKIPPED = ["kernel/mem.ko", "kernel/fifo.ko", "kernel/dangling.ko", "kernel/bad.ko",
           "kernel/sub/loop", *([] if ROOT_USER else ["kernel/locked.ko"])]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """ROOT with two good modules (b needs a) and every kind of bad entry."""
    moddir = tmp_path / "root/lib/modules" / RELEASE
    k = moddir / "kernel"
    (k / "sub").mkdir(parents=True)
    (k / "a.ko").write_bytes(dep_module(["fa"], ["printk"]))
    (k / "sub/b.ko").write_bytes(dep_module(["fb"], ["fa"]))
    (k / "mem.ko").symlink_to("/proc/self/mem")
    os.mkfifo(k / "fifo.ko")
    (k / "dangling.ko").symlink_to("nowhere.ko")
    (k / "bad.ko").write_bytes(b"\x7fELF\x02\x01\x01" + bytes(9))
    (k / "sub/loop").symlink_to("..")
    (k / "locked.ko").write_bytes(dep_module(["fl"], []))
    (k / "locked.ko").chmod(0)
    (moddir / "System.map").write_text("ffffffff81000000 T printk\n"
                                       "ffffffff82000000 r __ksymtab_printk\n")
    return tmp_path / "root"


def _warned(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("fastlkm: warning: ")]


def _check_warnings(err: str, moddir: Path, also: tuple[str, ...] = ()) -> None:
    """One warning line per skipped entry, naming it, and none for the good modules."""
    warned = _warned(err)
    for rel in [*SKIPPED, *also]:
        hits = [w for w in warned if f" {moddir}/{rel}: " in w]
        assert len(hits) == 1, (rel, warned)
        assert hits[0].endswith("; skipped")
    if ROOT_USER:  # root reads the mode-000 file: it is a module like the others
        assert not any("locked.ko" in w for w in warned)
    assert not any("/a.ko" in w or "/b.ko" in w for w in warned)


def test_scan_names_each_skipped_entry(tree: Path) -> None:
    moddir = tree / "lib/modules" / RELEASE
    skipped: list = []
    found = sorted(scan_modules(moddir, skipped=skipped))
    assert found == ["kernel/a.ko", "kernel/bad.ko", "kernel/locked.ko", "kernel/mem.ko",
                     "kernel/sub/b.ko"]
    why = {str(Path(e.path).relative_to(moddir)): e.message for e in skipped}
    assert why == {"kernel/fifo.ko": "not a regular file",
                   "kernel/dangling.ko": "dangling symbolic link",
                   "kernel/sub/loop": f"symbolic link loop: the directory {moddir}/kernel "
                                      "again, not entered"}


@pytest.mark.parametrize("cache", [False, True])
def test_depmod(tree: Path, cache: bool, capsys: pytest.CaptureFixture[str]) -> None:
    """The outputs list the good modules; a second, cached run warns the same."""
    moddir = tree / "lib/modules" / RELEASE
    args = ["depmod", "-b", str(tree), RELEASE, *([] if cache else ["--no-cache"])]
    for _ in range(2 if cache else 1):
        assert main(args) == 3
        _check_warnings(capsys.readouterr().err, moddir)
        dep = (moddir / "modules.dep").read_text().splitlines()
        assert "kernel/sub/b.ko: kernel/a.ko" in dep and "kernel/a.ko:" in dep


def test_resolve_check_snapshot(tree: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    moddir = tree / "lib/modules" / RELEASE
    assert main(["resolve", str(tree)]) == 3
    out, err = capsys.readouterr()
    _check_warnings(err, moddir)
    assert f"modules {3 if ROOT_USER else 2}  loaded {3 if ROOT_USER else 2}  failed 0" in out
    assert main(["check", str(moddir / "kernel/sub/b.ko"), "--kernel", str(tree)]) == 3
    out, err = capsys.readouterr()
    _check_warnings(err, moddir)
    assert "b: would load on 6.0.0 after a" in out
    snap = tmp_path / "t.snap"
    assert main(["snapshot", str(tree), "-o", str(snap)]) == 3
    _check_warnings(capsys.readouterr().err, moddir)
    assert main(["resolve", str(snap)]) == 0   # the snapshot holds what was read


def test_hash_and_verify(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """hash and verify walk the tree without following symlinks: the FIFO, the malformed
    file and (not as root) the mode-000 file are skipped; symlinks are not rewritten."""
    moddir = tree / "lib/modules" / RELEASE
    assert main(["hash", str(moddir)]) == 3
    warned = _warned(capsys.readouterr().err)
    named = sorted(w.split(": ")[2].removeprefix(f"{moddir}/") for w in warned)
    assert named == sorted(["kernel/bad.ko", "kernel/fifo.ko",
                            *([] if ROOT_USER else ["kernel/locked.ko"])])
    assert main(["verify", str(moddir)]) == 3
    warned = _warned(capsys.readouterr().err)
    assert len(warned) == len(named)


def test_one_bad_file_alone_is_bad_input(tree: Path, capsys: pytest.CaptureFixture[str]
                                         ) -> None:
    """Nothing processed: status 2, as any bad input."""
    k = tree / "lib/modules" / RELEASE / "kernel"
    assert main(["hash", str(k / "fifo.ko")]) == 2
    assert main(["verify", str(k / "bad.ko")]) == 2
