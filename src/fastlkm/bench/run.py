"""``fastlkm bench``: every lookup strategy over the lookups the loader model performs,
counted and timed, against the 2009 baseline (linear) and mainline (bsearch).

A scenario is recorded once (loader/scenario.py); each strategy then replays it, in the
native engine when it is built (counts and nanoseconds) or in the pure-Python reference
engine (counts only; timings absent).
"""

from __future__ import annotations

import platform
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from fastlkm.depmod.probe import probe_order
from fastlkm.errors import FormatError, UsageError
from fastlkm.kernel.facts import Module
from fastlkm.loader.scenario import Scenario, record
from fastlkm.lookup import native
from fastlkm.lookup.base import Table
from fastlkm.lookup.replay import LOAD, LOOKUP, UNLOAD, Event, replay
from fastlkm.lookup.strategies import STRATEGIES, Strategy, TableIndex
from fastlkm.target import System, open_system

# The 2009 LKML thread's figures: Amoroso's hash tables cut symbol resolution time by
# 96% (25x); Jenkins' binary search by about 90-96%.
CLAIMS = {"sysv": "hash: 96% less (25x) [Amoroso 2009]",
          "bsearch": "bsearch: ~90-96% less [Jenkins 2009]"}
BOOT_LIST = "boot-modules.txt"
# pure-Python replays: at most this many strcmp-heavy lookups are replayed per strategy
PY_BUDGET = 20_000


@dataclass
class StrategyResult:
    name: str
    description: str
    lookups: int
    counters: dict[str, int]
    memory: int                      # bytes the strategy adds
    memory_per_export: float
    memory_pct: float                # of the export tables' own size (memory only)
    undef_hash: int = 0              # bytes of precomputed import hashes in the modules
    ns_per_lookup: float | None = None
    ns_total: int | None = None
    ns_runs: list[int] = field(default_factory=list)
    # keeping the index, median of the repeats: inserts on load, removal on unload (and
    # global's vmlinux inserts at boot); with the lookups, what the session's loads cost
    ns_update: int | None = None
    ns_per_load: float | None = None     # (ns_total + ns_update) / modules loaded
    sampled: int = 1                 # counts are from every sampled-th lookup, scaled
    vs_linear: float | None = None   # speed-up factor against linear (time)
    vs_bsearch: float | None = None
    vs_bsearch_runs: list[float] = field(default_factory=list)   # per interleaved round
    claim: str = ""

    @property
    def reduction_vs_linear(self) -> float | None:
        return None if self.vs_linear is None else 1 - 1 / self.vs_linear

    @property
    def ns_all(self) -> int | None:
        """Lookups plus keeping the index, the whole session."""
        if self.ns_total is None or self.ns_update is None:
            return None
        return self.ns_total + self.ns_update


@dataclass
class BenchResult:
    kernel: str
    origin: str
    scenario: str
    modules_loaded: int
    lookups: int
    exports: int                     # exports in the session (vmlinux and loaded modules)
    tables: int
    tables_size: int                 # the export tables' own bytes
    engine: str                      # "native" or "python (no timings)"
    machine: str
    strategies: list[StrategyResult]
    failures: int = 0

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        for s, r in zip(d["strategies"], self.strategies, strict=True):  # type: ignore[arg-type]
            s["reduction_vs_linear"] = r.reduction_vs_linear
            s["ns_all"] = r.ns_all
        return d


def read_module_list(path: str | Path) -> list[str]:
    """Module names from a file: one per line, or ``lsmod`` output (header skipped)."""
    names = []
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise FormatError(f"cannot read module list: {e.strerror}", str(path)) from None
    for line in text.splitlines():
        f = line.split("#", 1)[0].split()
        if not f or (f[0] == "Module" and len(f) > 1 and f[1] == "Size"):
            continue
        names.append(f[0].replace("-", "_"))
    return names


def boot_modules(modules: list[Module]) -> list[str]:
    """The shipped desktop-like boot list, restricted to the modules this kernel has."""
    text = (resources.files("fastlkm") / "data" / BOOT_LIST).read_text()
    have = {m.name for m in modules}
    return [n for n in (x.split("#")[0].strip() for x in text.splitlines())
            if n and n.replace("-", "_") in have]


def scenario_for(system: System, scenario: str) -> tuple[str, Scenario]:
    if scenario == "all":
        return "all", record(system.kernel, probe_order(system.modules, system.order))
    if scenario == "boot":
        names = boot_modules(system.modules)
        return f"boot ({len(names)} modules listed)", \
            record(system.kernel, probe_order(system.modules, system.order, names))
    names = read_module_list(scenario)
    have = {m.name for m in system.modules}
    missing = [n for n in names if n not in have]
    if len(missing) == len(names):
        raise UsageError(f"{scenario}: none of its modules is in {system.origin}")
    return f"{Path(scenario).name} ({len(names) - len(missing)} modules)", \
        record(system.kernel, probe_order(system.modules, system.order,
                                          [n for n in names if n in have]))


def machine() -> str:
    """The machine a measurement was taken on: cores, CPU model, Python, and the load
    average when it started (the benchmarks run side by side on shared machines)."""
    import os

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{os.cpu_count()} cores, {cpu or platform.machine()}, Python " \
        f"{platform.python_version()}, load {load:.2f}"


def use_embedded(system: System, sc: Scenario) -> None:
    """Take each loaded module's tables from the sections ``fastlkm hash`` embedded in its
    file, so that the numbers are for what was written.  vmlinux's tables stay built
    (a vmlinuz carries no sections of ours)."""
    from fastlkm.embedded.read import read_embedded_tables

    if system.tree is None:
        raise UsageError("--embedded needs a tree of processed modules, not a snapshot")
    paths = {m.name: m.path for m in system.modules}
    crcs = system.kernel.modversions
    for owner, name in sc.module_names.items():
        rel = paths.get(name.replace("-", "_"))
        if rel is None or not sc.modules[owner]:
            continue
        path = rel if rel.startswith("/") else str(system.tree.moddir / rel)
        sc.modules[owner] = read_embedded_tables(path, owner, crcs)


def _embedded(st: Strategy) -> Strategy:
    """The strategy reading stored indexes where a table has one, building the rest."""
    from dataclasses import replace as dc_replace

    from fastlkm.embedded.codec import EMBEDDED, embedded_strategy

    stored = embedded_strategy(st)
    assert st.build is not None and stored.build is not None
    own, from_file = st.build, stored.build

    def build(t: Table) -> TableIndex:
        return from_file(t) if EMBEDDED in t.extra else own(t)

    return dc_replace(stored, build=build)


def bench(target: str | None, scenarios: str = "boot", strategies: list[str] | None = None,
          repeats: int = 5, use_native: bool = True, embedded: bool = False,
          source: str | None = None, jobs: int | None = None,
          progress: Callable[[str], None] | None = None,
          unload: bool = False) -> list[BenchResult]:
    """``fastlkm bench``: :func:`run_bench` on *target* (what open_system() takes) for
    each of the comma-separated *scenarios*; *strategies* may be comma-separated too."""
    system = open_system(target, source=source, jobs=jobs)
    names = [s for x in strategies for s in x.split(",") if s] if strategies else None
    results = []
    for scenario in scenarios.split(","):
        if progress:
            progress(f"recording scenario {scenario}")
        results.append(run_bench(system, scenario, names, repeats=repeats,
                                 use_native=use_native, embedded=embedded, progress=progress,
                                 unload=unload))
    return results


def engine_note(use_native: bool) -> str | None:
    """What a report without timings must say."""
    if use_native and not native.available():
        return "the native engine is not built: counts only, timings are absent"
    return None


def run_bench(system: System, scenario: str = "boot", strategies: list[str] | None = None,
              repeats: int = 5, use_native: bool = True, embedded: bool = False,
              progress: Callable[[str], None] | None = None,
              unload: bool = False) -> BenchResult:
    """*unload*: after the session, every module loaded is unloaded, last first (what
    rmmod does to the index), so that keeping the index includes removals."""
    names = strategies or list(STRATEGIES)
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown:
        raise UsageError(f"unknown strategies: {', '.join(unknown)} "
                         f"(known: {', '.join(STRATEGIES)})")
    label, sc = scenario_for(system, scenario)
    if embedded:
        use_embedded(system, sc)
        label += ", tables read from the modules' embedded sections"
    lookups = [e for e in sc.events if e.op == LOOKUP]
    loaded = sorted({e.owner for e in sc.events if e.op == LOAD})
    if unload:
        live: dict[int, None] = {}
        for e in sc.events:
            if e.op == LOAD:
                live[e.owner] = None
            elif e.op == UNLOAD:
                live.pop(e.owner, None)
        sc.events.extend(Event(UNLOAD, owner=o) for o in reversed(live))
        label += ", then every module unloaded, last first"
    tables = sc.vmlinux + [t for o in loaded for t in sc.modules[o]]
    exports = sum(len(t.names) for t in tables)
    own = sum(t.own_size() for t in tables)
    engine_native = use_native and native.available()
    chosen: dict[str, Strategy] = {}
    for name in names:
        st = STRATEGIES[name]
        if embedded:
            try:
                st = _embedded(st)
            except ValueError as e:
                raise UsageError(str(e)) from None
        chosen[name] = st
    timed = _interleaved(chosen, sc, repeats, progress) if engine_native else {}
    results: list[StrategyResult] = []
    for name, st in chosen.items():
        if name in timed:
            run, ns_runs, update_runs = timed[name]
            _check(name, run.results, lookups)
            counters, memory, sampled = run.counters.as_dict(), run.memory, 1
            ns_total = int(statistics.median(ns_runs)) if ns_runs else 0
            ns_per = ns_total / len(lookups) if lookups else 0.0
            ns_update: int | None = int(statistics.median(update_runs)) \
                if update_runs else None
        else:
            if progress:
                progress(f"{name}: {len(lookups)} lookups")
            sample = _py_sample(name, len(lookups), len(tables))
            rep = replay(st, sc.vmlinux, sc.modules, sc.events, sample=sample)
            _check(name, rep.results, lookups[::sample])
            counters = {k: v * sample if k != "lookups" else len(lookups)
                        for k, v in rep.counters.as_dict().items()}
            memory, sampled, ns_total, ns_runs, ns_per = rep.memory, sample, None, [], None
            ns_update = None
        results.append(StrategyResult(
            name, st.description, len(lookups), counters, memory,
            memory_per_export=memory / exports if exports else 0.0,
            memory_pct=100.0 * memory / own if own else 0.0,
            undef_hash=4 * len(lookups) if st.hash is not None else 0,
            ns_per_lookup=ns_per, ns_total=ns_total, ns_runs=ns_runs, sampled=sampled,
            ns_update=ns_update,
            ns_per_load=(ns_total + ns_update) / len(loaded)
            if ns_total is not None and ns_update is not None and loaded else None,
            claim=CLAIMS.get(name, "")))
    by = {r.name: r for r in results}
    for r in results:
        if r.ns_total:
            if "linear" in by and by["linear"].ns_total:
                r.vs_linear = by["linear"].ns_total / r.ns_total
            if "bsearch" in by and by["bsearch"].ns_total:
                r.vs_bsearch = by["bsearch"].ns_total / r.ns_total
                # the ratio within each round: how far one run's figure can move
                r.vs_bsearch_runs = [b / x for b, x in zip(by["bsearch"].ns_runs, r.ns_runs,
                                                           strict=True) if x]
    failures = sum(1 for r in sc.results if not r.ok)
    return BenchResult(system.kernel.release, system.origin, label, len(loaded),
                       len(lookups), exports, len(tables), own,
                       "native" if engine_native else "python (no timings)", machine(),
                       results, failures)


def _interleaved(chosen: dict[str, Strategy], sc: Scenario, repeats: int,
                 progress: Callable[[str], None] | None
                 ) -> dict[str, tuple[native.NativeRun, list[int], list[int]]]:
    """Every strategy in the native engine, the strategies interleaved: round r times
    each once, starting from the r-th, so that a slow phase of a shared machine falls on
    all of them alike.  Per strategy: its first run (counts and results), the lookup
    time and the index upkeep of each round."""
    packed = {}
    for name, st in chosen.items():
        if progress:
            progress(f"{name}: packing {len(sc.events)} events")
        packed[name] = native.pack(st, sc.vmlinux, sc.modules, sc.events)
    names = list(chosen)
    out: dict[str, tuple[native.NativeRun, list[int], list[int]]] = {}
    for r in range(max(repeats, 1)):
        for name in names[r % len(names):] + names[:r % len(names)]:
            if progress:
                progress(f"round {r + 1} of {repeats}: {name}")
            # counts and results come from the first round; later ones only time
            run = native.run_packed(packed[name], repeats=1 if repeats else 0,
                                    count=name not in out)
            _, ns, upd = out.setdefault(name, (run, [], []))
            ns += run.ns_runs
            upd += run.ns_update
    return out


def _py_sample(name: str, lookups: int, tables: int) -> int:
    """Replay every n-th lookup in pure Python so that one strategy costs seconds, not
    hours: linear scans every table; per-table strategies visit many tables."""
    if name == "global":
        return 1
    weight = tables * (60 if name == "linear" else 1)
    return max(1, (lookups * weight) // (PY_BUDGET * 1000) or 1)


def _check(name: str, got: list, lookups: list) -> None:
    """Every strategy must find what the loader model found."""
    want = [e.expected for e in lookups]
    if got != want:
        bad = next(i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b)
        raise AssertionError(f"{name}: lookup {bad} ({lookups[bad].name!r}) found {got[bad]}, "
                             f"the loader found {want[bad]}")


