"""Export tables recovered from a kernel image's loaded bytes, without section headers.

The kernel finds its export tables through linker symbols (``__start___ksymtab`` ...), so a
raw image (arm64 ``Image``, the payload of an ARM ``zImage``, of s390x's image or of MIPS's
``vmlinuz``) keeps no trace of where they are.  Their shape gives them away.  RO_DATA in
include/asm-generic/vmlinux.lds.h lays them out in this order:

- ``__ksymtab`` then ``__ksymtab_gpl`` (6.x), or one ``__ksymtab`` (7.x): arrays of
  ``struct kernel_symbol``, each sorted by name -- PREL32 (three or two ``int`` offsets, each
  relative to its own field) or absolute (three or two pointers);
- ``__kcrctab`` (and ``__kcrctab_gpl``) with CONFIG_MODVERSIONS: one u32 per entry;
- ``__kflagstab`` (7.x): one byte per entry, bit 0 GPL-only;
- ``__ksymtab_strings``: the names and namespaces, NUL-terminated, every one of them used.

The recovery finds the longest runs of NUL-separated identifiers, then the arrays whose name
fields point into one of them, for each layout, width and byte order.  An absolute table needs
the address the image is linked at: it is the one that maps the name pointers onto string
starts.  Only what passes every check is returned (names sorted within each table, valid and
unique identifiers, every string of ``__ksymtab_strings`` used, the CRC and flag arrays exactly
as long as the tables); what cannot be established is said in one line.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from types import ModuleType
from typing import TYPE_CHECKING

from fastlkm.errors import FormatError
from fastlkm.kernel.facts import KSYM_FLAG_GPL_ONLY, Export, License

if TYPE_CHECKING:
    import numpy as np

MIN_ENTRIES = 16        # shortest run of entries taken for an export table
_MIN_STRINGS = 512      # shortest run of identifiers taken for __ksymtab_strings
_BLOCK = 256            # granularity of the first pass over the image
_MAX_STRING_RUNS = 4    # longest runs of identifiers tried
_MAX_STRINGS_BYTES = 1 << 24  # a longer run is no __ksymtab_strings (a kernel has ~300 KB)
_MAX_BASE_RUNS = 8      # pointer runs tried when looking for the link address
_MAX_TABLE_GAP = 8      # padding allowed between __ksymtab and __ksymtab_gpl
_WINDOW = 30            # bytes searched before __ksymtab_strings, per byte of it
_FLAG_MASK = 0x03       # KSYM_FLAG_GPL_ONLY | KSYM_FLAG_PROTECTED

_NAME = re.compile(rb"[A-Za-z_][A-Za-z0-9_.$]*")
_NAMESPACE = re.compile(rb"[A-Za-z0-9_.:,\-]+")
_STRING_BYTES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.$:,-"


@dataclass(frozen=True)
class Mode:
    """One way an export entry may be laid out."""

    width: int        # bytes per field: 4 (PREL32 or 32-bit pointers) or 8
    prel: bool        # PREL32 offsets (HAVE_ARCH_PREL32_RELOCATIONS) or absolute pointers
    endian: str       # "<" or ">"

    def describe(self) -> str:
        order = "little-endian" if self.endian == "<" else "big-endian"
        kind = "PREL32" if self.prel else f"absolute {8 * self.width}-bit"
        return f"{kind} {order}"


MODES = tuple(Mode(w, p, e) for w, p in ((4, True), (8, False), (4, False)) for e in "<>")


@dataclass(frozen=True)
class Table:
    name: str        # "__ksymtab", "__ksymtab_gpl"
    offset: int      # in the image
    count: int


@dataclass(frozen=True)
class Recovered:
    """The export tables of a raw image and how they were found."""

    exports: list[Export]
    mode: Mode
    fields: int                  # fields per entry: 3 (with namespace) or 2
    tables: tuple[Table, ...]
    strings: tuple[int, int]     # __ksymtab_strings as [start, end) in the image
    crcs: bool                   # __kcrctab found
    flags: bool                  # __kflagstab found
    base: int | None = None      # link address of the image's first byte (absolute entries)
    notes: tuple[str, ...] = field(default=())

    def describe(self) -> str:
        parts = [f"{t.name} {t.count}" for t in self.tables]
        if self.crcs:
            parts.append("__kcrctab")
        if self.flags:
            parts.append("__kflagstab")
        return f"{self.mode.describe()}, {self.fields} fields: " + " + ".join(parts)


class _Fail(Exception):
    """A candidate that fails a check; the message says which."""


def _np() -> ModuleType:
    import numpy  # imported on first use: most runs read ELF sections

    return numpy


def _string_runs(arr: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of the longest runs of NUL-separated identifier bytes, longest first."""
    np = _np()
    lut = np.zeros(256, np.uint8)
    lut[list(_STRING_BYTES)] = 1
    lut[0] = 2
    cls = lut[arr]
    ok = cls != 0
    nul = cls == 2
    # three NULs in a row end a run (two are an empty string, a namespace left unmerged)
    ok[2:] &= ~(nul[2:] & nul[1:-1] & nul[:-2])
    n = len(ok) // _BLOCK * _BLOCK
    full = np.flatnonzero(ok[:n].reshape(-1, _BLOCK).all(axis=1))
    runs: list[tuple[int, int]] = []
    if len(full) == 0:
        return runs
    breaks = np.flatnonzero(np.diff(full) != 1)
    for a, b in zip(np.r_[full[0], full[breaks + 1]],
                    np.r_[full[breaks], full[-1]], strict=True):
        lo, hi = int(a) * _BLOCK, (int(b) + 1) * _BLOCK
        bad = np.flatnonzero(~ok[max(0, lo - _BLOCK):lo])
        lo = max(0, lo - _BLOCK) + int(bad[-1]) + 1 if len(bad) else max(0, lo - _BLOCK)
        bad = np.flatnonzero(~ok[hi:hi + _BLOCK])
        hi = hi + int(bad[0]) if len(bad) else min(len(ok), hi + _BLOCK)
        if hi - lo >= _MIN_STRINGS:
            runs.append((lo, hi))
    runs.sort(key=lambda r: r[0] - r[1])
    return runs[:_MAX_STRING_RUNS]


def _runs(mask: np.ndarray, stride: int, minimum: int) -> list[tuple[int, int]]:
    """(first index, count) of the runs of True in *mask* at *stride*, at least *minimum*."""
    np = _np()
    out = []
    for r in range(stride):
        m = mask[r::stride].view(np.int8)
        d = np.diff(np.concatenate(([0], m, [0])))
        starts = np.flatnonzero(d == 1)
        ends = np.flatnonzero(d == -1)
        for s, e in zip(starts, ends, strict=True):
            if e - s >= minimum:
                out.append((r + int(s) * stride, int(e - s)))
    return out


def _words(data: bytes, mode: Mode) -> np.ndarray:
    """Every aligned field of *data* as int64 (pointers wrap, which differences survive)."""
    np = _np()
    kind = "i" if mode.prel else "u"
    w = np.frombuffer(data, f"{mode.endian}{kind}{mode.width}",
                      count=len(data) // mode.width)
    return w.astype(np.int64)


def _string_starts(arr: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Where the non-empty strings of [lo, hi) start."""
    np = _np()
    nul = np.flatnonzero(arr[lo:hi] == 0) + lo + 1
    starts = np.r_[lo, nul[nul < hi]]
    return starts[arr[starts] != 0]


def _find_bases(words: np.ndarray, arr: np.ndarray, lo: int, hi: int) -> Iterator[int]:
    """Candidate link addresses of the image's first byte: shifts that map a run of close,
    distinct pointers (the name fields of a table) onto the starts of the strings in
    [lo, hi), most of them exactly (a few names may be tails of longer strings)."""
    np = _np()
    span = hi - lo
    if span > _MAX_STRINGS_BYTES:
        return
    # the run may begin with a few bytes of the CRC array that happen to be identifier
    # bytes: the first string may start at any of its first bytes
    starts = _string_starts(arr, lo, hi)
    isstart = np.zeros(span + 1, bool)
    isstart[starts - lo] = True
    isstart[:16] = True
    starts = np.flatnonzero(isstart[:span]) + lo
    for nf in (3, 2):
        close = np.zeros(len(words), bool)
        diff = words[nf:] - words[:-nf]
        close[:-nf] = (words[:-nf] != 0) & (np.abs(diff) < span)
        found = []
        for first, count in _runs(close, nf, MIN_ENTRIES):
            column = words[first:first + nf * count:nf]
            width = int(column.max()) - int(column.min())
            if width < span:
                found.append((width, column))
        # the widest runs first: a table's names spread over all of __ksymtab_strings
        found.sort(key=lambda f: -f[0])
        for width, column in found[:_MAX_BASE_RUNS]:
            ptrs = np.sort(column)
            ptrs = ptrs[np.r_[True, ptrs[1:] != ptrs[:-1]]]   # names are distinct
            if len(ptrs) * 10 < len(column) * 9:
                continue
            # which string start the lowest pointer names: the one under which a sample
            # of the others land on string starts too
            rel = ptrs - ptrs[0]
            sample = rel[np.linspace(0, len(rel) - 1, 64).astype(int)]
            cand = starts[starts < hi - width] - lo
            score = isstart[cand[:, None] + sample[None, :]].sum(axis=1)
            if len(score) == 0:
                continue
            q = int(cand[int(np.argmax(score))])
            if int(score.max()) * 4 < len(sample) * 3:
                continue
            if int(isstart[rel + q].sum()) * 10 >= len(rel) * 9:
                yield int(ptrs[0]) - (q + lo)


def _cstr(data: bytes, at: int, end: int) -> bytes:
    stop = data.find(b"\0", at, end)
    return data[at:stop] if stop >= 0 else data[at:end]


@dataclass
class _Entry:
    offset: int
    name: bytes
    name_at: int
    ns: bytes
    ns_at: int   # -1: none


def _entries(data: bytes, targets: np.ndarray, words: np.ndarray, mode: Mode, nf: int,
             first: int, count: int, lo: int, hi: int) -> list[_Entry]:
    out = []
    w = mode.width
    for i in range(count):
        k = first + nf * i                     # the name field's word index
        t = int(targets[k])
        ns_at = -1
        ns = b""
        if nf == 3 and words[k + 1] != 0:
            ns_at = int(targets[k + 1])
            ns = _cstr(data, ns_at, hi)
        out.append(_Entry((k - 1) * w, _cstr(data, t, hi), t, ns, ns_at))
    return out


def _ordered(arr: np.ndarray, targets: np.ndarray) -> list[tuple[int, int]]:
    """[a, b) of the stretches, at least MIN_ENTRIES long, where the names at *targets* are
    in order by their first 8 bytes: only those are decoded one by one (a run of fields that
    merely point into the strings, however long, costs no per-entry work)."""
    np = _np()
    idx = np.minimum(targets[:, None] + np.arange(8), len(arr) - 1)
    head = arr[idx].astype(np.uint64)
    head *= np.cumprod(head != 0, axis=1).astype(np.uint64)   # nothing after the NUL
    key = (head << (np.arange(7, -1, -1, dtype=np.uint64) * np.uint64(8))).sum(axis=1)
    breaks = np.flatnonzero(key[1:] < key[:-1]) + 1
    edges = np.r_[0, breaks, len(key)]
    return [(int(a), int(b)) for a, b in pairwise(edges) if b - a >= MIN_ENTRIES]


def _sorted_segments(entries: list[_Entry]) -> list[list[_Entry]]:
    segs: list[list[_Entry]] = [[entries[0]]]
    for e in entries[1:]:
        if e.name > segs[-1][-1].name:
            segs[-1].append(e)
        else:
            segs.append([e])
    return segs


def _disjoint(segs: list[list[_Entry]], es: int) -> list[list[_Entry]]:
    """The longest segments that do not overlap one another, in image order (a run read at
    the wrong phase inside a real table yields short overlapping segments)."""
    taken: list[tuple[int, int]] = []
    out = []
    for s in sorted(segs, key=lambda s: -len(s)):
        a, b = s[0].offset, s[-1].offset + es
        if all(b <= x or a >= y for x, y in taken):
            taken.append((a, b))
            out.append(s)
    return sorted(out, key=lambda s: s[0].offset)


def _tables(data: bytes, arr: np.ndarray, words: np.ndarray, targets: np.ndarray, mode: Mode,
            lo: int, hi: int) -> tuple[int, list[list[_Entry]]]:
    """(fields per entry, the sorted tables in image order) for one layout."""
    np = _np()
    inside = (targets >= lo) & (targets < hi)   # a namespace may be "" (6.x PREL32)
    hit = inside & (arr[np.clip(targets, 0, len(arr) - 1)] != 0)
    best: tuple[int, list[list[_Entry]]] | None = None
    for nf in (3, 2):
        ok = hit.copy()
        if nf == 3:
            ok[:-1] &= inside[1:] | (words[1:] == 0)
            ok[-1] = False
        ok[0] = False   # a name field follows the value field
        segs: list[list[_Entry]] = []
        for first, count in _runs(ok, nf, MIN_ENTRIES):
            for a, b in _ordered(arr, targets[first:first + nf * count:nf]):
                ents = _entries(data, targets, words, mode, nf, first + nf * a, b - a, lo, hi)
                segs.extend(s for s in _sorted_segments(ents) if len(s) >= MIN_ENTRIES)
        es = nf * mode.width
        segs = _disjoint(segs, es)
        if not segs:
            continue
        groups: list[list[list[_Entry]]] = [[segs[0]]]
        for s in segs[1:]:
            gap = s[0].offset - (groups[-1][-1][-1].offset + es)
            if 0 <= gap <= _MAX_TABLE_GAP:
                groups[-1].append(s)
            else:
                groups.append([s])
        group = max(groups, key=lambda g: sum(len(s) for s in g))
        total = sum(len(s) for s in group)
        if best is None or total > sum(len(s) for s in best[1]):
            best = (nf, group)
    if best is None:
        raise _Fail("no export table")
    return best


def _check(tables: list[list[_Entry]], data: bytes, arr: np.ndarray, lo: int, hi: int
           ) -> tuple[int, int]:
    """The checks every recovered table passes; returns __ksymtab_strings as [start, end)."""
    np = _np()
    if len(tables) > 2:
        raise _Fail(f"{len(tables)} sorted tables where __ksymtab and __ksymtab_gpl were "
                    "expected: which is which cannot be established")
    seen: set[bytes] = set()
    used: set[int] = set()
    start, end = hi, lo
    for t in tables:
        for e in t:
            if not _NAME.fullmatch(e.name):
                raise _Fail(f"an entry at {e.offset:#x} names {e.name[:40]!r}, not an identifier")
            if e.ns and not _NAMESPACE.fullmatch(e.ns):
                raise _Fail(f"an entry at {e.offset:#x} has the namespace {e.ns[:40]!r}")
            if e.name in seen:
                raise _Fail(f"{e.name.decode()} is exported twice")
            seen.add(e.name)
            for at, s in ((e.name_at, e.name), (e.ns_at, e.ns)):
                if at >= 0 and s:
                    used.add(at)
                    start, end = min(start, at), max(end, at + len(s) + 1)
    starts = _string_starts(arr, start, end)
    unused = starts[~np.isin(starts, np.fromiter(used, np.int64))]
    if len(unused):
        many = ("s", "are") if len(unused) > 1 else ("", "is")
        raise _Fail(f"{len(unused)} string{many[0]} of __ksymtab_strings {many[1]} named by "
                    "no entry "
                    f"(first: {_cstr(data, int(unused[0]), end)[:40]!r} at {int(unused[0]):#x})")
    return start, end


def _attach(tables: list[list[_Entry]], data: bytes, mode: Mode, nf: int, strings: int
            ) -> tuple[list[int] | None, bytes | None, list[str]]:
    """The CRC and flag arrays between the last table and __ksymtab_strings."""
    n = sum(len(t) for t in tables)
    after = tables[-1][-1].offset + nf * mode.width
    gap = strings - after
    crc_at = (after + 3) & ~3
    pad = crc_at - after
    notes: list[str] = []
    crcs: list[int] | None = None
    flags: bytes | None = None
    one_table = len(tables) == 1

    def flags_at(at: int) -> bytes | None:
        b = data[at:at + n]
        return b if len(b) == n and not any(x & ~_FLAG_MASK for x in b) else None

    if gap == 0:
        pass
    elif gap == n and (f := flags_at(after)) is not None:
        flags = f
    elif gap - pad == 4 * n:
        crcs = _crc_list(data, crc_at, n, mode.endian)
    elif gap - pad == 5 * n and (f := flags_at(crc_at + 4 * n)) is not None:
        crcs, flags = _crc_list(data, crc_at, n, mode.endian), f
    else:
        notes.append(f"the {gap} bytes between the export tables ({n} entries) and "
                     "__ksymtab_strings fit no CRC or flag array: CRCs not established")
    if one_table and flags is None:
        raise _Fail("one export table and no __kflagstab: which exports are GPL-only "
                    "cannot be established")
    return crcs, flags, notes


def _crc_list(data: bytes, at: int, n: int, endian: str) -> list[int]:
    np = _np()
    return np.frombuffer(data, f"{endian}u4", count=n, offset=at).tolist()


def _prel_targets(words: np.ndarray) -> np.ndarray:
    """What every PREL32 field points at, as an offset into the image."""
    np = _np()
    return words + np.arange(len(words), dtype=np.int64) * 4


def _try(data: bytes, arr: np.ndarray, mode: Mode, words: np.ndarray, lo: int, hi: int,
         prel_targets: np.ndarray | None) -> Recovered:
    if prel_targets is not None:
        return _try_targets(data, arr, mode, words, prel_targets, None, lo, hi)
    why = _Fail("no link address maps pointers onto __ksymtab_strings")
    for base in dict.fromkeys(_find_bases(words, arr, lo, hi)):
        try:
            return _try_targets(data, arr, mode, words, words - base, base, lo, hi)
        except _Fail as e:
            why = e
    raise why


def _try_targets(data: bytes, arr: np.ndarray, mode: Mode, words: np.ndarray,
                 targets: np.ndarray, base: int | None, lo: int, hi: int) -> Recovered:
    nf, tables = _tables(data, arr, words, targets, mode, lo, hi)
    start, end = _check(tables, data, arr, lo, hi)
    crcs, flags, notes = _attach(tables, data, mode, nf, start)
    exports: list[Export] = []
    names = ("__ksymtab", "__ksymtab_gpl")
    licenses = (License.NOT_GPL_ONLY, License.GPL_ONLY)
    i = 0
    for t, sec, lic in zip(tables, names, licenses, strict=False):
        for e in t:
            fl = flags[i] if flags is not None else 0
            if flags is not None and len(tables) == 1:
                lic = License.GPL_ONLY if fl & KSYM_FLAG_GPL_ONLY else License.NOT_GPL_ONLY
            exports.append(Export(e.name.decode(), lic, e.ns.decode(),
                                  crcs[i] if crcs is not None else None, sec, fl))
            i += 1
    return Recovered(exports, mode, nf,
                     tuple(Table(n, t[0].offset, len(t)) for n, t in zip(names, tables,
                                                                           strict=False)),
                     (start, end), crcs is not None, flags is not None, base, tuple(notes))


def _btf_strings(data: bytes) -> list[tuple[int, int]]:
    """[start, end) of the string sections of the BTF blobs in *data* (CONFIG_DEBUG_INFO_BTF):
    the longest runs of identifiers in a kernel, tried last.  Header as struct btf_header in
    include/uapi/linux/btf.h: magic 0xeB9F, version 1, flags, hdr_len, type_off, type_len,
    str_off, str_len."""
    out = []
    for magic, endian in ((b"\x9f\xeb\x01", "little"), (b"\xeb\x9f\x01", "big")):
        pos = data.find(magic)
        hits = 0
        while pos >= 0 and hits < 64:
            hits += 1
            head = data[pos + 4:pos + 24]
            if len(head) == 20:
                hdr_len, _, _, str_off, str_len = (int.from_bytes(head[i:i + 4], endian)
                                                   for i in range(0, 20, 4))
                start = pos + hdr_len + str_off
                if 24 <= hdr_len < 256 and start + str_len <= len(data):
                    out.append((start, start + str_len))
            pos = data.find(magic, pos + 1)
    return out


def recover_exports(data: bytes, path: str | None = None) -> Recovered:
    """The export tables of the raw kernel image *data* (read from *path*, named in errors).

    Raises FormatError, in one line, when no layout yields tables that pass every check.
    """
    np = _np()
    arr = np.frombuffer(data, np.uint8)
    runs = _string_runs(arr)
    if not runs:
        raise FormatError("no export tables found in the kernel image (no run of "
                          "identifiers that could be __ksymtab_strings)", path)
    btf = _btf_strings(data)
    runs.sort(key=lambda r: any(a <= r[0] < b for a, b in btf))  # stable: longest first
    why: list[str] = []
    for lo, hi in runs:
        # RO_DATA puts the tables, their CRCs and flags right before __ksymtab_strings, at
        # most 29 bytes per export and fewer exports than string bytes: only that stretch
        # is searched (a table cut short would leave strings unused and fail the checks)
        start = max(0, lo - _WINDOW * (hi - lo)) & ~7
        sub, sub_arr = data[start:hi], arr[start:hi]
        for mode in MODES:
            words = _words(sub, mode)
            prel = _prel_targets(words) if mode.prel else None
            try:
                got = _try(sub, sub_arr, mode, words, lo - start, hi - start, prel)
            except _Fail as e:
                why.append(f"{mode.describe()}: {e}")
                continue
            return dataclasses.replace(
                got, tables=tuple(dataclasses.replace(t, offset=t.offset + start)
                                  for t in got.tables),
                strings=(got.strings[0] + start, got.strings[1] + start),
                base=None if got.base is None
                else (got.base - start) % (1 << (8 * mode.width)))
    best = next((w for w in why if "no export table" not in w and "no link address" not in w),
                why[0])
    raise FormatError(f"no export tables recovered from the kernel image ({best})", path)
