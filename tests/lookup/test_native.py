"""The native engine against the reference replay: every result and every count, on
hand-made sessions, on random ones, and on sessions recorded from the shipped 6.12 tree."""

from __future__ import annotations

import dataclasses
import random
from array import array

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastlkm.depmod.probe import probe_order
from fastlkm.loader.scenario import Scenario, record
from fastlkm.lookup import native
from fastlkm.lookup.base import GPL_ONLY, NOT_GPL_ONLY, PER_ENTRY, Table
from fastlkm.lookup.replay import LOAD, LOOKUP, UNLOAD, Event, replay
from fastlkm.lookup.strategies import STRATEGIES, Strategy
from fastlkm.target import System, open_system, shipped_snapshot
from tests.conftest import skip_or_fail

SMALL = ["ext4", "nvme", "e1000e", "snd_hda_intel", "i915", "kvm_intel"]


@pytest.fixture(autouse=True)
def _engine() -> None:
    """Without the compiled engine: skipped here, failed where it is required."""
    if not native.available():
        skip_or_fail("the native engine (fastlkm.lookup._native) is not built")


def agree(st_: Strategy, vmlinux: list[Table], modules: dict[int, list[Table]],
          events: list[Event], precomputed: bool, packed: native.Packed | None = None
          ) -> native.NativeRun:
    """Native and replay() agree on every lookup, every counter and the memory.  The
    results checked are those of the last timed pass (repeats=1): the uncounted build of
    the lookups must find what the counted one found."""
    want = replay(st_, vmlinux, modules, events, precomputed=precomputed)
    p = packed or native.pack(st_, vmlinux, modules, events)
    got = native.run_packed(p, repeats=1, precomputed=precomputed)
    assert got.counters.as_dict() == want.counters.as_dict()
    assert got.results == want.results
    assert got.memory == want.memory
    assert got.lookups == len(want.results) and len(got.ns_runs) == 1
    return got


# --- hand-made sessions --------------------------------------------------------------


def table(names: list[bytes], lic: int = NOT_GPL_ONLY, flags: bytes = b"",
          owner: int = -1) -> Table:
    return Table(list(names), lic, flags, owner,
                 "__ksymtab_gpl" if lic == GPL_ONLY else "__ksymtab")


def synthetic() -> tuple[list[Table], dict[int, list[Table]], list[Event]]:
    # "Ez"/"FY" share a djb hash, "A@"/"B0" an ELF hash: a perfect table falls back
    vmlinux = [
        table(sorted([b"Ez", b"FY", b"A@", b"B0", b"kfree", b"kmalloc", b"kmalloc_node",
                      b"printk", b"shared"])),
        table(sorted([b"gpl_only_fn", b"kmalloc_trace", b"shadowed"]), GPL_ONLY),
    ]
    big = [b"snd_pcm_%03d" % i for i in range(300)]
    random.Random(7).shuffle(big)
    modules = {
        0: [table([b"mod_a", b"shared_prefix_x", b"shared_prefix_xy", b"dup"], owner=0),
            table([b"mod_gpl", b"dup_gpl", b"shadowed"], GPL_ONLY, owner=0)],
        # Linux 7.x: one table, GPL-only-ness per entry
        1: [table([b"pe_free", b"pe_gpl", b"dup", b"dup_gpl", b"FY", b"Ez"], PER_ENTRY,
                  bytes([0, 1, 1, 0, 3, 2]), owner=1)],
        2: [table([], owner=2), table([b"x"], GPL_ONLY, owner=2)],
        3: [table([b"zz_unsorted", b"aa_unsorted", b"mm", b"printk", b"B0", b"A@"],
                  owner=3)],
        4: [],
        5: [table(big, owner=5), table(big[:17], PER_ENTRY, bytes(i % 2 for i in range(17)),
                                       owner=5)],
    }
    every = {n for ts in (vmlinux, *modules.values()) for t in ts for n in t.names}
    absent = [b"", b"k", b"kmallo", b"kmalloc_", b"kmalloc_node_x", b"shared_prefix",
              b"zzz", b"\xff", b"snd_pcm_300", b"Fz", b"x\xff"]
    names = sorted(every) + absent

    def lookups() -> list[Event]:
        return [Event(LOOKUP, name=n, gplok=g) for n in names for g in (True, False)]

    events = lookups()
    for o in (0, 1):
        events.append(Event(LOAD, owner=o))
    events += lookups()
    for o in (2, 3, 4, 5):
        events.append(Event(LOAD, owner=o))
    events += lookups()
    events += [Event(UNLOAD, owner=1), *lookups(), Event(UNLOAD, owner=7)]  # 7: never loaded
    events += [Event(LOAD, owner=1), *lookups()]
    events += [Event(LOAD, owner=0), *lookups()]     # loaded twice without an unload
    events += [Event(UNLOAD, owner=0), *lookups(), Event(UNLOAD, owner=5), *lookups()]
    return vmlinux, modules, events


@pytest.mark.parametrize("precomputed", [True, False])
@pytest.mark.parametrize("name", list(STRATEGIES))
def test_synthetic_session(name: str, precomputed: bool) -> None:
    vmlinux, modules, events = synthetic()
    run = agree(STRATEGIES[name], vmlinux, modules, events, precomputed)
    assert run.counters.found and run.counters.found < run.lookups


def test_empty_sessions() -> None:
    for st_ in STRATEGIES.values():
        run = native.run(st_, [], {}, [], repeats=2)
        assert run.results == [] and run.lookups == 0 and run.ns_per_lookup == 0.0
        assert len(run.ns_runs) == 2
        agree(st_, [], {0: []}, [Event(LOOKUP, name=b"a"), Event(LOAD, owner=0),
                                 Event(LOOKUP, name=b"a", gplok=False)], False)


def test_timings() -> None:
    vmlinux, modules, events = synthetic()
    run = native.run(STRATEGIES["bsearch"], vmlinux, modules, events, repeats=3)
    assert len(run.ns_runs) == 3 and all(ns > 0 for ns in run.ns_runs)
    assert run.ns_total == sorted(run.ns_runs)[1]
    assert run.ns_per_lookup == run.ns_total / run.lookups
    assert len(run.ns_update) == 3


def test_names_the_kernel_could_not_compare() -> None:
    with pytest.raises(ValueError, match="NUL"):
        native.pack(STRATEGIES["linear"], [table([b"a\0b"])], {}, [])
    with pytest.raises(ValueError, match="NUL"):
        native.pack(STRATEGIES["linear"], [], {}, [Event(LOOKUP, name=b"a\0")])


@pytest.mark.parametrize("name, word, value", [
    ("sysv", 3, 99),         # a bucket beyond the table
    ("sysv", -1, 50),        # a hash: harmless, the chains stay in bounds
    ("gnu", 0, 3),           # maskwords not a power of two
    ("perfect", 2, 0),       # no slots
    ("bsearch", 1, 1000),    # an order entry beyond the table
])
def test_engine_checks_layouts(name: str, word: int, value: int) -> None:
    """A damaged layout is refused before any pass, never read out of bounds."""
    names = [bytes([c]) for c in b"abcdefghij"]   # perfect hashes tables of 8 or more
    t = table([b"a", b"c", b"b"] if name == "bsearch" else names)
    p = native.pack(STRATEGIES[name], [t], {}, [Event(LOOKUP, name=b"b")])
    lay = array("I", p.buffers[4])
    lay[word] = value
    damaged = dataclasses.replace(p, buffers=(*p.buffers[:4], lay, *p.buffers[5:]))
    if word == -1:
        native.run_packed(damaged, repeats=0)
        return
    with pytest.raises(ValueError, match="layout"):
        native.run_packed(damaged, repeats=0)


# --- random sessions ------------------------------------------------------------------

NAME = st.lists(st.sampled_from(b"ab_\xff"), max_size=4).map(bytes)


@st.composite
def tables(draw: st.DrawFn, owner: int) -> Table:
    names = draw(st.lists(NAME, max_size=6))
    lic = draw(st.sampled_from([NOT_GPL_ONLY, GPL_ONLY, PER_ENTRY]))
    flags = bytes(draw(st.lists(st.integers(0, 3), min_size=len(names),
                                max_size=len(names)))) if lic == PER_ENTRY else b""
    return table(names, lic, flags, owner)


@st.composite
def sessions(draw: st.DrawFn) -> tuple[list[Table], dict[int, list[Table]], list[Event]]:
    vmlinux = draw(st.lists(tables(-1), max_size=2))
    n = draw(st.integers(0, 3))
    modules = {o: draw(st.lists(tables(o), max_size=2)) for o in range(n)}
    known = [x for ts in (vmlinux, *modules.values()) for t in ts for x in t.names]
    name = st.sampled_from(known) | NAME if known else NAME
    event = st.one_of(
        st.builds(Event, st.just(LOOKUP), name=name, gplok=st.booleans()),
        *([st.builds(Event, st.just(LOAD), owner=st.integers(0, n - 1))] if n else []),
        st.builds(Event, st.just(UNLOAD), owner=st.integers(0, n)),
    )
    return vmlinux, modules, draw(st.lists(event, max_size=25))


@pytest.mark.parametrize("name", list(STRATEGIES))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(session=sessions(), precomputed=st.booleans())
def test_random_sessions(name: str, session: tuple, precomputed: bool) -> None:
    agree(STRATEGIES[name], *session, precomputed)


# --- the shipped 6.12 tree ---------------------------------------------------------------


@pytest.fixture(scope="module")
def snapshot() -> System:
    return open_system(str(shipped_snapshot()))


@pytest.fixture(scope="module")
def small(snapshot: System) -> Scenario:
    return record(snapshot.kernel, probe_order(snapshot.modules, snapshot.order, SMALL))


@pytest.fixture(scope="module")
def everything(snapshot: System) -> Scenario:
    return record(snapshot.kernel, probe_order(snapshot.modules, snapshot.order))


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_small_session_every_lookup_and_count(small: Scenario, name: str) -> None:
    """Six real modules with their dependencies.  The pure-Python linear scan costs
    ~35 s over the whole session, so linear replays every 10th lookup (still every load:
    lookups change no state)."""
    events = small.events
    if name == "linear":
        k = 0
        thinned = []
        for ev in events:
            k += ev.op == LOOKUP
            if ev.op != LOOKUP or k % 10 == 1:
                thinned.append(ev)
        events = thinned
    st_ = STRATEGIES[name]
    p = native.pack(st_, small.vmlinux, small.modules, events)
    for precomputed in (True, False) if st_.hash else (True,):   # no hash: nothing differs
        agree(st_, small.vmlinux, small.modules, events, precomputed, p)


# perfect is left out: building its layouts in Python takes ~40 s over this tree's 1,147
# tables (PerfectIndex._build() mixes all 65,536 pilots of its seed for every table, even
# a one-name one), more than this file's budget.  Its lookups are checked on the small
# and the hand-made sessions; linear costs ~2.5 s per pass in C and stays.
FULL = [n for n in STRATEGIES if n != "perfect"]


@pytest.mark.parametrize("name", FULL)
def test_all_modules_every_lookup(everything: Scenario, name: str) -> None:
    """All 4,230 modules, ~213k lookups: every native result is what the loader model
    found (counts are compared on the small session: replay() cannot afford this one)."""
    want = [e.expected for e in everything.events if e.op == LOOKUP]
    run = native.run(STRATEGIES[name], everything.vmlinux, everything.modules,
                     everything.events, repeats=1)
    assert run.lookups == len(want) > 200_000
    bad = [i for i, (a, b) in enumerate(zip(run.results, want, strict=True)) if a != b]
    assert not bad, f"{len(bad)} lookups differ, first {bad[0]}: {run.results[bad[0]]} " \
        f"!= {want[bad[0]]}"
    assert run.counters.lookups == len(want)
    assert run.counters.found == sum(w is not None for w in want)
