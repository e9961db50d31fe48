"""Type stubs of the native lookup engine (_native.c); bound by fastlkm.lookup.native."""

from typing_extensions import Buffer

def replay(kind: int, hashkind: int, precomputed: bool, count: bool, repeats: int,
           nvmlinux: int,
           tables: Buffer, strings: Buffer, name_off: Buffer, flags: Buffer, layout: Buffer,
           modules: Buffer, events: Buffer, lnames: Buffer, res_table: Buffer,
           res_index: Buffer, /) -> tuple[tuple[int, ...], list[int], list[int]]:
    """Replay a packed session once counting (filling *res_table* and *res_index*; with
    *count* false, not: the counters are zero), then *repeats* times timed: (counters, ns
    of each repeat's lookups, ns of each repeat's LOAD/UNLOAD work)."""
