"""Modversions: the CRCs a module expects of the symbols it imports.

``__versions`` is an array of ``struct modversion_info {unsigned long crc; char
name[64 - sizeof(unsigned long)];}``.  Linux 6.13+ with CONFIG_EXTENDED_MODVERSIONS adds
``__version_ext_crcs`` (u32 array) and ``__version_ext_names`` (NUL-separated names) for
names too long for the fixed field.
"""

from __future__ import annotations

from fastlkm.elf.reader import ElfFile, cstring

MODULE_NAME_LEN = 64


def read_versions(elf: ElfFile) -> tuple[tuple[tuple[str, int], ...], bool]:
    """(entries in file order, whether the module has any versions section)."""
    out: list[tuple[str, int]] = []
    found = False
    sec = elf.section("__versions")
    if sec is not None:
        found = True
        data = elf.section_data(sec)
        if len(data) % MODULE_NAME_LEN:
            raise elf.error(f"__versions size {len(data)} is not a multiple of "
                            f"{MODULE_NAME_LEN}", sec.offset)
        word = elf.layout.word
        for off in range(0, len(data), MODULE_NAME_LEN):
            crc = word.unpack_from(data, off)[0]
            name = cstring(data[off + word.size:off + MODULE_NAME_LEN], 0)
            out.append((name.decode("utf-8", "replace"), crc & 0xFFFFFFFF))
    crcs, names = elf.section("__version_ext_crcs"), elf.section("__version_ext_names")
    if crcs is not None and names is not None:
        found = True
        cdata = elf.section_data(crcs)
        nlist = elf.section_data(names).split(b"\0")
        u32 = elf.layout.u32
        n = len(cdata) // 4
        if len([x for x in nlist if x]) < n:
            raise elf.error("__version_ext_names has fewer names than __version_ext_crcs",
                            names.offset)
        it = iter(x for x in nlist if x)
        for i in range(n):
            out.append((next(it).decode("utf-8", "replace"), u32.unpack_from(cdata, 4 * i)[0]))
    return tuple(out), found
