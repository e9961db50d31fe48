"""The ``.modinfo`` section: NUL-separated ``key=value`` strings (MODULE_INFO())."""

from __future__ import annotations

from fastlkm.elf.reader import ElfFile


def parse_modinfo(data: bytes) -> tuple[tuple[str, str], ...]:
    """Every ``key=value`` pair in file order; strings without '=' are skipped, as
    get_next_modinfo() in kernel/module/main.c does."""
    out = []
    for raw in data.split(b"\0"):
        if not raw:
            continue
        k, sep, v = raw.partition(b"=")
        if not sep:
            continue
        out.append((k.decode("utf-8", "replace"), v.decode("utf-8", "replace")))
    return tuple(out)


def read_modinfo(elf: ElfFile) -> tuple[tuple[str, str], ...]:
    sec = elf.section(".modinfo")
    return parse_modinfo(elf.section_data(sec)) if sec is not None else ()


# license_is_gpl_compatible() in include/linux/license.h
GPL_COMPATIBLE = frozenset({
    "GPL", "GPL v2", "GPL and additional rights", "Dual BSD/GPL", "Dual MIT/GPL",
    "Dual MPL/GPL",
})


def license_is_gpl_compatible(license: str) -> bool:
    return license in GPL_COMPATIBLE
