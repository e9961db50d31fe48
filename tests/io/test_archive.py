"""Debian packages and tarballs: a real kernel package opens as its tree does; hostile
archives are refused with one line and nothing is written outside the destination."""

from __future__ import annotations

import io
import lzma
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from fastlkm.cli import main
from fastlkm.errors import FastlkmError
from fastlkm.io.archive import ar_members, extract, extracted
from fastlkm.io.codecs import compress
from fastlkm.target import System, open_system
from tests.conftest import skip_or_fail

Member = tuple[str, bytes | None, dict[str, object]]  # name, data, TarInfo attributes


def tar_bytes(members: list[Member]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, data, attrs in members:
            ti = tarfile.TarInfo(name)
            for k, v in attrs.items():
                setattr(ti, k, v)
            if data is not None:
                ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def ar_bytes(members: list[tuple[str, bytes]], declared: dict[str, int] | None = None) -> bytes:
    out = bytearray(b"!<arch>\n")
    for name, data in members:
        size = (declared or {}).get(name, len(data))
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{size:<10}`\n".encode()
        out += data + (b"\n" if len(data) & 1 else b"")
    return bytes(out)


def deb_bytes(data_tar: bytes, fmt: str = "xz") -> bytes:
    suffix = {"xz": ".xz", "gzip": ".gz", "zstd": ".zst", None: ""}[fmt]
    payload = compress(data_tar, fmt) if fmt else data_tar
    control = compress(tar_bytes([("./control", b"Package: x\n", {})]), "xz")
    return ar_bytes([("debian-binary", b"2.0\n"), ("control.tar.xz", control),
                     (f"data.tar{suffix}", payload)])


def listing(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*")}


# --- well-formed archives -----------------------------------------------------------------

FILES: list[Member] = [
    ("./", None, {"type": tarfile.DIRTYPE, "mode": 0o755}),
    ("./lib/modules/1.0/kernel/a.ko", b"A" * 5000, {"mode": 0o644}),
    ("./lib/modules/1.0/kernel/b.ko", b"B" * 3, {"mode": 0o4755}),
    ("./lib/modules/1.0/kernel/c.ko", None, {"type": tarfile.LNKTYPE,
                                             "linkname": "./lib/modules/1.0/kernel/a.ko"}),
    ("./lib/modules/1.0/build", None, {"type": tarfile.SYMTYPE,
                                       "linkname": "/usr/src/linux-headers-1.0"}),
    ("./usr/src/linux-headers-1.0/Module.symvers", b"", {}),
]


def check_extracted(root: Path) -> None:
    k = root / "lib/modules/1.0/kernel"
    assert (k / "a.ko").read_bytes() == b"A" * 5000
    assert os.stat(k / "c.ko").st_ino == os.stat(k / "a.ko").st_ino
    assert os.stat(k / "b.ko").st_mode & 0o7777 == 0o755          # setuid dropped
    build = root / "lib/modules/1.0/build"
    # an absolute link is taken from the package's root, never the machine's
    assert os.readlink(build) == "../../../usr/src/linux-headers-1.0"
    assert (build / "Module.symvers").exists()


@pytest.mark.parametrize("fmt", [None, "gzip", "xz", "zstd"])
def test_deb_and_tarballs_extract(tmp_path: Path, fmt: str | None) -> None:
    deb = tmp_path / "k.deb"
    deb.write_bytes(deb_bytes(tar_bytes(FILES), fmt))
    check_extracted(extract(str(deb), tmp_path / "d"))
    suffix = {None: ".tar", "gzip": ".tar.gz", "xz": ".tar.xz", "zstd": ".tar.zst"}[fmt]
    tb = tmp_path / f"root{suffix}"
    raw = tar_bytes(FILES)
    tb.write_bytes(compress(raw, fmt) if fmt else raw)
    check_extracted(extract(str(tb), tmp_path / "t"))


def test_destination_must_be_fresh(tmp_path: Path) -> None:
    tb = tmp_path / "r.tar"
    tb.write_bytes(tar_bytes(FILES))
    (tmp_path / "d").mkdir()
    with pytest.raises(FastlkmError, match="fresh directory"):
        extract(str(tb), tmp_path / "d")


def test_extracted_is_cached_per_size_and_mtime(tmp_path: Path) -> None:
    tb = tmp_path / "r.tar"
    tb.write_bytes(tar_bytes(FILES))
    a = extracted(str(tb))
    assert extracted(str(tb)) == a
    tb.write_bytes(tar_bytes(FILES[:2]))
    os.utime(tb, ns=(1, 1))
    b = extracted(str(tb))
    assert b != a and not a.exists()           # the stale extraction is gone
    assert not (b / "lib/modules/1.0/kernel/b.ko").exists()
    assert [p.name for p in b.parent.parent.iterdir()] == [b.parent.name]


# --- hostile archives ---------------------------------------------------------------------


def hostile(tmp_path: Path) -> dict[str, tuple[bytes, str]]:
    """name -> (tar bytes, what the error says)"""
    outside = tmp_path / "abs-evil"
    big = b"\0" * (2 << 20)
    return {
        "dotdot": (tar_bytes([("../evil", b"x", {})]), r"member \.\./evil: path leaves"),
        "dotdot-deep": (tar_bytes([("a/b/../../../evil", b"x", {})]), "path leaves"),
        "absolute": (tar_bytes([(str(outside), b"x", {})]), "absolute path"),
        "symlink-then-file": (tar_bytes([
            ("etc", None, {"type": tarfile.SYMTYPE, "linkname": str(tmp_path)}),
            ("etc/evil", b"x", {})]), "member etc/evil: goes through etc"),
        "symlink-up": (tar_bytes([
            ("up", None, {"type": tarfile.SYMTYPE, "linkname": "../../.."})]),
            "member up: symbolic link to ../../.. leads outside"),
        # lexically inside, really outside: s is the root, so s/.. is its parent
        "symlink-chain": (tar_bytes([
            ("s", None, {"type": tarfile.SYMTYPE, "linkname": "."}),
            ("d/e/l", None, {"type": tarfile.SYMTYPE, "linkname": "../../s/../evil"})]),
            "member d/e/l: symbolic link to ../../s/../evil leads outside"),
        "hardlink-outside": (tar_bytes([
            ("h", None, {"type": tarfile.LNKTYPE, "linkname": str(tmp_path / "victim")})]),
            "member h: hard link to .*absolute path"),
        "hardlink-dotdot": (tar_bytes([
            ("h", None, {"type": tarfile.LNKTYPE, "linkname": "../victim"})]), "member h"),
        "hardlink-unknown": (tar_bytes([
            ("h", None, {"type": tarfile.LNKTYPE, "linkname": "nothing"})]),
            "not a file extracted before it"),
        "chardev": (tar_bytes([("null", None, {"type": tarfile.CHRTYPE, "devmajor": 1,
                                               "devminor": 3})]),
                    "member null: is a character device: refused"),
        "blockdev": (tar_bytes([("sda", None, {"type": tarfile.BLKTYPE, "devmajor": 8})]),
                     "is a block device"),
        "fifo": (tar_bytes([("p", None, {"type": tarfile.FIFOTYPE})]), "is a FIFO"),
        "huge": (tar_bytes([("big", big, {})]), "exceeds"),
        "bad-tar": (b"\x13" * 4096, "not a valid tar archive"),
        "empty-tar": (b"", "not a valid tar archive"),
        "truncated-tar": (tar_bytes([("a", b"y" * 4000, {})])[:2000], "truncated|unexpected"),
        "long-name-header": (tar_bytes([("ok", b"", {})])[:512] + long_name_header(1 << 30),
                             r"extended header of 1073741824 bytes"),
    }


def long_name_header(size: int) -> bytes:
    """A GNU long-name header announcing *size* bytes of name (read whole by tarfile)."""
    ti = tarfile.TarInfo("././@LongLink")
    ti.type, ti.size = tarfile.GNUTYPE_LONGNAME, size
    return ti.tobuf(tarfile.USTAR_FORMAT) + b"n" * 4096


CASES = ["dotdot", "dotdot-deep", "absolute", "symlink-then-file", "symlink-up",
         "symlink-chain", "hardlink-outside", "hardlink-dotdot", "hardlink-unknown",
         "chardev", "blockdev", "fifo", "huge", "bad-tar", "empty-tar", "truncated-tar",
         "long-name-header"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("kind", ["deb", "tar.xz"])
def test_hostile_archives_are_refused(tmp_path: Path, case: str, kind: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    data, why = hostile(tmp_path)[case]
    (tmp_path / "victim").write_bytes(b"victim")
    box = tmp_path / "box"
    box.mkdir()
    arc = box / f"evil.{kind}"
    arc.write_bytes(deb_bytes(data) if kind == "deb" else compress(data, "xz"))
    before = listing(tmp_path)
    with pytest.raises(FastlkmError, match=why) as e:
        extract(str(arc), box / "dest", limit=1 << 20)
    assert str(e.value).startswith(f"{arc}: ")
    assert listing(tmp_path) == before          # the destination is gone, nothing else new
    assert (tmp_path / "victim").read_bytes() == b"victim"
    # the command line: one line naming the archive, status 2, nothing left behind (with
    # the default cap, "huge" extracts and then holds no kernel)
    assert main(["resolve", str(arc)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"fastlkm: error: {arc}: ")
    assert case != "huge" or "no kernel modules in this archive" in err[0]
    assert listing(tmp_path) == before


def test_decompression_bomb_is_capped(tmp_path: Path) -> None:
    # the declared size passes, the stream itself decodes past the cap
    arc = tmp_path / "bomb.tar.xz"
    arc.write_bytes(lzma.compress(tar_bytes([(f"f{i}", b"\0" * (400 << 10), {})
                                             for i in range(4)])))
    with pytest.raises(FastlkmError, match="decompressed size exceeds 1048576 bytes"):
        extract(str(arc), tmp_path / "d", limit=1 << 20)
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("case,why,offset", [
    ("truncated-header", r"truncated ar member header \(20 of 60 bytes\)", 8),
    ("past-eof", "ar member debian-binary of 999999 bytes runs past the end", 56),
    ("bad-magic", r"not an ar archive", 0),
    ("no-fmag", "no terminator", 66),
    ("bad-size", "bad ar member size", 56),
    ("not-a-deb", "no debian-binary first", 8),
    ("no-data", "no data.tar member", None),
    ("bad-version", "unsupported package format", 68),
])
def test_bad_ar_archives(tmp_path: Path, case: str, why: str, offset: int | None) -> None:
    good = ar_bytes([("debian-binary", b"2.0\n")])
    data = {
        "truncated-header": good[:28],
        "past-eof": ar_bytes([("debian-binary", b"2.0\n")], {"debian-binary": 999999}),
        "bad-magic": b"!<arch>x" + good[8:],
        "no-fmag": good[:66] + b"xx" + good[68:],
        "bad-size": good[:56] + b"-4        " + good[66:],
        "not-a-deb": ar_bytes([("data.tar", tar_bytes(FILES))]),
        "no-data": good,
        "bad-version": ar_bytes([("debian-binary", b"3.0\n")]),
    }[case]
    arc = tmp_path / "x.deb"
    arc.write_bytes(data)
    with pytest.raises(FastlkmError, match=why) as e:
        extract(str(arc), tmp_path / "d")
    assert e.value.path == str(arc) and e.value.offset == offset
    assert listing(tmp_path) == {"x.deb"}


def test_ar_reader_padding(tmp_path: Path) -> None:
    arc = tmp_path / "a.ar"
    arc.write_bytes(ar_bytes([("odd", b"123"), ("even/", b"4567"), ("last", b"8")]))
    with open(arc, "rb") as f:
        got = [(m.name, m.offset, m.size) for m in ar_members(f, str(arc))]
    assert got == [("odd", 68, 3), ("even", 132, 4), ("last", 196, 1)]


# --- a real Debian kernel package ---------------------------------------------------------


@pytest.mark.corpus
def test_corpus_deb_opens_as_its_tree(corpus: Callable[[str], tuple[Path, str]],
                                      system: Callable[..., System],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    root, release = corpus("6.1-cloud-amd64")
    debs = sorted((root.parent.parent / "debs").glob(f"linux-image-{release}_*.deb"))
    if not debs:
        skip_or_fail(f"no cached package linux-image-{release}")
    tree = system("6.1-cloud-amd64", "vmlinuz")
    pkg = open_system(str(debs[0]), source="vmlinuz")
    assert pkg.origin == str(debs[0]) and pkg.kernel.release == release
    assert pkg.kernel.exports == tree.kernel.exports
    assert len(pkg.modules) > 1000 and pkg.modules == tree.modules   # paths relative
    assert pkg.order == tree.order and not pkg.errors
    assert main(["resolve", str(debs[0])]) == 0
    assert "failed 0" in capsys.readouterr().out
