"""The strategies' layouts and the reference engine, on small tables and on a real
session recorded from the loader model."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastlkm.lookup.base import GPL_ONLY, NOT_GPL_ONLY, PER_ENTRY, Counters, Table, strcmp
from fastlkm.lookup.hashes import djb_hash, elf_hash
from fastlkm.lookup.replay import LOAD, LOOKUP, UNLOAD, Event, replay
from fastlkm.lookup.space import make_space
from fastlkm.lookup.strategies import (
    ELF_BUCKETS,
    STRATEGIES,
    GnuIndex,
    PerfectIndex,
    SysvIndex,
    bucket_count,
)

NAMES = sorted({f"sym_{i:05d}_{random.Random(i).choice('abcxyz')}".encode()
                for i in range(3000)})


def test_hashes_known_values() -> None:
    # the gABI's and glibc's published values
    assert elf_hash(b"") == 0
    assert elf_hash(b"printf") == 0x077905A6
    assert djb_hash(b"") == 5381
    assert djb_hash(b"printf") == 0x156B2BB8


def test_strcmp_counts_bytes_examined() -> None:
    c = Counters()
    assert strcmp(b"abc", b"abc", c) == 0 and c.bytes_compared == 4
    assert strcmp(b"abd", b"abc", c) > 0 and c.bytes_compared == 4 + 3
    assert strcmp(b"ab", b"abc", c) < 0 and c.bytes_compared == 7 + 3
    assert strcmp(b"x" * 40 + b"a", b"x" * 40 + b"b", c) < 0 and c.bytes_compared == 10 + 41
    assert c.strcmp == 4


def test_bucket_count_as_binutils() -> None:
    assert bucket_count(0) == 1 and bucket_count(2) == 1 and bucket_count(3) == 3
    assert bucket_count(16) == 3 and bucket_count(17) == 17 and bucket_count(5091) == 4099
    assert bucket_count(10**6) == ELF_BUCKETS[-1]
    assert bucket_count(1, gnu=True) == 2


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_name_found_and_absent_names_not(name: str) -> None:
    s = STRATEGIES[name]
    t = Table(list(NAMES))
    space = make_space(s, [t])
    c = Counters()
    for i, n in enumerate(NAMES[:: 7]):
        h = s.hash(n) if s.hash else None
        hit = space.find(n, h, True, c)
        assert hit is not None and hit[1] == i * 7
    for n in (b"", b"sym_", b"zzz", b"sym_00001_q", NAMES[5] + b"x"):
        assert space.find(n, s.hash(n) if s.hash else None, True, c) is None


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_search_order_and_gpl_rules(name: str) -> None:
    s = STRATEGIES[name]
    vm = [Table([b"a", b"b"], NOT_GPL_ONLY, owner=-1, name="__ksymtab"),
          Table([b"g"], GPL_ONLY, owner=-1, name="__ksymtab_gpl")]
    m1 = [Table([b"m", b"n"], PER_ENTRY, bytes([0, 1]), owner=0)]
    m2 = [Table([b"p"], NOT_GPL_ONLY, owner=1)]
    events = [Event(LOOKUP, name=b"g", gplok=False), Event(LOOKUP, name=b"g"),
              Event(LOAD, 0), Event(LOAD, 1), Event(LOOKUP, name=b"n", gplok=False),
              Event(LOOKUP, name=b"n"), Event(LOOKUP, name=b"p"), Event(UNLOAD, 1),
              Event(LOOKUP, name=b"p"), Event(LOOKUP, name=b"m", gplok=False)]
    r = replay(s, vm, {0: m1, 1: m2}, events)
    assert r.results == [None, (-1, "__ksymtab_gpl", 0), None, (0, "__ksymtab", 1),
                         (1, "__ksymtab", 0), None, (0, "__ksymtab", 0)]


def test_precomputed_hashes_are_not_counted() -> None:
    events = [Event(LOOKUP, name=b"a")]
    vm = [Table([b"a"])]
    assert replay(STRATEGIES["gnu"], vm, {}, events).counters.hashes == 0
    assert replay(STRATEGIES["gnu"], vm, {}, events, precomputed=False).counters.hashes == 1
    assert replay(STRATEGIES["bsearch"], vm, {}, events, precomputed=False).counters.hashes == 0


def test_sysv_layout() -> None:
    idx = SysvIndex(Table(list(NAMES)), elf_hash)
    assert idx.nbucket == bucket_count(len(NAMES))
    seen = []
    for b, head in enumerate(idx.bucket):
        j = head
        while j:
            seen.append(j - 1)
            assert idx.hashes[j - 1] % idx.nbucket == b
            j = idx.chain[j - 1]
    assert sorted(seen) == list(range(len(NAMES)))
    assert idx.memory == 4 * (2 + idx.nbucket + 2 * len(NAMES))


def test_gnu_layout_and_bloom() -> None:
    t = Table(list(NAMES))
    idx = GnuIndex(t)
    assert sorted(idx.index) == list(range(len(NAMES)))     # __ksymtab is not reordered
    # chain values grouped by bucket, the last of each run marked
    for b, start in enumerate(idx.buckets):
        if not start:
            continue
        pos = start - 1
        while True:
            assert djb_hash(NAMES[idx.index[pos]]) % idx.nbuckets == b
            if idx.chain[pos] & 1:
                break
            pos += 1
    # no false negatives, and most absent names rejected by the Bloom filter
    c = Counters()
    absent = [f"other_{i}".encode() for i in range(2000)]
    for n in absent:
        assert idx.find(n, djb_hash(n), c) is None
    assert c.bloom_rejections > 0.8 * len(absent)


def test_perfect_is_injective_and_small() -> None:
    idx = PerfectIndex(Table(list(NAMES)))
    used = [s for s in idx.slots if s != 0xFFFFFFFF]
    assert sorted(used) == list(range(len(NAMES)))
    assert idx.memory / len(NAMES) <= 3.0


def test_perfect_falls_back_on_hash_collisions() -> None:
    # "Ez" and "FY" have equal DJB hashes (33 * 'E' + 'z' == 33 * 'F' + 'Y')
    assert djb_hash(b"Ez") == djb_hash(b"FY")
    idx = PerfectIndex(Table([b"Ez", b"FY"]))
    assert idx.fallback is not None
    c = Counters()
    assert idx.find(b"FY", djb_hash(b"FY"), c) == 1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=12).filter(lambda b: 0 not in b),
                min_size=1, max_size=60, unique=True),
       st.lists(st.binary(max_size=12).filter(lambda b: 0 not in b), max_size=20))
def test_strategies_agree_on_random_tables(names: list[bytes], probes: list[bytes]) -> None:
    t = Table(sorted(names))
    want = {n: i for i, n in enumerate(t.names)}
    for s in STRATEGIES.values():
        space = make_space(s, [Table(t.names)])
        for n in [*names, *probes]:
            hit = space.find(n, s.hash(n) if s.hash else None, True, Counters())
            assert (hit[1] if hit else None) == want.get(n), s.name


@pytest.mark.parametrize("name", [n for n in STRATEGIES if n != "linear"])
def test_real_session_every_lookup_as_the_loader(name: str) -> None:
    from fastlkm.depmod.probe import probe_order
    from fastlkm.loader.scenario import record
    from fastlkm.target import open_system, shipped_snapshot

    s = open_system(str(shipped_snapshot()))
    wanted = ["ext4", "nvme", "e1000e", "kvm_intel"]
    sc = record(s.kernel, probe_order(s.modules, s.order, wanted))
    lookups = [e for e in sc.events if e.op == LOOKUP]
    r = replay(STRATEGIES[name], sc.vmlinux, sc.modules, sc.events)
    assert r.results == [e.expected for e in lookups]
    assert r.counters.lookups == len(lookups) and r.counters.found == sum(
        1 for e in lookups if e.expected is not None)
