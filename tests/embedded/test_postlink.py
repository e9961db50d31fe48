"""``fastlkm hash`` and ``fastlkm verify`` on files: compression, signatures, atomic and
idempotent writes, trees, the command line; then real Debian modules and vmlinux, with
readelf and objdump as oracles and every other byte checked unchanged."""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from fastlkm.cli import main
from fastlkm.elf.reader import ElfFile
from fastlkm.embedded.codec import STORABLE
from fastlkm.embedded.postprocess import HashOptions, hash_paths, process_file
from fastlkm.embedded.read import verify_image
from fastlkm.errors import FastlkmError, FormatError
from fastlkm.io.codecs import compress, decompress, decompress_file, detect
from fastlkm.kernel.module import parse_module
from fastlkm.kernel.signature import MODULE_SIG_STRING, MODULE_SIGNATURE, split_signature
from fastlkm.kernel.tree import find_tree
from fastlkm.kernel.vmlinuz import extract_vmlinux
from tests.conftest import require_tools
from tests.elf.binutils import assert_only_appended, objdump_clean, readelf_clean
from tests.kernel.test_ksymtab import EXPORTS, Exp, build_module

MORE = (*EXPORTS, Exp("zeta", crc=5), Exp("alpha", crc=6))
SYSV = HashOptions("sysv", sort=True, undef_hash=True)


def fake_signed(body: bytes) -> bytes:
    sig = b"S" * 64
    return body + sig + MODULE_SIGNATURE.pack(0, 0, 2, 0, 0, len(sig)) + MODULE_SIG_STRING


def xz_check(data: bytes) -> int:
    """The integrity check of an xz stream (stream flags, second byte)."""
    assert data[:6] == b"\xfd7zXZ\x00"
    return data[7] & 0x0F


def plain_of(path: Path) -> bytes:
    return split_signature(decompress_file(path))[0]


@pytest.mark.parametrize("fmt", [None, "xz", "zstd", "gzip"])
def test_compressed_modules_keep_their_format(tmp_path: Path, fmt: str | None) -> None:
    body = build_module(MORE)
    f = tmp_path / ("m.ko" + {None: "", "xz": ".xz", "zstd": ".zst", "gzip": ".gz"}[fmt])
    f.write_bytes(compress(body, fmt) if fmt else body)
    if fmt == "xz":
        # even a CRC64 input (xz's default) comes back with the CRC32 the kernel needs
        f.write_bytes(lzma.compress(body, lzma.FORMAT_XZ, check=lzma.CHECK_CRC64))
    os.chmod(f, 0o640)
    outcome = process_file(str(f), None, SYSV)
    assert outcome.changed and outcome.sorted == ("__ksymtab", "__ksymtab_gpl")
    out = f.read_bytes()
    assert detect(out) == fmt
    if fmt == "xz":
        assert xz_check(out) == 1   # CRC32
    assert oct(f.stat().st_mode & 0o777) == oct(0o640)
    assert verify_image(ElfFile(plain_of(f))) == []
    # idempotent: a second run leaves the file alone
    st = f.stat()
    again = process_file(str(f), None, SYSV)
    assert not again.changed
    assert f.read_bytes() == out and f.stat().st_mtime_ns == st.st_mtime_ns
    assert os.listdir(tmp_path) == [f.name]


def test_other_compressions_are_refused(tmp_path: Path) -> None:
    f = tmp_path / "m.ko.bz2"
    f.write_bytes(bz2.compress(build_module(MORE)))
    with pytest.raises(FormatError, match="bzip2-compressed: cannot write it back"):
        process_file(str(f), None, SYSV)


def test_vmlinuz_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "vmlinuz"
    image = bytearray(0x400)
    image[0x202:0x206] = b"HdrS"
    f.write_bytes(bytes(image))
    with pytest.raises(FormatError, match=r"vmlinuz.*process its vmlinux"):
        process_file(str(f), None, SYSV)


def test_signed_module(tmp_path: Path) -> None:
    body = build_module(MORE)
    f = tmp_path / "m.ko.gz"
    f.write_bytes(gzip.compress(fake_signed(body)))
    before = f.read_bytes()
    with pytest.raises(FormatError, match=r"signed.*--strip-signature"):
        process_file(str(f), None, SYSV)
    assert f.read_bytes() == before
    process_file(str(f), None, HashOptions("sysv", strip_signature=True))
    plain = decompress(f.read_bytes())
    assert not plain.endswith(MODULE_SIG_STRING)
    assert [p for p in verify_image(ElfFile(plain)) if "not sorted" not in p] == []


def test_signed_again(tmp_path: Path) -> None:
    require_tools("openssl")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj",
                    "/CN=fastlkm test"], check=True, capture_output=True)
    f = tmp_path / "m.ko"
    f.write_bytes(fake_signed(build_module(MORE)))
    opts = HashOptions("gnu", sort=True, sign_key=str(key), sign_cert=str(cert))
    assert "signed again" in process_file(str(f), None, opts).notes
    body, trailer = split_signature(f.read_bytes())
    assert trailer and verify_image(ElfFile(body)) == []
    sig = trailer[:-len(MODULE_SIG_STRING) - MODULE_SIGNATURE.size]
    (tmp_path / "sig").write_bytes(sig)
    (tmp_path / "body").write_bytes(body)
    r = subprocess.run(["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in",
                        str(tmp_path / "sig"), "-content", str(tmp_path / "body"),
                        "-certfile", str(cert), "-CAfile", str(cert), "-out", os.devnull],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    # idempotent: unchanged contents keep their signature
    before = f.read_bytes()
    assert not process_file(str(f), None, opts).changed
    assert f.read_bytes() == before


def test_failed_write_leaves_the_original(tmp_path: Path, monkeypatch) -> None:
    f = tmp_path / "m.ko.xz"
    f.write_bytes(compress(build_module(MORE), "xz"))
    before = f.read_bytes()

    def fail(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(FastlkmError, match="cannot write: No space left on device"):
        process_file(str(f), None, SYSV)
    assert f.read_bytes() == before
    assert os.listdir(tmp_path) == [f.name]


def test_styles_replace_each_other(tmp_path: Path) -> None:
    """Another style replaces the sections of the last run: the result is what processing
    the original gives."""
    f = tmp_path / "m.ko"
    g = tmp_path / "n.ko"
    f.write_bytes(build_module(MORE))
    g.write_bytes(build_module(MORE))
    for style in STORABLE:
        opts = HashOptions(style, sort=True, undef_hash=style != "bsearch")
        process_file(str(f), None, opts)
        process_file(str(g), str(tmp_path / "fresh.ko"), opts)
        assert f.read_bytes() == (tmp_path / "fresh.ko").read_bytes(), style


def make_tree(tmp_path: Path) -> Path:
    tree = tmp_path / "lib/modules/1.0/kernel"
    (tree / "fs").mkdir(parents=True)
    (tree / "fs/a.ko.xz").write_bytes(compress(build_module(MORE), "xz"))
    (tree / "fs/b.ko").write_bytes(build_module(MORE, machine="s390"))
    (tree / "bad.ko").write_bytes(b"\x7fELF\x02\x01\x01" + bytes(9))
    (tree.parent / "modules.order").write_text("kernel/fs/a.ko\n")
    (tree.parent / "build").symlink_to("/usr/src/nowhere")
    return tmp_path / "lib/modules/1.0"


def test_tree_in_place_and_to_output(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    out = tmp_path / "out"
    outcomes, errors = hash_paths([str(src)], SYSV, str(out), jobs=2)
    assert sorted(Path(o.path).name for o in outcomes) == ["a.ko.xz", "b.ko"]
    assert [(Path(e.path or "").name, "section header" in str(e) or "truncated" in str(e))
            for e in errors] == [("bad.ko", True)]
    assert (out / "modules.order").read_text() == "kernel/fs/a.ko\n"
    assert os.readlink(out / "build") == "/usr/src/nowhere"
    for m in ("kernel/fs/a.ko.xz", "kernel/fs/b.ko"):
        assert verify_image(ElfFile(plain_of(out / m))) == []
    # the source is untouched; in place gives the same bytes
    assert verify_image(ElfFile(plain_of(src / "kernel/fs/b.ko")))
    hash_paths([str(src)], SYSV, None, jobs=1)
    for m in ("kernel/fs/a.ko.xz", "kernel/fs/b.ko"):
        assert (src / m).read_bytes() == (out / m).read_bytes()


def test_command_line(tmp_path: Path, capsys) -> None:
    src = make_tree(tmp_path)
    assert main(["verify", str(src / "kernel/fs")]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert f"{src}/kernel/fs/a.ko.xz: not processed by fastlkm hash (no embedded tables)" \
        in lines
    assert main(["hash", "--sort", "--undef-hash", str(src)]) == 3   # one file skipped
    err = capsys.readouterr().err
    assert f"fastlkm: warning: {src}/kernel/bad.ko: " in err
    assert "fastlkm: 3 files: 2 changed, 0 unchanged, 1 skipped" in err
    assert main(["verify", str(src / "kernel/fs")]) == 0
    assert capsys.readouterr().out == ""
    assert main(["hash", "--sort", "--undef-hash", str(src / "kernel/fs")]) == 0
    assert "2 files: 0 changed, 2 unchanged, 0 skipped" in capsys.readouterr().err
    assert main(["hash", "--style", "bsearch", "--undef-hash", str(src)]) == 2
    assert "--undef-hash needs a style that hashes" in capsys.readouterr().err
    assert main(["hash", str(tmp_path / "missing.ko")]) == 2
    assert "missing.ko: no such file or directory" in capsys.readouterr().err


# --- real Debian kernels ------------------------------------------------------------------

CHAIN = ("crc16", "mbcache", "jbd2", "ext4")


def _module(moddir: Path, name: str) -> Path:
    return next(p for p in moddir.rglob(f"{name}.ko*") if p.name.split(".ko")[0] == name)


@pytest.mark.corpus
@pytest.mark.parametrize("style", list(STORABLE))
def test_real_modules(corpus, tmp_path: Path, style: str) -> None:
    root, release = corpus("6.12-amd64")
    moddir = find_tree(str(root), release).moddir
    opts = HashOptions(style, sort=True, undef_hash=style != "bsearch", strip_signature=True)
    for name in CHAIN:
        src = _module(moddir, name)
        dst = tmp_path / src.name
        process_file(str(src), str(dst), opts)
        raw = dst.read_bytes()
        assert detect(raw) == "xz" and xz_check(raw) == 1
        old, new = plain_of(src), plain_of(dst)
        elf = ElfFile(new, str(dst))
        added = [s.name for s in elf.sections if s.name.endswith((".htable", ".undef.hash"))]
        if not added:  # ext4 exports nothing: only .undef.hash would be added
            assert style == "bsearch" and name == "ext4" and raw == src.read_bytes()
            continue
        assert_only_appended(old, new, added)
        readelf_clean(new)
        objdump_clean(new)
        assert verify_image(elf) == []
        assert parse_module(new, name) == parse_module(old, name)
        # a second run changes nothing
        shutil.copy(dst, tmp_path / "again")
        assert not process_file(str(tmp_path / "again"), None, opts).changed
        assert (tmp_path / "again").read_bytes() == raw


@pytest.mark.corpus
def test_real_elf32_rel_module(corpus, tmp_path: Path) -> None:
    root, release = corpus("6.1-686")
    src = _module(find_tree(str(root), release).moddir, "jbd2")
    dst = tmp_path / "jbd2.ko"
    process_file(str(src), str(dst), HashOptions("gnu", sort=True, undef_hash=True,
                                                 strip_signature=True))
    old, new = plain_of(src), dst.read_bytes()
    assert_only_appended(old, new, ["__ksymtab.htable", ".undef.hash"])
    readelf_clean(new)
    objdump_clean(new)
    assert verify_image(ElfFile(new)) == []


@pytest.mark.corpus
def test_real_vmlinux(corpus, tmp_path: Path) -> None:
    root, release = corpus("6.12-amd64")
    tree = find_tree(str(root), release)
    assert tree.vmlinuz is not None
    with pytest.raises(FormatError, match="vmlinuz"):
        process_file(str(tree.vmlinuz), str(tmp_path / "vmlinuz"), SYSV)
    vmlinux = tmp_path / "vmlinux"
    old = extract_vmlinux(decompress_file(str(tree.vmlinuz)), str(tree.vmlinuz))
    vmlinux.write_bytes(old)
    outcome = process_file(str(vmlinux), None, HashOptions("sysv", sort=True, undef_hash=True))
    assert outcome.kind == "vmlinux" and outcome.notes == ()   # linked tables are sorted
    new = vmlinux.read_bytes()
    assert_only_appended(old, new, ["__ksymtab.htable", "__ksymtab_gpl.htable"])
    readelf_clean(new)
    objdump_clean(new)
    assert verify_image(ElfFile(new)) == []
