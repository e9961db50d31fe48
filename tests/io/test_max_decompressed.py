"""The decompression cap set for a run from the command line (--max-decompressed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fastlkm.cli import main
from fastlkm.errors import DecompressError, UsageError
from fastlkm.io.codecs import (
    DEFAULT_LIMIT,
    compress,
    decompress,
    max_decompressed,
    parse_size,
    set_max_decompressed,
)
from tests.depmod.test_depmod_cycles import dep_module


def test_parse_size() -> None:
    assert parse_size("4096") == 4096
    assert parse_size("64M") == 64 << 20
    assert parse_size("1G") == parse_size("1g") == parse_size("1GiB") == 1 << 30
    assert parse_size("512K") == parse_size("512KB") == 512 << 10
    assert parse_size("2T") == 2 << 40
    for bad in ("", "M", "-1", "1.5G", "0", "12Q", "ten"):
        with pytest.raises(UsageError, match="not a size"):
            parse_size(bad)


def test_the_run_cap_is_the_default_limit() -> None:
    data = compress(bytes(5000), "xz")
    try:
        set_max_decompressed(4999)
        assert max_decompressed() == 4999
        with pytest.raises(DecompressError, match=r"exceeds 4999 bytes .*--max-decompressed"):
            decompress(data, path="x.ko.xz")
        assert decompress(data, limit=5000) == bytes(5000)   # a caller's own limit wins
    finally:
        set_max_decompressed(DEFAULT_LIMIT)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    moddir = tmp_path / "lib/modules/6.0.0/kernel"
    moddir.mkdir(parents=True)
    # about 1 MiB decoded (long import names), a few KiB compressed
    big = dep_module(["fa"], [f"imported_from_the_kernel_{i:06}" for i in range(20000)])
    assert 1 << 20 < len(big) < 2 << 20
    (moddir / "a.ko.xz").write_bytes(compress(big, "xz"))
    (moddir / "b.ko").write_bytes(dep_module(["fb"], ["fa"]))
    for beside in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        (moddir.parent / beside).write_bytes(b"")   # as a kernel's install leaves them
    return tmp_path


def test_cli_cap_names_file_and_cap(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Below the module's size the compressed module is skipped (named, with the cap) and
    the plain one processed; a cap above it, or none, takes both; the cap lasts one run."""
    ko = tree / "lib/modules/6.0.0/kernel/a.ko.xz"
    depmod = ["depmod", "-b", str(tree), "6.0.0", "--no-cache"]
    assert main(["--max-decompressed", "1M", *depmod]) == 3
    err = capsys.readouterr().err.splitlines()
    assert err == [f"fastlkm: warning: {ko}: decompressed size exceeds 1048576 bytes (the cap, "
                   "--max-decompressed); skipped"]
    assert (tree / "lib/modules/6.0.0/modules.dep").read_text() == "kernel/b.ko:\n"
    assert main(["--max-decompressed", "64M", *depmod]) == 0
    assert main(depmod) == 0
    assert "kernel/b.ko: kernel/a.ko.xz" in (tree / "lib/modules/6.0.0/modules.dep").read_text()
    # a single module named on the command line: bad input, status 2, one line
    assert main(["--max-decompressed", "1M", "hash", str(ko)]) == 2
    assert f"fastlkm: warning: {ko}: decompressed size exceeds 1048576 bytes" in \
        capsys.readouterr().err
    # and nothing of it stays behind for the library's next caller in this process
    from fastlkm.io.codecs import DEFAULT_LIMIT, max_decompressed

    assert max_decompressed() == DEFAULT_LIMIT


def test_cli_rejects_a_bad_size(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--max-decompressed", "lots", "verify", "x.ko"])
    assert e.value.code == 2
    assert "not a size: 'lots'" in capsys.readouterr().err
