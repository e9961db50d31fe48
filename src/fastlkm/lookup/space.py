"""A symbol space: the export tables a running kernel searches, in find_symbol() order
(vmlinux's tables, then the loaded modules' tables, newest module first), indexed by one
strategy.  Modules join and leave as they load and unload."""

from __future__ import annotations

from fastlkm.lookup.base import GPL_ONLY, Counters, Table, strcmp
from fastlkm.lookup.strategies import Strategy, TableIndex

Hit = tuple[Table, int]


class SymbolSpace:
    """Per-table strategies: each table has its own index, searched in order."""

    def __init__(self, strategy: Strategy, vmlinux: list[Table]):
        assert strategy.build is not None
        self.strategy = strategy
        self.tables: list[Table] = []
        self._vmlinux: list[tuple[Table, TableIndex]] = []
        self._modules: list[tuple[int, list[tuple[Table, TableIndex]]]] = []  # newest first
        self._order: list[tuple[Table, TableIndex]] = []
        self.memory = 0
        for t in vmlinux:
            self._vmlinux.append((t, self._index(t)))
        self._reorder()

    def _index(self, t: Table) -> TableIndex:
        t.tid = len(self.tables)
        self.tables.append(t)
        idx = self.strategy.build(t)  # type: ignore[misc]
        self.memory += idx.memory
        return idx

    def _reorder(self) -> None:
        self._order = list(self._vmlinux)
        for _, ts in self._modules:
            self._order.extend(ts)

    def add(self, owner: int, tables: list[Table]) -> None:
        self._modules.insert(0, (owner, [(t, self._index(t)) for t in tables]))
        self._reorder()

    def remove(self, owner: int) -> None:
        self._modules = [m for m in self._modules if m[0] != owner]
        self._reorder()

    def find(self, name: bytes, h: int | None, gplok: bool, c: Counters) -> Hit | None:
        c.lookups += 1
        if h is None and self.strategy.hash is not None:
            c.hashes += 1
            h = self.strategy.hash(name)
        for t, idx in self._order:
            if not gplok and t.license == GPL_ONLY:
                continue
            i = idx.find(name, h or 0, c)
            if i is not None and t.visible(i, gplok):
                c.found += 1
                return t, i
        return None


def global_buckets(nbuckets: int, need: int) -> int:
    """``global``'s bucket count after it grows to hold *need* nodes: doubled until at
    least *need*."""
    while nbuckets < need:
        nbuckets *= 2
    return nbuckets


def global_memory(count: int, nbuckets: int) -> int:
    """``global``'s memory: 16-byte nodes and 4-byte buckets."""
    return GlobalSpace.NODE_SIZE * count + 4 * nbuckets


class GlobalSpace:
    """``global``: one chained hash table over every loaded export, as a kernel would keep
    it beside the module list.  Nodes are {hash, next, entry} (16 bytes: the entry is a
    pointer to the kernel_symbol), buckets a power of two at least the node count, new
    nodes at the head of their chain; the table doubles when it is full."""

    NODE_SIZE = 16

    def __init__(self, strategy: Strategy, vmlinux: list[Table]):
        assert strategy.hash is not None
        self.strategy = strategy
        self.tables: list[Table] = []
        self.nbuckets = 1
        self.buckets = [0]
        # node k (1-based): hash, next, table id, entry index
        self.nhash: list[int] = [0]
        self.nnext: list[int] = [0]
        self.ntable: list[int] = [0]
        self.nentry: list[int] = [0]
        self.free: list[int] = []
        self.count = 0
        self._owned: dict[int, list[int]] = {}
        self._hashes: dict[int, list[int]] = {}
        self._grow(sum(len(t.names) for t in vmlinux))
        for t in vmlinux:
            self._insert(t)

    @property
    def memory(self) -> int:
        return global_memory(self.count, self.nbuckets)

    def _grow(self, need: int) -> None:
        nb = global_buckets(self.nbuckets, need)
        if nb == self.nbuckets:
            return
        self.nbuckets = nb
        self.buckets = [0] * nb
        live = [k for k in range(1, len(self.nhash)) if self.ntable[k] >= 0]
        for k in live:  # rehash, oldest first so that chains keep newest at the head
            b = self.nhash[k] & (nb - 1)
            self.nnext[k] = self.buckets[b]
            self.buckets[b] = k

    def _insert(self, t: Table) -> list[int]:
        t.tid = len(self.tables)
        self.tables.append(t)
        hs = [self.strategy.hash(n) for n in t.names]  # type: ignore[misc]
        self._grow(self.count + len(t.names))
        keys = []
        for i, h in enumerate(hs):
            if self.free:
                k = self.free.pop()
                self.nhash[k], self.ntable[k], self.nentry[k] = h, t.tid, i
            else:
                k = len(self.nhash)
                self.nhash.append(h)
                self.nnext.append(0)
                self.ntable.append(t.tid)
                self.nentry.append(i)
            b = h & (self.nbuckets - 1)
            self.nnext[k] = self.buckets[b]
            self.buckets[b] = k
            keys.append(k)
        self.count += len(t.names)
        return keys

    def add(self, owner: int, tables: list[Table]) -> None:
        keys: list[int] = []
        for t in tables:
            keys += self._insert(t)
        self._owned[owner] = keys

    def remove(self, owner: int) -> None:
        gone = set(self._owned.pop(owner, []))
        for b in range(self.nbuckets):
            prev, k = 0, self.buckets[b]
            while k:
                nxt = self.nnext[k]
                if k in gone:
                    if prev:
                        self.nnext[prev] = nxt
                    else:
                        self.buckets[b] = nxt
                    self.ntable[k] = -1
                    self.free.append(k)
                else:
                    prev = k
                k = nxt
        self.count -= len(gone)

    def find(self, name: bytes, h: int | None, gplok: bool, c: Counters) -> Hit | None:
        c.lookups += 1
        if h is None:
            c.hashes += 1
            h = self.strategy.hash(name)  # type: ignore[misc]
        c.tables_visited += 1
        c.bucket_steps += 1
        k = self.buckets[h & (self.nbuckets - 1)]
        while k:
            c.chain_steps += 1
            if self.nhash[k] == h:
                t = self.tables[self.ntable[k]]
                i = self.nentry[k]
                if strcmp(name, t.names[i], c) == 0 and t.visible(i, gplok):
                    c.found += 1
                    return t, i
            k = self.nnext[k]
        return None


def make_space(strategy: Strategy, vmlinux: list[Table]) -> SymbolSpace | GlobalSpace:
    """The space *strategy* searches.  A lookup passes the name's hash when it was
    precomputed at build time (Amoroso's .undef.hash), else None: then it is computed
    and counted."""
    if strategy.per_table:
        return SymbolSpace(strategy, vmlinux)
    return GlobalSpace(strategy, vmlinux)
