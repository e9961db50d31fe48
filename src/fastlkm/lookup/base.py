"""What every lookup strategy shares: export tables as the kernel holds them, and the
operation counters.

This layer knows nothing of ELF or of the loader: a table is a list of names in
``__ksymtab`` order (bytes, as the kernel compares them) with the license rule of the
table, and a lookup is ``find(name, gplok)`` over the tables in the kernel's search order.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, fields

# how a table decides GPL-only-ness (enum mod_license / __kflagstab)
NOT_GPL_ONLY, GPL_ONLY, PER_ENTRY = 0, 1, 2
KSYM_FLAG_GPL_ONLY = 1

# the size of one export as the kernel holds it: struct kernel_symbol with PREL32 entries
# (value, name, namespace offsets) plus its CRC when the kernel has modversions
KERNEL_SYMBOL_SIZE = 12
CRC_SIZE = 4


@dataclass
class Counters:
    """Operations a lookup performs; both engines count the same things."""

    lookups: int = 0
    found: int = 0
    tables_visited: int = 0     # export tables whose index was consulted
    strcmp: int = 0             # full name comparisons
    bytes_compared: int = 0     # bytes examined by those comparisons
    hashes: int = 0             # hash values computed from a name at lookup time
    bucket_steps: int = 0       # hash buckets (or Bloom words, pilots) read
    chain_steps: int = 0        # chain entries (or probed slots) visited
    bloom_rejections: int = 0   # tables skipped by their Bloom filter

    def add(self, other: Counters) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def strcmp(a: bytes, b: bytes, c: Counters) -> int:
    """strcmp() that counts: one call, and the bytes examined up to and including the
    first difference (the terminating NUL included when equal)."""
    c.strcmp += 1
    if a == b:
        c.bytes_compared += len(a) + 1
        return 0
    n = min(len(a), len(b))
    i = 0
    # the first differing position, found in large steps
    step = 16
    while i + step <= n and a[i:i + step] == b[i:i + step]:
        i += step
    while i < n and a[i] == b[i]:
        i += 1
    c.bytes_compared += i + 1
    if i == n:
        return -1 if len(a) < len(b) else 1
    return -1 if a[i] < b[i] else 1


@dataclass
class Table:
    """One export table: names in table order, and how GPL-only-ness is decided."""

    names: list[bytes]
    license: int = NOT_GPL_ONLY          # NOT_GPL_ONLY, GPL_ONLY or PER_ENTRY
    flags: bytes = b""                   # per-entry __kflagstab bytes (PER_ENTRY)
    owner: int = -1                      # -1 vmlinux, else the module's id
    name: str = "__ksymtab"
    strings_size: int = 0                # bytes of its names in __ksymtab_strings
    crcs: bool = False                   # the table has a __kcrctab beside it
    tid: int = -1                        # set when the table joins a symbol space
    extra: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.strings_size:
            self.strings_size = sum(len(n) + 1 for n in self.names)

    def own_size(self) -> int:
        """What the kernel already spends on this table: entries, CRCs, name strings."""
        n = len(self.names)
        return n * KERNEL_SYMBOL_SIZE + (n * CRC_SIZE if self.crcs else 0) + \
            self.strings_size + (len(self.flags) if self.license == PER_ENTRY else 0)

    def visible(self, i: int, gplok: bool) -> bool:
        """Is entry *i* usable by a module with (gplok) or without a GPL-compatible
        license?  Mirrors the checks of find_exported_symbol_in_section()."""
        if gplok:
            return True
        if self.license == PER_ENTRY:
            return not self.flags[i] & KSYM_FLAG_GPL_ONLY
        return self.license != GPL_ONLY


def is_sorted(names: list[bytes]) -> bool:
    return all(a < b for a, b in itertools.pairwise(names))
