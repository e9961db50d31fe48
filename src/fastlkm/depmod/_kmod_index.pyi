"""Type stubs of kmod's index in C (_kmod_index.c over kmod_index_core.c); the Python
reference is fastlkm.depmod.kmod_index.PyIndex."""

from collections.abc import Sequence

from typing_extensions import Buffer

class Index:
    """An in-memory index as depmod builds one; *error* is raised for a key or value
    that is not 7-bit ASCII."""

    def __init__(self, error: type[BaseException] = ...) -> None: ...
    def insert(self, key: str, value: str, priority: int, /) -> bool:
        """index_insert(); True when the same value was already there."""
    def insert_many(self, keys: Sequence[str], values: Sequence[str],
                    priorities: Sequence[int], /) -> list[bool]: ...
    def write(self, version: int = 34, /) -> bytes:
        """The index file as kmod 30 or 34 writes it."""

def hash_superfast(key: Buffer, /) -> int:
    """kmod's SuperFastHash (shared/hash.c)."""

def hash_order(names: Sequence[str], buckets: int, /) -> list[str]:
    """The order kmod's hash_iter visits *names* in."""
