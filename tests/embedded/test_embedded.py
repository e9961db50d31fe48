"""Embedded tables read back (for the loader model and the bench) and checked
(``fastlkm verify``): a correct file has no problem, and each kind of damage is named."""

from __future__ import annotations

import struct

import pytest

from fastlkm.depmod.probe import probe_order
from fastlkm.elf.reader import ElfFile
from fastlkm.elf.writer import ElfWriter
from fastlkm.embedded.codec import EMBEDDED, HEADER_SIZE, STORABLE, embedded_strategy
from fastlkm.embedded.postprocess import HashOptions, process_image
from fastlkm.embedded.read import (
    embedded_tables,
    read_embedded_tables,
    undefined_names,
    verify_image,
)
from fastlkm.errors import FormatError
from fastlkm.kernel.ksymtab import read_exports
from fastlkm.loader.scenario import export_tables
from fastlkm.lookup.base import Counters
from fastlkm.lookup.hashes import elf_hash
from fastlkm.lookup.space import SymbolSpace
from tests.elf.elfbuild import EM_X86_64, ElfBuilder, Reloc
from tests.kernel.test_ksymtab import EXPORTS, Exp, build_module, build_vmlinux

MORE = (*EXPORTS, Exp("zeta", crc=5), Exp("alpha", crc=6), Exp("m_gpl", gpl=True, crc=7))


def processed(style: str = "sysv", undef: bool = True, sort: bool = True, **kw: object
              ) -> bytes:
    data = build_module(MORE, **kw)  # type: ignore[arg-type]
    out, _ = process_image(data, "t.ko", HashOptions(style, sort=sort,
                                                     undef_hash=undef and style != "bsearch"))
    return out


@pytest.mark.parametrize("style", list(STORABLE))
@pytest.mark.parametrize("machine", ["x86_64", "s390", "i386", "ppc"])
def test_processed_module_verifies(style: str, machine: str) -> None:
    out = processed(style, machine=machine, rela=machine != "i386")
    assert verify_image(ElfFile(out, "t.ko")) == []


def test_embedded_tables_feed_a_symbol_space() -> None:
    out = processed("gnu")
    elf = ElfFile(out, "t.ko")
    tables = embedded_tables(elf, owner=3, crcs=True)
    want = export_tables(read_exports(elf), 3, True)
    assert [(t.name, t.names, t.license, t.crcs) for t in tables] == \
        [(t.name, t.names, t.license, t.crcs) for t in want]
    space = SymbolSpace(embedded_strategy("gnu"), [])
    space.add(3, tables)
    for t in tables:
        for i, n in enumerate(t.names):
            hit = space.find(n, None, True, Counters())
            assert hit is not None and hit[0] is t and hit[1] == i
    assert all(t.extra[EMBEDDED][0].style == "gnu" for t in tables)  # type: ignore[index]


def test_read_embedded_tables_of_a_file(tmp_path) -> None:
    f = tmp_path / "t.ko"
    f.write_bytes(processed("perfect"))
    assert [t.name for t in read_embedded_tables(str(f))] == ["__ksymtab", "__ksymtab_gpl"]
    g = tmp_path / "plain.ko"
    g.write_bytes(build_module(MORE))
    with pytest.raises(FormatError, match="no embedded table"):
        read_embedded_tables(str(g))


def _section(data: bytes, name: str) -> tuple[int, int]:
    s = ElfFile(data).section(name)
    assert s is not None
    return s.offset, s.size


def test_unprocessed_and_unsorted_are_reported() -> None:
    data = build_module(MORE)
    problems = verify_image(ElfFile(data, "t.ko"))
    assert "__ksymtab: no embedded table (__ksymtab.htable)" in problems
    assert any(p.startswith("__ksymtab: not sorted: entry 1 'cxl_probe' after "
                            "'usb_register_driver'") for p in problems)
    # hashed without sorting: the tables work, and the order is still reported
    out, _ = process_image(data, "t.ko", HashOptions("sysv"))
    assert [p for p in verify_image(ElfFile(out)) if "not sorted" not in p] == []


def test_damaged_hashes_are_reported() -> None:
    out = bytearray(processed("sysv"))
    off, _ = _section(bytes(out), "__ksymtab.htable")
    # the stored hash of entry 0 (after nbucket, nchain, buckets, chain)
    nbucket, n = struct.unpack_from("<II", out, off + HEADER_SIZE)
    at = off + HEADER_SIZE + 8 + 4 * nbucket + 4 * n
    struct.pack_into("<I", out, at, struct.unpack_from("<I", out, at)[0] ^ 0x10)
    problems = verify_image(ElfFile(bytes(out)))
    assert problems and all(p.startswith("__ksymtab.htable: export 0 ") for p in problems)
    assert "not found" in problems[0]


def test_a_table_that_finds_what_is_not_there() -> None:
    """An index that answers for a name its table lacks: swap two stored names' hashes and
    chains so that lookups land on the wrong entry."""
    many = [Exp(f"sym_{i:02}", crc=i) for i in range(20)]
    out = bytearray(process_image(build_module(many), "t.ko", HashOptions("perfect"))[0])
    off, _ = _section(bytes(out), "__ksymtab.htable")
    assert out[off + 5] == 4  # a perfect layout, not the bsearch of a small table
    # u8 seed number, u8 flags, u16 nbuckets, nslots, nwords, then the Bloom words
    _, ns, nw = struct.unpack_from("<HHH", out, off + HEADER_SIZE + 2)
    slots = off + HEADER_SIZE + 8 + 8 * nw
    vals = list(struct.unpack_from(f"<{ns}H", out, slots))
    used = [i for i, v in enumerate(vals) if v != 0xFFFF]
    a, b = used[0], used[1]
    vals[a], vals[b] = vals[b], vals[a]
    struct.pack_into(f"<{ns}H", out, slots, *vals)
    problems = verify_image(ElfFile(bytes(out)))
    assert any("not found" in p for p in problems)


def importing_module(little: bool = True) -> bytes:
    """A module without exports that calls three kernel functions."""
    b = ElfBuilder(True, little, EM_X86_64)
    b.add(".text", b"\xc3" * 64, flags=6, align=16)
    for name in ("printk", "kmalloc", "jbd2_journal_start"):
        b.sym(name)
    b.relocate(".text", [Reloc(4 * i, n, 2, -4) for i, n in
                         enumerate(("printk", "kmalloc", "jbd2_journal_start"))])
    return b.build()


@pytest.mark.parametrize("little", [True, False])
def test_undef_hash_is_checked(little: bool) -> None:
    out, _ = process_image(importing_module(little), "t.ko", HashOptions("sysv",
                                                                         undef_hash=True))
    out = bytearray(out)
    elf = ElfFile(bytes(out))
    names = undefined_names(elf)
    assert names == [b"printk", b"kmalloc", b"jbd2_journal_start"]
    assert verify_image(elf) == []
    e = "<" if little else ">"
    off, size = _section(bytes(out), ".undef.hash")
    assert size == HEADER_SIZE + 4 * len(names)
    got = struct.unpack_from(f"{e}{len(names)}I", out, off + HEADER_SIZE)
    assert list(got) == [elf_hash(n) for n in names]
    struct.pack_into(f"{e}I", out, off + HEADER_SIZE, got[0] ^ 1)
    problems = verify_image(ElfFile(bytes(out)))
    assert problems == [f".undef.hash: hash 0 is {got[0] ^ 1:#010x}, "
                        f"{names[0].decode()!r} hashes to {got[0]:#010x}"]


def test_stale_table_after_reordering() -> None:
    """A table reordered after hashing no longer matches its index."""
    from fastlkm.kernel.sort import reorder_table

    out = processed("sysv")
    elf = ElfFile(out)
    sec = elf.section("__ksymtab")
    assert sec is not None
    w = ElfWriter(elf)
    n = len([e for e in read_exports(elf) if e.table == "__ksymtab"])
    reorder_table(elf, w, sec, list(range(n))[::-1])
    problems = verify_image(ElfFile(w.build()))
    assert any("not sorted" in p for p in problems)
    assert "__ksymtab.htable: export 0 'zeta' not found" in problems


@pytest.mark.parametrize("style", ["sysv", "perfect"])
def test_linked_image(style: str) -> None:
    data = build_vmlinux(sorted(MORE, key=lambda e: e.name), prel=True)
    out, outcome = process_image(data, "vmlinux", HashOptions(style, undef_hash=True))
    assert outcome.kind == "vmlinux" and outcome.tables == 2
    elf = ElfFile(out)
    assert elf.section(".undef.hash") is None
    assert all(s.flags == 0 for s in elf.sections if s.name.endswith(".htable"))
    assert verify_image(elf) == []


@pytest.mark.corpus
@pytest.mark.parametrize("style", ["sysv", "gnu"])
def test_loader_session_on_embedded_tables(system, tmp_path, style: str) -> None:
    """The loader's lookups for ext4 and its dependencies, replayed over the tables read
    from processed files (vmlinux and modules): every lookup finds what the loader found,
    and the memory is what the strategy reports when it builds the tables itself."""
    from fastlkm.embedded.postprocess import process_file
    from fastlkm.io.codecs import decompress_file
    from fastlkm.kernel.vmlinuz import extract_vmlinux
    from fastlkm.loader.scenario import record
    from fastlkm.lookup.replay import replay
    from fastlkm.lookup.strategies import STRATEGIES

    s = system("6.12-amd64")
    assert s.tree is not None and s.tree.vmlinuz is not None
    sc = record(s.kernel, probe_order(s.modules, s.order, ["ext4"]))
    assert len(sc.module_names) == 4 and all(r.ok for r in sc.results)
    opts = HashOptions(style, sort=True, undef_hash=True, strip_signature=True)
    image = extract_vmlinux(decompress_file(str(s.tree.vmlinuz)), str(s.tree.vmlinuz))
    vmlinux, _ = process_image(image, "vmlinux", opts)
    vm = embedded_tables(ElfFile(vmlinux), -1, s.kernel.modversions)
    assert [t.names for t in vm] == [t.names for t in sc.vmlinux]
    by_name = {m.name: m for m in s.modules}
    mods = {}
    for oid, name in sc.module_names.items():
        dst = tmp_path / f"{name}.ko.xz"
        process_file(str(s.tree.moddir / by_name[name].path), str(dst), opts)
        mods[oid] = read_embedded_tables(str(dst), oid, s.kernel.modversions)
        assert [t.names for t in mods[oid]] == [t.names for t in sc.modules[oid]]
    got = replay(embedded_strategy(style), vm, mods, sc.events)
    assert got.results == [e.expected for e in sc.lookups]
    built = replay(STRATEGIES[style], sc.vmlinux, sc.modules, sc.events)
    assert got.memory == built.memory and got.counters == built.counters
