"""The native scan against the reference decoder: the same facts for every module of the
corpus trees and every generation of export table; on hostile input it declines wherever
the reference raises, and agrees wherever it answers."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from fastlkm.depmod import scan as scan_mod
from fastlkm.depmod.modfiles import module_files
from fastlkm.depmod.scan import DepmodModule, from_module, scan_files
from fastlkm.errors import FastlkmError, FormatError
from fastlkm.io.codecs import compress, decompress_file
from fastlkm.kernel.module import parse_module
from tests.conftest import KERNELS, skip_or_fail
from tests.elf.test_reader import SMALL, mutated
from tests.kernel.test_ksymtab import EXPORTS, MACHINES, build_module

native = scan_mod._native


@pytest.fixture(autouse=True, scope="module")
def _native_built() -> None:
    """Each test here needs the C scanner: skipped without it, failed where required."""
    if native is None:
        skip_or_fail("fastlkm.depmod._scan was not built")


def comparable(d: DepmodModule) -> DepmodModule:
    """kmod_symbols as a multiset (the reference keeps None, meaning the export names
    in another order)."""
    return d._replace(kmod_symbols=tuple(sorted(d.kmod_symbols)))


def reference(data: bytes, shown: str = "m.ko") -> DepmodModule:
    return from_module(parse_module(data, shown, shown))


def check_same(data: bytes, shown: str = "m.ko") -> None:
    got = native.scan(data)
    assert got is not None, f"{shown}: the native scan declined"
    assert comparable(DepmodModule(shown, *got)) == comparable(reference(data, shown))


@pytest.mark.corpus
@pytest.mark.parametrize("kernel", KERNELS)
def test_every_module_of_a_real_tree(corpus: Callable[[str], tuple[Path, str]],
                                     kernel: str) -> None:
    root, release = corpus(kernel)
    moddir = next(d for d in (root / "lib/modules" / release, root / "usr/lib/modules" / release)
                  if d.is_dir())
    files = module_files(moddir)
    assert len(files) > 500
    for path, shown in files:
        check_same(decompress_file(path), shown)
    # the threaded reader of plain files gives what scan() gives, file by file
    plain = [p for p, _ in files if p.endswith(".ko")]
    if plain:
        got = native.scan_files([os.fsencode(p) for p in plain], 2, 1 << 30)
        assert got == [native.scan(Path(p).read_bytes()) for p in plain]


@pytest.mark.parametrize("name", list(SMALL))
def test_small_modules_of_every_class(name: str) -> None:
    check_same(SMALL[name][1])


@pytest.mark.parametrize("machine", list(MACHINES))
@pytest.mark.parametrize("gen", [
    {"prel": True, "nfields": 3}, {"prel": True, "nfields": 2},
    {"prel": False, "nfields": 3}, {"prel": False, "nfields": 2},
    {"prel": True, "nfields": 3, "flagstab": True},
    {"prel": True, "nfields": 3, "via_section": True},
    {"prel": False, "nfields": 2, "crc_relocs": True},
    {"prel": True, "nfields": 3, "labels": False},
    {"prel": True, "nfields": 3, "rela": False},
])
def test_every_export_table_generation(machine: str, gen: dict[str, bool | int]) -> None:
    check_same(build_module(EXPORTS, machine, **gen))  # type: ignore[arg-type]


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutations_decline_or_agree(data: bytes) -> None:
    try:
        ref = reference(data)
    except FormatError:
        assert native.scan(data) is None
        return
    got = native.scan(data)
    if got is not None:
        assert comparable(DepmodModule("m.ko", *got)) == comparable(ref)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(data=mutated())
def test_reading_from_files_is_reading_from_memory(tmp_path: Path, data: bytes) -> None:
    # scan_files() reads only the sections the parse touches: it must see what scan()
    # sees in the whole image, hostile images included
    f = tmp_path / "m.ko"
    f.write_bytes(data)
    want = native.scan(data) if len(data) >= 64 else None
    assert native.scan_files([os.fsencode(f)], 1, 1 << 30) == [want]


def test_declined_files_are_freed_once(tmp_path: Path) -> None:
    # regression: a file the C reader declines had its lists freed twice (found by the
    # mutation test above); many of them in one batch, on both threads
    good = SMALL["x86_64"][1]
    # declined late: after its exports were read, at a non-ASCII undefined symbol name
    late = good.replace(b"\0printk\0", b"\0\xc3rintk\0")
    assert late != good and native.scan(late) is None
    paths = []
    for i in range(64):
        f = tmp_path / f"m{i}.ko"
        f.write_bytes(late if i % 2 else good)
        paths.append(os.fsencode(f))
    got = native.scan_files(paths, 2, 1 << 30)
    assert [g is None for g in got] == [bool(i % 2) for i in range(64)]


def test_declines_what_is_not_a_module() -> None:
    for data in (b"", b"\x7fELF", b"garbage" * 100, SMALL["x86_64"][1][:200]):
        assert native.scan(data) is None
    exe = bytearray(SMALL["x86_64"][1])
    exe[16] = 2   # ET_EXEC
    assert native.scan(bytes(exe)) is None


def test_scan_files_in_order_with_errors(tmp_path: Path) -> None:
    good = SMALL["x86_64"][1]
    files = []
    for i in range(40):
        p = tmp_path / f"m{i}.ko"
        if i % 10 == 3:
            p.write_bytes(b"not an ELF file at all")
        elif i % 2:
            p = tmp_path / f"m{i}.ko.xz"
            p.write_bytes(compress(good, "xz"))
        else:
            p.write_bytes(good)
        files.append((str(p), p.name))
    got, errors = scan_files(files, jobs=2)
    assert [g is None for g in got] == [i % 10 == 3 for i in range(40)]
    assert [e.path for e in errors] == [f for f, _ in files if f.endswith(("3.ko",))]
    assert all("bad magic" in str(e) for e in errors)
    assert [g.path for g in got if g is not None] == [s for i, (_, s) in enumerate(files)
                                                      if i % 10 != 3]
    # without the native scan the reference decoder gives the same
    saved = scan_mod._native
    scan_mod._native = None
    try:
        again, errors2 = scan_files(files, jobs=2)
    finally:
        scan_mod._native = saved
    assert [comparable(g) if g else None for g in again] == \
        [comparable(g) if g else None for g in got]
    assert [str(e) for e in errors2] == [str(e) for e in errors]


@pytest.mark.parametrize("jobs", [1, 2])
def test_what_cannot_be_read_is_an_error(tmp_path: Path, jobs: int) -> None:
    (tmp_path / "dir.ko").mkdir()
    os.mkfifo(tmp_path / "fifo.ko")           # must not block
    (tmp_path / "gone.ko").symlink_to(tmp_path / "nowhere.ko")
    (tmp_path / "good.ko").write_bytes(SMALL["x86_64"][1])
    (tmp_path / "big.ko").write_bytes(SMALL["x86_64"][1] + bytes(1 << 20))
    names = ["dir.ko", "fifo.ko", "gone.ko", "good.ko"] * 3
    files = [(str(tmp_path / n), n) for n in names]
    got, errors = scan_files(files, jobs=jobs)
    assert [g.path if g else None for g in got] == [n if n == "good.ko" else None
                                                    for n in names]
    assert [e.path for e in errors] == [p for p, n in files if n != "good.ko"]
    assert all(isinstance(e, FastlkmError) for e in errors)
    # the C reader leaves over-limit files to the caller, who reports them
    assert native.scan_files([os.fsencode(tmp_path / "big.ko")], 1, 1 << 20) == [None]
