"""No quadratic blow-up: a module with many symbols, and one with many relocations on
``__ksymtab``, parse with work linear in their size.

Counted, not timed: the Python and C calls a parse makes (``sys.setprofile``) for ten
times the input must stay under eleven times the calls (linear: ten times plus a
constant; a loop over the input inside a loop over the input: a hundred times).  The
time of the same parses, 100,000 against 1,000,000, is measured by
``benchmarks/scaling.py``.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable

import pytest

from fastlkm.kernel.module import parse_module

R_X86_64_PC32 = 2
SMALL, LARGE, FACTOR = 5_000, 50_000, 11


def _elf(sections: list[tuple[str, int, bytes, int, int, int, int]]) -> bytes:
    """An x86_64 ET_REL file of (name, type, data, link, info, entsize, flags) sections."""
    shstr = b"\0" + b"".join(s[0].encode() + b"\0" for s in sections) + b".shstrtab\0"
    body = bytearray(64)
    headers = [bytes(64)]
    name_at = 1
    for name, sh_type, data, link, info, entsize, flags in [
            *sections, (".shstrtab", 3, shstr, 0, 0, 0, 0)]:
        body += bytes(-len(body) % 8)
        headers.append(struct.pack("<IIQQQQIIQQ", name_at, sh_type, flags, 0, len(body),
                                   len(data), link, info, 8, entsize))
        name_at += len(name) + 1
        body += data
    body += bytes(-len(body) % 8)
    shoff = len(body)
    ehdr = struct.pack("<4sBBBBB7xHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 0, 1, 62, 1,
                       0, 0, shoff, 0, 64, 0, 0, 64, len(headers), len(headers) - 1)
    body[:64] = ehdr
    return bytes(body) + b"".join(headers)


def _strtab(names: list[bytes]) -> tuple[bytes, list[int]]:
    offs, pos = [], 1
    for n in names:
        offs.append(pos)
        pos += len(n) + 1
    return b"\0" + b"\0".join(names) + b"\0", offs


def module_with_imports(n: int) -> bytes:
    """*n* undefined symbols: the module imports n names."""
    strtab, offs = _strtab([b"imp_%07d" % i for i in range(n)])
    sym = struct.Struct("<IBBHQQ")
    syms = bytes(24) + b"".join(sym.pack(o, 0x10, 0, 0, 0, 0) for o in offs)
    return _elf([(".text", 1, b"\xc3" * 16, 0, 0, 0, 6),
                 (".symtab", 2, syms, 3, 1, 24, 0),
                 (".strtab", 3, strtab, 0, 0, 0, 0)])


def module_with_exports(n: int) -> bytes:
    """*n* exports in ``__ksymtab`` (PREL32: value and name relocated, 2n relocations
    against 2n symbols: the functions and their ``__kstrtab_`` labels)."""
    names = [b"exp_%07d" % i for i in range(n)]
    kstr, kstr_offs = _strtab(names)
    kstr = kstr[1:]
    kstr_offs = [o - 1 for o in kstr_offs]
    strtab, offs = _strtab([b"__kstrtab_" + x for x in names] + names)
    sym = struct.Struct("<IBBHQQ")
    # sections: 1 .text, 2 __ksymtab, 3 .rela__ksymtab, 4 __ksymtab_strings, 5 .symtab
    local = b"".join(sym.pack(offs[i], 0x00, 0, 4, kstr_offs[i], 0) for i in range(n))
    glob = b"".join(sym.pack(offs[n + i], 0x12, 0, 1, 0, 0) for i in range(n))
    rela = struct.Struct("<QQq")
    relocs = b"".join(
        rela.pack(12 * i, (1 + n + i) << 32 | R_X86_64_PC32, 0)
        + rela.pack(12 * i + 4, (1 + i) << 32 | R_X86_64_PC32, 0) for i in range(n))
    return _elf([(".text", 1, b"\xc3" * 16, 0, 0, 0, 6),
                 ("__ksymtab", 1, bytes(12 * n), 0, 0, 0, 2),
                 (".rela__ksymtab", 4, relocs, 5, 2, 24, 0x40),
                 ("__ksymtab_strings", 1, kstr, 0, 0, 1, 0x32),
                 (".symtab", 2, bytes(24) + local + glob, 6, 1 + n, 24, 0),
                 (".strtab", 3, strtab, 0, 0, 0, 0)])


def calls(fn: Callable[[], object]) -> int:
    """The Python and C function calls *fn* makes."""
    n = 0

    def count(frame: object, event: str, arg: object) -> None:
        nonlocal n
        if event in ("call", "c_call"):
            n += 1

    sys.setprofile(count)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return n


def test_small_cases_parse_right() -> None:
    m = parse_module(module_with_imports(1000), "i.ko")
    assert len(m.imports) == 1000 and m.imports[999].name == "imp_0000999"
    m = parse_module(module_with_exports(1000), "e.ko")
    assert [e.name for e in m.exports][:2] == ["exp_0000000", "exp_0000001"]
    assert len(m.exports) == 1000


@pytest.mark.parametrize(("build", "per"), [(module_with_imports, 1),
                                            (module_with_exports, 2)],
                         ids=["symbols", "ksymtab-relocations"])
def test_parse_work_grows_linearly(build: Callable[[int], bytes], per: int) -> None:
    """*per* relocations (and symbols) per unit."""
    small, large = build(SMALL // per), build(LARGE // per)
    c_small = calls(lambda: parse_module(small, "s.ko"))
    c_large = calls(lambda: parse_module(large, "l.ko"))
    assert c_small > SMALL // per   # the count sees the per-entry work
    assert c_large < FACTOR * c_small, (c_small, c_large)
