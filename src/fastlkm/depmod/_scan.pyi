"""Type stubs of the native depmod scan (_scan.c over scan_core.c); see depmod/scan.py."""

from collections.abc import Sequence
from typing import TypeAlias

from typing_extensions import Buffer

# exports, crcs, kmod_symbols, deps, flags, dep_crcs, aliases, softdeps, weakdeps: the
# fields of fastlkm.depmod.scan.DepmodModule after its path
Facts: TypeAlias = tuple[
    tuple[str, ...], tuple[int, ...], tuple[str, ...], tuple[str, ...], bytes, bytes,
    tuple[str, ...], tuple[str, ...], tuple[str, ...],
]

def scan(image: Buffer, /) -> Facts | None:
    """The facts of one decompressed module image; None when declined."""

def scan_files(paths: Sequence[bytes], jobs: int, limit: int, /) -> list[Facts | None]:
    """scan() of plain files read on *jobs* threads; None for a file that is compressed,
    unreadable, larger than *limit* or declined."""
