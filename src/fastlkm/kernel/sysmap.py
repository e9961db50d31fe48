"""``System.map``: ``ADDRESS TYPE NAME`` per line, the kernel's full symbol table.

Exports appear as ``__ksymtab_<name>`` symbols; a GPL-only export's entry lies between
``__start___ksymtab_gpl`` and ``__stop___ksymtab_gpl``; ``__crc_<name>`` symbols carry the
CRCs as their values.  Debian ships a one-line stub in place of the real file.
"""

from __future__ import annotations

from fastlkm.errors import FormatError
from fastlkm.kernel.facts import Export, License


def is_stub(text: str) -> bool:
    """Debian's placeholder ("The real System.map is in the linux-image-...-dbg package")."""
    lines = [x for x in text.splitlines() if x.strip()]
    return len(lines) <= 2 and not any(len(x.split()) == 3 for x in lines)


def parse_system_map(text: str, path: str = "System.map") -> list[Export]:
    ksym: dict[str, int] = {}
    crc: dict[str, int] = {}
    bounds: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        f = line.split()
        if not f:
            continue
        if len(f) < 3:
            raise FormatError(f"line {lineno}: expected 'ADDRESS TYPE NAME'", path)
        try:
            addr = int(f[0], 16)
        except ValueError:
            raise FormatError(f"line {lineno}: invalid address {f[0]!r}", path) from None
        name = f[2]
        if name.startswith("__ksymtab_"):
            ksym[name[10:]] = addr
        elif name.startswith("__crc_"):
            crc[name[6:]] = addr & 0xFFFFFFFF
        elif name.startswith(("__start___ksymtab", "__stop___ksymtab")):
            bounds[name] = addr
    # section-bound symbols are not exports
    for t in ("gpl", "gpl_future", "unused", "unused_gpl"):
        ksym.pop(t, None)
    out = []
    lo, hi = bounds.get("__start___ksymtab_gpl"), bounds.get("__stop___ksymtab_gpl")
    for name, addr in ksym.items():
        gpl = lo is not None and hi is not None and lo <= addr < hi
        lic = License.GPL_ONLY if gpl else License.NOT_GPL_ONLY
        out.append(Export(name, lic, "", crc.get(name),
                          "__ksymtab_gpl" if gpl else "__ksymtab"))
    out.sort(key=lambda e: (e.license, e.name.encode()))
    return out
