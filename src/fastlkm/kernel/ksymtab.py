"""The one decoder of export tables, for every kernel generation.

An export table is an array of ``struct kernel_symbol`` in a ``__ksymtab*`` section:
- absolute entries: ``{value, name[, namespace]}`` as pointers (32- or 64-bit);
- PREL32 entries (HAVE_ARCH_PREL32_RELOCATIONS, Linux 4.19+): ``{int value_offset,
  int name_offset[, int namespace_offset]}``, each relative to its own field;
- Linux 5.4+ adds the namespace field; Linux 7.x keeps a single ``__ksymtab`` whose
  GPL-only-ness lives in a parallel byte array ``__kflagstab``.
CRCs (CONFIG_MODVERSIONS) live in a parallel ``__kcrctab*`` array of u32.

In a module (ET_REL) the entries are zero until relocated, so names are read through the
relocations: every field's target is ``S + A`` (PC-relative or absolute alike), an offset
into ``__ksymtab_strings``.  In vmlinux the entries are resolved and read as addresses.
"""

from __future__ import annotations

from itertools import pairwise
from math import gcd

from fastlkm.elf.reader import ElfFile, Section, cstring
from fastlkm.elf.structs import ET_REL, SHN_ABS, SHN_UNDEF, Layout
from fastlkm.kernel.facts import KSYM_FLAG_GPL_ONLY, Export, License

# (table suffix, license) in the kernel's search order (find_symbol())
TABLES = (
    ("", License.NOT_GPL_ONLY),
    ("_gpl", License.GPL_ONLY),
    ("_gpl_future", License.WILL_BE_GPL_ONLY),
    ("_unused", License.NOT_GPL_ONLY),
    ("_unused_gpl", License.GPL_ONLY),
)


def _layouts(elf: ElfFile) -> list[tuple[int, int]]:
    """Candidate (field size, fields per entry), most recent generation first."""
    p = elf.layout.ptr_size
    out = [(4, 3), (4, 2), (p, 3), (p, 2)]
    return list(dict.fromkeys(out))


def read_exports(elf: ElfFile) -> list[Export]:
    """Every export of *elf*, table by table in the kernel's search order."""
    strings = elf.section("__ksymtab_strings")
    out: list[Export] = []
    for suffix, license in TABLES:
        sec = elf.section("__ksymtab" + suffix)
        if sec is None or sec.size == 0:
            continue
        if strings is None:
            raise elf.error(f"{sec.name} present but no __ksymtab_strings", sec.offset)
        _, entries = table_entries(elf, sec, strings)
        crcs = _read_crcs(elf, "__kcrctab" + suffix, len(entries))
        flags = _read_flags(elf, len(entries)) if suffix == "" else None
        for i, (name, ns) in enumerate(entries):
            lic, fl = license, 0
            if flags is not None:
                fl = flags[i]
                lic = License.GPL_ONLY if fl & KSYM_FLAG_GPL_ONLY else License.NOT_GPL_ONLY
            out.append(Export(name, lic, ns, crcs[i] if crcs else None, sec.name, fl))
    return out


def table_entries(elf: ElfFile, sec: Section, strings: Section | None = None
                  ) -> tuple[int, list[tuple[str, str]]]:
    """(entry size, [(name, namespace)] in table order) of the export table *sec*."""
    if strings is None:
        strings = elf.section("__ksymtab_strings")
        if strings is None:
            raise elf.error(f"{sec.name} present but no __ksymtab_strings", sec.offset)
    if elf.e_type == ET_REL:
        return _read_relocatable(elf, sec, strings)
    return _read_linked(elf, sec, strings)


def _entry_size_from_symbols(elf: ElfFile, sec: Section) -> int | None:
    """The stride of a module's table, from its ``__ksymtab_<name>`` labels."""
    offs = sorted({s.value for s in elf.symbols_where(shndx=sec.index, prefix=b"__ksymtab_")})
    if len(offs) < 2:
        return None
    g = 0
    for a, b in pairwise(offs):
        g = gcd(g, b - a)
    return g or None


def _read_relocatable(elf: ElfFile, sec: Section, strings: Section
                      ) -> tuple[int, list[tuple[str, str]]]:
    relocs = elf.relocations_for(sec)
    sdata = elf.section_data(strings)

    def target(off: int) -> str | None:
        r = relocs.get(off)
        if r is None:
            return None
        sym, addend = r
        if sym.shndx != strings.index:
            return None
        at = sym.value + addend
        if not 0 <= at < len(sdata):
            return None
        return cstring(sdata, at).decode("utf-8", "replace")

    stride = _entry_size_from_symbols(elf, sec)
    for fsize, nfields in _layouts(elf):
        es = fsize * nfields
        if sec.size % es or (stride is not None and stride != es):
            continue
        entries: list[tuple[str, str]] = []
        for base in range(0, sec.size, es):
            name = target(base + fsize)
            if name is None or (base not in relocs):
                break
            ns = target(base + 2 * fsize) if nfields == 3 else ""
            if ns is None:
                # a namespace field that is NULL (absolute entries without a namespace)
                if base + 2 * fsize in relocs:
                    break
                ns = ""
            entries.append((name, ns))
        else:
            return es, entries
    raise elf.error(f"{sec.name}: no known export entry layout fits", sec.offset)


def _read_linked(elf: ElfFile, sec: Section, strings: Section
                 ) -> tuple[int, list[tuple[str, str]]]:
    data = elf.section_data(sec)
    sdata = elf.section_data(strings)
    lo, hi = strings.addr, strings.addr + strings.size
    lay = elf.layout
    for fsize, nfields in _layouts(elf):
        es = fsize * nfields
        if sec.size % es:
            continue
        # 4-byte fields are PREL32 offsets, or absolute pointers on 32-bit kernels
        modes = (True, False) if fsize == 4 and lay.ptr_size == 4 else (fsize == 4,)
        for prel in modes:
            entries = _decode_linked(data, sec.addr, es, fsize, nfields, prel, lay, lo, hi, sdata)
            if entries is not None:
                return es, entries
    raise elf.error(f"{sec.name}: no known export entry layout fits", sec.offset)


def _decode_linked(data: bytes, addr: int, es: int, fsize: int, nfields: int, prel: bool,
                   lay: Layout, lo: int, hi: int, sdata: bytes) -> list[tuple[str, str]] | None:
    get = (lay.s32 if prel else (lay.u32 if fsize == 4 else lay.word)).unpack_from
    mask = (1 << (8 * lay.ptr_size)) - 1
    out: list[tuple[str, str]] = []
    for base in range(0, len(data), es):
        v = get(data, base + fsize)[0]
        a = (addr + base + fsize + v) & mask if prel else v
        if not lo <= a < hi:
            return None
        name = cstring(sdata, a - lo).decode("utf-8", "replace")
        ns = ""
        if nfields == 3:
            v = get(data, base + 2 * fsize)[0]
            if v:  # a zero offset or NULL pointer: no namespace
                a = (addr + base + 2 * fsize + v) & mask if prel else v
                if not lo <= a < hi:
                    return None
                ns = cstring(sdata, a - lo).decode("utf-8", "replace")
        out.append((name, ns))
    return out


def _read_crcs(elf: ElfFile, name: str, count: int) -> list[int] | None:
    sec = elf.section(name)
    if sec is None:
        return None
    data = elf.section_data(sec)
    # u32 entries since Linux 4.11; 64-bit kernels before it stored unsigned longs
    width = 8 if elf.is64 and count and len(data) == 8 * count else 4
    if len(data) < width * count:
        raise elf.error(f"{name}: {len(data)} bytes for {count} CRCs", sec.offset)
    get = (elf.layout.word if width == 8 else elf.layout.u32).unpack_from
    crcs = [get(data, width * i)[0] & 0xFFFFFFFF for i in range(count)]
    if elf.e_type == ET_REL:
        # older kernels relocate __kcrctab against absolute __crc_<name> symbols
        for off, (sym, addend) in elf.relocations_for(sec).items():
            if off % width == 0 and off // width < count and sym.shndx in (SHN_ABS, SHN_UNDEF):
                crcs[off // width] = (sym.value + addend) & 0xFFFFFFFF
    return crcs


def _read_flags(elf: ElfFile, count: int) -> bytes | None:
    sec = elf.section("__kflagstab")
    if sec is None:
        return None
    data = elf.section_data(sec)
    if len(data) < count:
        raise elf.error(f"__kflagstab: {len(data)} bytes for {count} exports", sec.offset)
    return data[:count]


def kmod_symbols(elf: ElfFile) -> list[str]:
    """The exported names as kmod's depmod reads them (kmod_elf_get_symbols()).

    kmod takes the ``__crc_<name>`` symbols when the module has any, else every string of
    ``__ksymtab_strings``, which on Linux 5.4+ also holds the namespace strings.
    """
    crc = [s.name[6:] for s in elf.symbols_where(prefix=b"__crc_")]
    if crc:
        return crc
    sec = elf.section("__ksymtab_strings")
    if sec is None:
        return []
    return [s.decode("utf-8", "replace") for s in elf.section_data(sec).split(b"\0") if s]
