"""The string hash functions of the strategies, on the bytes the kernel compares."""

from __future__ import annotations

from collections.abc import Callable


def elf_hash(name: bytes) -> int:
    """The gABI ELF hash (SysV .hash sections, elf_hash() in glibc's dl-hash.h)."""
    h = 0
    for c in name:
        h = (h << 4) + c
        g = h & 0xF0000000
        if g:
            h ^= g >> 24
        h &= ~g & 0xFFFFFFFF
    return h


def djb_hash(name: bytes) -> int:
    """Bernstein's h*33+c from 5381, 32-bit: DT_GNU_HASH's (dl_new_hash() in glibc) and
    the one Amoroso's Fast LKM loader used."""
    h = 5381
    for c in name:
        h = (h * 33 + c) & 0xFFFFFFFF
    return h


def mix32(h: int) -> int:
    """A 32-bit integer finaliser (murmur3's fmix32), used to derive independent values
    from a precomputed name hash without touching the name again."""
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    h ^= h >> 16
    return h


HASHES = {"elf": elf_hash, "djb": djb_hash}

# the ids of the hash functions, shared by the stored tables (fastlkm.embedded.codec) and
# the native engine (_native.c's hash kinds)
HASH_NONE, HASH_ELF, HASH_DJB = 0, 1, 2
HASH_FUNCTIONS: dict[int, Callable[[bytes], int] | None] = {
    HASH_NONE: None, HASH_ELF: elf_hash, HASH_DJB: djb_hash}


def hash_id(fn: Callable[[bytes], int] | None) -> int:
    """The id of hash function *fn* (HASH_NONE for None); ValueError for another one."""
    for k, f in HASH_FUNCTIONS.items():
        if f is fn:
            return k
    raise ValueError(f"no id for hash function {fn!r}: elf_hash and djb_hash only")
