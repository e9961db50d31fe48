"""vmlinux's lookup tables, filled in after link: the kernel build's KSYMHASH step.

The patched linker script reserves ``__ksymtab_htables`` (read-only data, 64 bytes per
export entry plus 4 KiB); ``scripts/link-vmlinux.sh`` runs ``fastlkm kernel postlink
vmlinux`` after ``sorttable``, as Amoroso's ``ksymhash`` ran after the 2009 link, and the
kernel reads the section at boot (kernel/module/lookup.c, lookup_take_vmlinux()).
Nothing is hashed at boot.

The section holds a 16-byte header, then per export table of vmlinux (``__ksymtab``,
``__ksymtab_gpl``) its offset and size, then per table what a module's
``__ksymtab<suffix>.htable`` section of ``fastlkm hash --style all`` holds: one record
per storable strategy (docs/lookup.md)::

    0  magic b"FLKV"      4  u8 version (1)   5  u8 tables   6  u16 0
    8  u32 bytes used     12 u32 0            16 per table: u32 offset, u32 size
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from fastlkm.elf.reader import ElfFile
from fastlkm.elf.structs import SHT_PROGBITS
from fastlkm.embedded.codec import RECORD_ALIGN, STORABLE, encode_index, join_records
from fastlkm.errors import FormatError
from fastlkm.io.atomic import atomic_write
from fastlkm.kernel.ksymtab import read_exports
from fastlkm.loader.scenario import export_tables
from fastlkm.lookup.strategies import STRATEGIES

SECTION = "__ksymtab_htables"
START, STOP = f"__start_{SECTION}", f"__stop_{SECTION}"
MAGIC = b"FLKV"
VERSION = 1
TABLES = ("__ksymtab", "__ksymtab_gpl")   # the order of the directory, the kernel's


@dataclass(frozen=True)
class Filled:
    """What the post-link step wrote."""

    path: str
    used: int                   # bytes of the section used
    room: int                   # bytes reserved by the linker script
    entries: tuple[int, ...]    # per table of TABLES

    def text(self) -> str:
        return (f"fastlkm: {self.path}: {SECTION}: {self.used} of {self.room} bytes for "
                f"{' + '.join(map(str, self.entries))} exports")


def _pad(b: bytes) -> bytes:
    return b + bytes(-len(b) % RECORD_ALIGN)


def vmlinux_tables(elf: ElfFile) -> tuple[bytes, tuple[int, ...]]:
    """The contents of ``__ksymtab_htables`` for *elf* and the entries of each table."""
    by_name = {t.name: t for t in export_tables(read_exports(elf), -1, False)}
    extra = sorted(set(by_name) - set(TABLES))
    if extra:
        raise elf.error(f"export tables {', '.join(extra)}: this kernel generation has no "
                        f"place for them in {SECTION}")
    blobs, entries = [], []
    strategies = [STRATEGIES[s] for s in STORABLE]
    for name in TABLES:
        t = by_name.get(name)
        n = len(t.names) if t is not None else 0
        entries.append(n)
        if not n or t is None:
            blobs.append(b"")
            continue
        blobs.append(_pad(join_records([encode_index(st, st.build(t), n, elf.little)
                                        for st in strategies if st.build is not None])))
    e = "<" if elf.little else ">"
    head_size = 16 + 8 * len(TABLES)
    head_size += -head_size % RECORD_ALIGN
    offsets, pos = [], head_size
    for b in blobs:
        offsets.append(pos)
        pos += len(b)
    directory = b"".join(struct.pack(e + "II", o, len(b))
                         for o, b in zip(offsets, blobs, strict=True))
    head = struct.pack(e + "4sBBHII", MAGIC, VERSION, len(TABLES), 0, pos, 0) + directory
    return _pad(head) + b"".join(blobs), tuple(entries)


def fill_vmlinux(path: str) -> Filled:
    """Fill ``__ksymtab_htables`` of the vmlinux at *path* in place (written atomically,
    as ``scripts/sorttable`` edits vmlinux after link)."""
    raw = Path(path).read_bytes()
    elf = ElfFile(raw, path)
    sec = elf.section(SECTION)
    if sec is None:
        raise FormatError(f"no {SECTION} section: not a kernel built with "
                          f"CONFIG_MODULE_FAST_LOOKUP", path)
    # the kernel reads from __start___ksymtab_htables to __stop___ksymtab_htables
    marks = {s.name: s.value for s in elf.symbols_where(prefix=b"__st")
             if s.name in (START, STOP)}
    if set(marks) != {START, STOP} or not \
            sec.addr <= marks[START] <= marks[STOP] <= sec.addr + sec.size:
        raise elf.error(f"{START} and {STOP} do not bound {SECTION}", sec.offset)
    begin = sec.offset + marks[START] - sec.addr
    room = marks[STOP] - marks[START]
    if marks[START] % RECORD_ALIGN:
        raise elf.error(f"{START} is not {RECORD_ALIGN}-byte aligned", begin)
    data, entries = vmlinux_tables(elf)
    if len(data) > room:
        raise elf.error(f"{SECTION}: the tables need {len(data)} bytes, the linker script "
                        f"reserved {room}", begin)
    if sec.type != SHT_PROGBITS or begin + room > len(raw):
        raise elf.error(f"{SECTION} has no contents in the file (NOBITS?)", sec.offset)
    out = bytearray(raw)
    out[begin:begin + room] = data + bytes(room - len(data))
    atomic_write(Path(path), bytes(out), mode=Path(path).stat().st_mode & 0o7777)
    return Filled(path, len(data), room, entries)
