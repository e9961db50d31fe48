"""Fuzz targets: one per parser.  Each takes bytes and may only succeed or raise
fastlkm's FormatError (or its subclasses); anything else is a finding.

Used by fuzz/run.py (coverage-guided, atheris) and replayed by the test suite
(tests/test_fuzz_regressions.py) over fuzz/regressions/TARGET/*.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from fastlkm.errors import FormatError


def elf(data: bytes) -> None:
    """The ELF reader, the export-table decoder and the whole module parser."""
    from fastlkm.elf.reader import ElfFile
    from fastlkm.elf.structs import SHT_REL, SHT_RELA
    from fastlkm.kernel.ksymtab import read_exports
    from fastlkm.kernel.module import parse_module

    e = ElfFile(data, "fuzz")
    _ = e.symbols
    for s in e.sections:
        if s.type in (SHT_REL, SHT_RELA) and 0 <= s.info < len(e.sections):
            e.relocations_for(e.sections[s.info])
    read_exports(e)
    parse_module(data, "fuzz")


def scan(data: bytes) -> None:
    """The native scan of depmod's facts against the reference decoder: it must decline
    whatever the reference rejects and agree with whatever the reference reads."""
    from fastlkm.depmod import scan as sc
    from fastlkm.kernel.module import parse_module

    if sc._native is None:   # built without a compiler: only the reference is left
        parse_module(data, "fuzz")
        return
    got = sc._native.scan(data)
    try:
        ref = sc.from_module(parse_module(data, "fuzz"))
    except FormatError:
        if got is not None:
            raise AssertionError("native scan answered where the reference rejects") from None
        raise
    if got is None:
        return
    mine = sc.DepmodModule("fuzz", *got)
    if mine._replace(kmod_symbols=sorted(mine.kmod_symbols)) != \
            ref._replace(kmod_symbols=sorted(ref.kmod_symbols)):
        raise AssertionError("native scan and reference decoder disagree")


def vmlinuz(data: bytes) -> None:
    from fastlkm.kernel.vmlinuz import extract_vmlinux

    extract_vmlinux(data, "fuzz", limit=1 << 22)


def imagesyms(data: bytes) -> None:
    """Export tables recovered from a raw kernel image, and the payloads of an image."""
    from fastlkm.kernel.imagesyms import recover_exports
    from fastlkm.kernel.vmlinuz import payloads

    for _ in payloads(data, "fuzz", limit=1 << 22):
        pass
    recover_exports(data, "fuzz")


def elfcheck(data: bytes) -> None:
    """load_module()'s section header checks, every generation's: a line or none, never
    an exception (they read what the ELF reader refuses)."""
    from fastlkm.kernel.elfcheck import elf_validity

    for version in ((6, 1), (6, 6), (6, 12)):
        got = elf_validity(data, version, 1344)
        if got is not None and (not isinstance(got, str) or "\n" in got):
            raise AssertionError(f"elf_validity gave {got!r}")


def codecs(data: bytes) -> None:
    from fastlkm.io.codecs import decompress

    decompress(data, limit=1 << 22, path="fuzz")


def sysmap(data: bytes) -> None:
    from fastlkm.kernel.sysmap import is_stub, parse_system_map

    text = data.decode("utf-8", "replace")
    if not is_stub(text):
        parse_system_map(text, "fuzz")


def symvers(data: bytes) -> None:
    from fastlkm.kernel.symvers import parse_symvers, vmlinux_exports

    vmlinux_exports(parse_symvers(data.decode("utf-8", "replace"), "fuzz"))


def modinfo(data: bytes) -> None:
    from fastlkm.kernel.modinfo import parse_modinfo

    parse_modinfo(data)


def depmod_d(data: bytes) -> None:
    import tempfile
    from pathlib import Path

    from fastlkm.depmod.config import load_config

    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "x.conf").write_bytes(data)
        cfg = load_config("6.1.0-1-amd64", [d])
        cfg.existing_wins(("kernel/a/b.ko", "/m/kernel/a/b.ko"), ("updates/b.ko", "/m/u/b.ko"))


def kmod_index(data: bytes) -> None:
    """The index reader on raw bytes, and a round trip of keys made from them."""
    from fastlkm.depmod.kmod_index import Index, read_index

    with contextlib.suppress(FormatError):
        read_index(data, "fuzz")
    ix = Index()
    # keys and values are C strings, 7-bit ASCII (index__checkstring())
    words = [w for w in data.decode("ascii", "replace").split("\n")
             if w and w.isascii() and "\0" not in w]
    want: dict[str, list[str]] = {}
    for i, w in enumerate(words[:64]):
        key, _, value = w.partition(" ")
        ix.insert(key, value, i)
        want.setdefault(key, []).append(value)
    for version in (30, 34):
        got = read_index(ix.write(version))
        assert {k: sorted(v for _, v in vs) for k, vs in got.items()} == \
            {k: sorted(v) for k, v in want.items()}, "index round trip"


def sections(data: bytes) -> None:
    from fastlkm.embedded.codec import decode

    decode(data, True, "fuzz")
    decode(data, False, "fuzz")


def snapshot(data: bytes) -> None:
    from fastlkm.snapshot import loads

    loads(b"FLKMSNAP\x01" + data, "fuzz")


TARGETS: dict[str, Callable[[bytes], None]] = {
    f.__name__: f for f in (elf, scan, elfcheck, vmlinuz, imagesyms, codecs, sysmap, symvers,
                            modinfo, depmod_d, kmod_index, sections, snapshot)
}


def run_one(target: str, data: bytes) -> None:
    """Run *target* on *data*; FormatError is the one allowed failure."""
    with contextlib.suppress(FormatError):
        TARGETS[target](data)
