"""kmod's binary index (``modules.*.bin``): a prefix-compressed trie read by libkmod.

File: u32 magic 0xB007F457, u32 version 0x00020001, u32 offset of the root node, then the
nodes; all integers big-endian.  A node offset carries flags in its top nibble: PREFIX
(the node starts with a NUL-terminated prefix), CHILDS (then u8 first, u8 last and one u32
offset per character in first..last, 0 for none), VALUES (then u32 count and per value
u32 priority and a NUL-terminated string).

The trie is built as depmod's index_insert() builds it (node splits on a differing
character; values kept in priority order, a new value before older ones of equal
priority).  kmod 30 writes it children first (post-order: index_write__node() recursing
before writing the node); kmod 34 writes each node before its children (pre-order, sizes
computed first).  Both kmod versions read either.

``PyIndex`` is the reference, in Python; ``NativeIndex`` is the same index in C
(``_kmod_index.c``), byte for byte.  ``Index`` is the fastest of the two that is built.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from fastlkm.errors import FormatError

try:
    from fastlkm.depmod import _kmod_index as _native  # type: ignore[attr-defined]
except ImportError:   # built without a C compiler
    _native = None

INDEX_MAGIC = 0xB007F457
INDEX_VERSION = (0x0002 << 16) | 0x0001
INDEX_CHILDMAX = 128
NODE_PREFIX = 0x80000000
NODE_VALUES = 0x40000000
NODE_CHILDS = 0x20000000
NODE_MASK = 0x0FFFFFFF

_U32 = struct.Struct(">I")


class Node:
    __slots__ = ("children", "prefix", "values")

    def __init__(self, prefix: bytes = b"", values: list[tuple[int, bytes]] | None = None,
                 children: dict[int, Node] | None = None) -> None:
        self.prefix = prefix
        self.values = values if values is not None else []   # (priority, value)
        self.children = children if children is not None else {}

    @property
    def first(self) -> int:
        return min(self.children)

    @property
    def last(self) -> int:
        return max(self.children)


class PyIndex:
    """An in-memory index as depmod builds one: the reference."""

    def __init__(self) -> None:
        self.root = Node()

    def insert(self, key: str, value: str, priority: int) -> bool:
        """index_insert(); returns True when the same value was already there."""
        k = key.encode()
        v = value.encode()
        if any(c >= INDEX_CHILDMAX for c in k + v):
            raise FormatError(f"index key or value is not 7-bit ASCII: {key!r} {value!r}")
        if not 0 <= priority <= 0xFFFFFFFF:
            raise OverflowError("index priority does not fit in 32 bits")
        node = self.root
        i = 0
        while True:
            p = node.prefix
            j = 0
            while j < len(p):
                if i + j >= len(k) or p[j] != k[i + j]:
                    # split: the node keeps prefix[:j], a child at prefix[j] takes the rest
                    child = Node(p[j + 1:], node.values, node.children)
                    node.prefix = p[:j]
                    node.values = []
                    node.children = {p[j]: child}
                    break
                j += 1
            i += j
            if i == len(k):
                return _add_value(node.values, v, priority)
            ch = k[i]
            nxt = node.children.get(ch)
            if nxt is None:
                node.children[ch] = Node(k[i + 1:], [(priority, v)])
                return False
            node = nxt
            i += 1

    def insert_many(self, keys: Sequence[str], values: Sequence[str],
                    priorities: Sequence[int]) -> list[bool]:
        """insert() for each (key, value, priority)."""
        if not len(keys) == len(values) == len(priorities):
            raise ValueError("keys, values and priorities differ in length")
        return [self.insert(k, v, p) for k, v, p in zip(keys, values, priorities, strict=True)]

    def write(self, version: int = 34) -> bytes:
        """The index file as kmod *version* (30 or 34) writes it."""
        out = _write_post_order(self.root) if version == 30 else _write_pre_order(self.root)
        if len(out) > NODE_MASK:
            raise FormatError("index too large for kmod's 28-bit node offsets")
        return out


if _native is not None:
    class NativeIndex(_native.Index):
        """PyIndex in C: the same insert(), insert_many() and write(), the same bytes."""

        __slots__ = ()

        def __init__(self) -> None:
            super().__init__(FormatError)

    Index = NativeIndex
else:
    NativeIndex = None   # type: ignore[assignment,misc]
    Index = PyIndex   # type: ignore[misc]


def native_available() -> bool:
    """True when the C index (fastlkm.depmod._kmod_index) is built."""
    return _native is not None


def _add_value(values: list[tuple[int, bytes]], value: bytes, priority: int) -> bool:
    """index_add_value(): before the first value of equal or higher priority."""
    dup = any(v == value for _, v in values)
    pos = 0
    while pos < len(values) and values[pos][0] < priority:
        pos += 1
    values.insert(pos, (priority, value))
    return dup


def _node_body(n: Node, child_offs: list[int]) -> bytes:
    out = bytearray()
    if n.prefix:
        out += n.prefix + b"\0"
    if n.children:
        out += bytes((n.first, n.last))
        for off in child_offs:
            out += _U32.pack(off)
    if n.values:
        out += _U32.pack(len(n.values))
        for prio, v in n.values:
            out += _U32.pack(prio) + v + b"\0"
    return bytes(out)


def _flags(n: Node) -> int:
    return (NODE_PREFIX if n.prefix else 0) | (NODE_CHILDS if n.children else 0) | \
        (NODE_VALUES if n.values else 0)


def _write_post_order(root: Node) -> bytes:
    out = bytearray(_U32.pack(INDEX_MAGIC) + _U32.pack(INDEX_VERSION) + b"\0\0\0\0")

    def write(n: Node) -> int:
        offs = []
        if n.children:
            for c in range(n.first, n.last + 1):
                child = n.children.get(c)
                offs.append(write(child) if child is not None else 0)
        at = len(out)
        out.extend(_node_body(n, offs))
        return at | _flags(n)

    # an explicit stack would only obscure this: the trie depth is bounded by key length
    root_off = write(root)
    out[8:12] = _U32.pack(root_off)
    return bytes(out)


def _own_size(n: Node) -> int:
    """The bytes _node_body() writes for *n*."""
    size = len(n.prefix) + 1 if n.prefix else 0
    if n.children:
        size += 2 + 4 * (n.last - n.first + 1)
    if n.values:
        size += 4 + sum(4 + len(v) + 1 for _, v in n.values)
    return size


def _write_pre_order(root: Node) -> bytes:
    sizes: dict[int, tuple[int, int]] = {}   # id(node) -> (own size, total size)

    def size(n: Node) -> int:
        own = _own_size(n)
        total = own + sum(size(c) for c in n.children.values())
        sizes[id(n)] = (own, total)
        return total

    size(root)
    first = 12
    out = bytearray(_U32.pack(INDEX_MAGIC) + _U32.pack(INDEX_VERSION) +
                    _U32.pack(first | _flags(root)))

    def write(n: Node, offset: int) -> None:
        own, _ = sizes[id(n)]
        offs = []
        pos = offset + own
        kids = []
        if n.children:
            for c in range(n.first, n.last + 1):
                child = n.children.get(c)
                if child is None:
                    offs.append(0)
                else:
                    offs.append(pos | _flags(child))
                    kids.append((child, pos))
                    pos += sizes[id(child)][1]
        out.extend(_node_body(n, offs))
        for child, at in kids:
            write(child, at)

    write(root, first)
    return bytes(out)


# --- reading (libkmod-index.c's view) ------------------------------------------------


def read_index(data: bytes, path: str = "index") -> dict[str, list[tuple[int, str]]]:
    """Every key of an index file with its values, for checks and round trips."""
    if len(data) < 12:
        raise FormatError("truncated index header", path, 0)
    magic, version, root = struct.unpack_from(">III", data, 0)
    if magic != INDEX_MAGIC:
        raise FormatError(f"bad index magic {magic:#x}", path, 0)
    if version >> 16 != 2:
        raise FormatError(f"unsupported index version {version:#x}", path, 4)
    out: dict[str, list[tuple[int, str]]] = {}
    seen: set[int] = set()
    stack = [(root, b"")]
    while stack:
        off, key = stack.pop()
        pos = off & NODE_MASK
        if pos in seen:
            raise FormatError("index nodes form a cycle", path, pos)
        seen.add(pos)
        if not 12 <= pos < len(data):
            raise FormatError("index node offset out of bounds", path, pos)
        if off & NODE_PREFIX:
            end = data.find(b"\0", pos)
            if end < 0:
                raise FormatError("unterminated index prefix", path, pos)
            key += data[pos:end]
            pos = end + 1
        if off & NODE_CHILDS:
            if pos + 2 > len(data):
                raise FormatError("truncated index node", path, pos)
            first, last = data[pos], data[pos + 1]
            pos += 2
            if last < first or pos + 4 * (last - first + 1) > len(data):
                raise FormatError("bad index child range", path, pos)
            for i in range(last - first + 1):
                c = _U32.unpack_from(data, pos + 4 * i)[0]
                if c:
                    stack.append((c, key + bytes((first + i,))))
            pos += 4 * (last - first + 1)
        if off & NODE_VALUES:
            if pos + 4 > len(data):
                raise FormatError("truncated index values", path, pos)
            count = _U32.unpack_from(data, pos)[0]
            pos += 4
            vals = []
            for _ in range(count):
                if pos + 4 > len(data):
                    raise FormatError("truncated index value", path, pos)
                prio = _U32.unpack_from(data, pos)[0]
                end = data.find(b"\0", pos + 4)
                if end < 0:
                    raise FormatError("unterminated index value", path, pos)
                vals.append((prio, data[pos + 4:end].decode("ascii", "replace")))
                pos = end + 1
            out[key.decode("ascii", "replace")] = vals
    return out
