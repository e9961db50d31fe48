"""``Module.symvers``: modpost's record of every export, with CRC, owner and namespace.

Lines are ``0xCRC<TAB>name<TAB>module<TAB>EXPORT_SYMBOL[_GPL]<TAB>namespace`` (Linux 5.4+;
older files have no namespace column).  The kernel's own exports have module ``vmlinux``.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastlkm.errors import FormatError
from fastlkm.kernel.facts import Export, License

_EXPORT_TYPES = {
    "EXPORT_SYMBOL": License.NOT_GPL_ONLY,
    "EXPORT_SYMBOL_GPL": License.GPL_ONLY,
    "EXPORT_SYMBOL_GPL_FUTURE": License.WILL_BE_GPL_ONLY,
    "EXPORT_UNUSED_SYMBOL": License.NOT_GPL_ONLY,
    "EXPORT_UNUSED_SYMBOL_GPL": License.GPL_ONLY,
}
_TABLE = {License.NOT_GPL_ONLY: "__ksymtab", License.GPL_ONLY: "__ksymtab_gpl",
          License.WILL_BE_GPL_ONLY: "__ksymtab_gpl_future"}


@dataclass(frozen=True, slots=True)
class SymversEntry:
    export: Export
    module: str       # "vmlinux" or the module's path without extension


def parse_symvers(text: str, path: str = "Module.symvers") -> list[SymversEntry]:
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        f = line.split("\t")
        if len(f) < 4:
            raise FormatError(f"line {lineno}: expected at least 4 tab-separated fields", path)
        crc_s, name, module, etype = f[0], f[1], f[2], f[3]
        ns = f[4] if len(f) > 4 else ""
        try:
            crc = int(crc_s, 16)
        except ValueError:
            raise FormatError(f"line {lineno}: invalid CRC {crc_s!r}", path) from None
        if crc >> 32:
            raise FormatError(f"line {lineno}: CRC {crc_s} wider than 32 bits", path)
        lic = _EXPORT_TYPES.get(etype)
        if lic is None:
            raise FormatError(f"line {lineno}: unknown export type {etype!r}", path)
        out.append(SymversEntry(Export(name, lic, ns, crc, _TABLE[lic]), module))
    return out


def vmlinux_exports(entries: list[SymversEntry]) -> list[Export]:
    """The kernel's own exports, table by table, each table sorted by name as
    the kernel's are (modpost/linker since Linux 3.0, so find_symbol() can bsearch)."""
    ex = [e.export for e in entries if e.module == "vmlinux"]
    return sorted(ex, key=lambda e: (e.license != License.NOT_GPL_ONLY, e.license,
                                     e.name.encode()))
