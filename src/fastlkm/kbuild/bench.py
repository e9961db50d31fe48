"""``fastlkm kernel bench``: every strategy measured by the patched kernel itself.

One boot of the built kernel under QEMU (``module.sig_enforce=1``: every module carries
the build's signature over the tables ``fastlkm hash`` embedded) does:

- round 0, with ``bsearch``: insmod every module of the tree in dependency order and
  rmmod them in reverse; what does not load or unload is reported and left out (a
  module that cannot be unloaded stays loaded for the rest of the boot);
- rounds 1..N: per strategy, in an order rotated every round (interleaved), select it
  with ``module.lookup``, insmod the module set in order, rmmod it in reverse, and read
  the kernel's counters (/sys/kernel/debug/module_lookup);
- a self-check round: every strategy again with ``module.lookup_check=1``, each lookup
  repeated by binary search.

Beside it, the loader model replays the same loads in the same order against the same
files (vmlinux and the processed modules) and predicts each strategy's lookups and
strcmp() calls: the kernel's counts must equal them, round after round.

The kernel times each lookup with local_clock().  By default QEMU runs with ``-icount
shift=0``: the guest's clock advances 1 ns per instruction executed, so a time is an
instruction count, the same run after run whatever else the host does (this machine is
shared).  ``clock="host"`` lets the guest's clock follow the host's instead: times then
include the emulator's own costs (memory accesses through its soft TLB, indirect jumps)
and the host's load.  Neither models caches or memory latency: the times compare the
strategies of one boot, not a real machine's.
"""

from __future__ import annotations

import json
import re
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fastlkm.depmod.probe import probe_order
from fastlkm.io.atomic import atomic_write
from fastlkm.kbuild.build import KernelBuild, build_kernel
from fastlkm.kbuild.qemu import INIT_HEAD, INIT_TAIL, Entry, busybox_initramfs, run_guest
from fastlkm.loader.loader import Loader
from fastlkm.loader.scenario import RecordingSearch, export_tables
from fastlkm.lookup.replay import LOAD, Event, replay
from fastlkm.lookup.strategies import STRATEGIES
from fastlkm.target import System

CLOCK_NOTES = {
    "icount": ("QEMU TCG with -icount shift=0: the guest's clock counts instructions "
               "executed, 1 ns each, whatever the host's load; no caches or memory "
               "latency are modelled: times compare the strategies of one boot, not "
               "real hardware"),
    "host": ("QEMU TCG, the guest's clock following the host's: times include the "
             "emulator's costs and the host's load; no caches are modelled: times "
             "compare the strategies of one boot, not real hardware"),
}

# the kernel's module.lookup names, those of fastlkm bench
KERNEL_STRATEGIES = ("linear", "bsearch", "sysv", "sysv-djb", "gnu", "perfect", "global")
STATS = "/sys/kernel/debug/module_lookup"
PARAM = "/sys/module/module/parameters"
CLAIMS = {"bsearch": "Jenkins 2009: ~90-96% less than linear",
          "sysv": "Amoroso 2009: 96% less than linear (25x)"}


@dataclass
class StrategyReport:
    name: str
    kernel_ns_per_lookup: float       # median of the rounds, the clock reads taken off
    kernel_lookups: int               # per round
    kernel_strcmp: int                # per round
    model_lookups: int
    model_strcmp: int
    failures: int                     # insmod/rmmod failures in the measured rounds
    mismatches: int                   # self-check differences from binary search
    fallbacks: int                    # tables binary searched for want of a table
    resolution_share: float           # symbol resolution / whole load_module() time
    ns_per_lookup_rounds: list[float] = field(default_factory=list)
    kernel_chain_steps: int = 0       # per round: chain entries, slots or nodes visited
    model_chain_steps: int = 0
    kernel_bloom_rejections: int = 0  # per round: tables a Bloom filter skipped
    model_bloom_rejections: int = 0
    kernel_hashes: int = 0            # per round: names hashed at run time (none stored)
    update_ns_per_load: float = 0.0   # global: inserts on load and removals on unload
    load_cost_ns: float = 0.0         # resolution + index upkeep, per module load
    vmlinux_bytes: int = 0            # its tables in vmlinux
    module_bytes: int = 0             # its tables in every module loaded at once
    memory_bytes: int = 0             # in all (global: the most its table took)
    vs_linear: float | None = None
    vs_bsearch: float | None = None

    @property
    def counts_equal(self) -> bool:
        return (self.kernel_lookups, self.kernel_strcmp, self.kernel_chain_steps,
                self.kernel_bloom_rejections) == (self.model_lookups, self.model_strcmp,
                                                  self.model_chain_steps,
                                                  self.model_bloom_rejections)


@dataclass
class KernelReport:
    kernel: str
    modules: int                      # modules of each measured round
    vmlinux_exports: int
    rounds: int
    strategies: list[StrategyReport]
    left_out: list[str]               # modules that did not load or unload in round 0
    stuck: list[str]                  # loaded in round 0 and never unloadable
    seconds: float
    refusals: list[str]               # the loader's refusals in the kernel log
    clock_ns: int = 0                 # taken off each lookup: its two clock reads
    clock: str = "icount"             # the guest's clock: "icount" or "host"
    note: str = ""

    def __post_init__(self) -> None:
        if not self.note:
            self.note = CLOCK_NOTES[self.clock]

    @property
    def ok(self) -> bool:
        return all(s.counts_equal and not s.failures and not s.mismatches
                   for s in self.strategies)

    def to_json(self) -> dict[str, object]:
        d = asdict(self)
        for s, sd in zip(self.strategies, d["strategies"], strict=True):
            sd["counts_equal"] = s.counts_equal
        d["ok"] = self.ok
        return d

    def text(self) -> str:
        lines = [f"kernel {self.kernel}: {self.modules} modules per round, "
                 f"{self.vmlinux_exports} vmlinux exports, {self.rounds} rounds "
                 f"(interleaved), one boot of {self.seconds:.0f} s",
                 f"note: {self.note}",
                 f"{'strategy':9} {'ns/lookup':>10} {'spread':>15} {'lookups':>8} "
                 f"{'strcmp':>10} {'model strcmp':>12} {'equal':>5} {'vs linear':>9} "
                 f"{'vs bsearch':>10} {'load cost':>9} {'share':>6} {'mism':>4} "
                 f"{'hashed':>6} {'memory':>9}"]
        for s in self.strategies:
            lo, hi = (min(s.ns_per_lookup_rounds), max(s.ns_per_lookup_rounds)) \
                if s.ns_per_lookup_rounds else (0, 0)
            vl = f"{s.vs_linear:.1f}x" if s.vs_linear else "-"
            vb = f"{s.vs_bsearch:.2f}x" if s.vs_bsearch else "-"
            lines.append(
                f"{s.name:9} {s.kernel_ns_per_lookup:10.0f} {f'{lo:.0f}-{hi:.0f}':>15} "
                f"{s.kernel_lookups:8d} {s.kernel_strcmp:10d} {s.model_strcmp:12d} "
                f"{'yes' if s.counts_equal else 'NO':>5} {vl:>9} {vb:>10} "
                f"{s.load_cost_ns / 1000:8.0f}us {s.resolution_share:6.1%} "
                f"{s.mismatches:4d} {s.kernel_hashes:6d} "
                f"{s.memory_bytes / 1024:7.0f}KiB")
        for name, claim in CLAIMS.items():
            s = next((x for x in self.strategies if x.name == name), None)
            if s is not None and s.vs_linear:
                lines.append(f"{name}: {1 - 1 / s.vs_linear:.1%} less time than linear "
                             f"({claim})")
        if self.left_out:
            lines.append(f"left out (did not load or unload in round 0): "
                         f"{', '.join(self.left_out)}")
        if self.stuck:
            lines.append(f"never unloadable, loaded for the whole boot: "
                         f"{', '.join(self.stuck)}")
        lines += [f"refused: {r}" for r in self.refusals]
        return "\n".join(lines)


# --- the guest ---------------------------------------------------------------------------


def init_script(order: list[str], strategies: tuple[str, ...], rounds: int) -> str:
    """/init: round 0, the measured rounds, the self-check round (module docstring)."""
    rot = [" ".join(strategies[(r + k) % len(strategies)] for k in range(len(strategies)))
           for r in range(rounds)]
    return INIT_HEAD + f"""ORDER="{' '.join(order)}"
P={PARAM}
echo bsearch > $P/lookup
OK=""
for m in $ORDER; do
    if insmod /modules/$m.ko 2>/dev/null; then OK="$m $OK"; else echo "@@NOLOAD $m" >&3; fi
done
echo "@@STATS 0 loaded" >&3
cat {STATS} >&3
LIST=""
for m in $OK; do
    if rmmod $m 2>/dev/null; then LIST="$m $LIST"; else echo "@@STUCK $m" >&3; fi
done
REV=""
for m in $LIST; do REV="$m $REV"; done
echo "@@LIST $LIST" >&3
echo 0 > {STATS}
cycle() {{
    echo $1 > $P/lookup
    for m in $LIST; do insmod /modules/$m.ko || echo "@@FAIL $2 $1 insmod $m" >&3; done
    for m in $REV; do rmmod $m || echo "@@FAIL $2 $1 rmmod $m" >&3; done
}}
R=0
for S in {' '.join(f'"{x}"' for x in rot)}; do
    R=$((R + 1))
    for s in $S; do
        cycle $s $R
        echo "@@STATS $R $s" >&3
        cat {STATS} >&3
    done
done
echo 1 > $P/lookup_check
for s in {' '.join(strategies)}; do cycle $s check; done
echo 0 > $P/lookup_check
echo "@@STATS check all" >&3
cat {STATS} >&3
""" + INIT_TAIL


@dataclass
class GuestStats:
    """What the guest reported."""

    list: list[str]
    noload: list[str]
    stuck: list[str]
    failures: list[str]
    snapshots: list[tuple[str, str, dict[str, dict[str, int]]]]   # (round, strategy, table)
    dmesg: str


def _table(text: str) -> dict[str, dict[str, int]]:
    lines = text.strip().splitlines()
    head = lines[0].split()[1:]
    out: dict[str, dict[str, int]] = {}
    for line in lines[1:]:
        f = line.split()
        if len(f) == len(head) + 1:
            out[f[0]] = dict(zip(head, map(int, f[1:]), strict=True))
        elif len(f) == 2:
            out[f[0]] = {"value": int(f[1])}
    return out


def parse_guest(results: str) -> GuestStats:
    lst = re.search(r"^@@LIST (.*)$", results, re.M)
    if lst is None:
        raise ValueError("the guest reported no module list")
    snaps = []
    for m in re.finditer(r"^@@STATS (\S+) (\S+)\n(.*?)(?=^@@|\Z)", results, re.M | re.S):
        snaps.append((m[1], m[2], _table(m[3])))
    dmesg = re.search(r"^@@DMESG\n(.*?)^@@END", results, re.M | re.S)
    # /init reports the stuck modules newest first
    stuck = re.findall(r"^@@STUCK (\S+)$", results, re.M)[::-1]
    return GuestStats(lst[1].split(), re.findall(r"^@@NOLOAD (\S+)$", results, re.M),
                      stuck,
                      re.findall(r"^@@FAIL (.*)$", results, re.M), snaps,
                      dmesg[1] if dmesg else "")


# --- the model -----------------------------------------------------------------------------


def model_counts(system: System, stuck: list[str], measured: list[str]
                 ) -> dict[str, tuple[int, int, int, int]]:
    """Per strategy, (lookups, strcmp calls, chain steps, Bloom rejections) of one
    measured round as the loader model
    predicts them: the stuck modules loaded first (their lookups not counted), then the
    measured set loaded in order and unloaded in reverse."""
    from fastlkm.lookup import native

    kernel = system.kernel
    mods = {m.name: m for m in system.modules}
    search = RecordingSearch(kernel)
    loader = Loader(kernel, search)
    for name in stuck:
        loader.load(mods[name])
    prefix = [e for e in search.events if e.op == LOAD]
    start = len(search.events)
    for name in measured:
        loader.load(mods[name])
    for name in reversed(measured):
        loader.unload(mods[name].info1("name") or name)
    events: list[Event] = prefix + search.events[start:]
    vmlinux = export_tables(kernel.exports, -1, kernel.modversions)
    out = {}
    for s in KERNEL_STRATEGIES:
        st = STRATEGIES[s]
        if native.available():
            c = native.run(st, vmlinux, search.tables, events, repeats=1).counters
        else:
            c = replay(st, vmlinux, search.tables, events).counters
        out[s] = (c.lookups, c.strcmp, c.chain_steps, c.bloom_rejections)
    return out


# what load_module() says when it refuses a module for its symbols or signature
REFUSALS = re.compile(r"Unknown symbol|disagrees about version|Key was rejected|"
                      r"Loading of (unsigned module|module with unavailable key) is rejected|"
                      r"exports duplicate symbol|binary search instead|module lookup:")


def refusals(dmesg: str) -> list[str]:
    """The kernel log's lines of refusals, damaged tables and self-check differences."""
    return [line for line in dmesg.splitlines() if REFUSALS.search(line)]


# --- the run -------------------------------------------------------------------------------


def _delta(snaps: list[tuple[str, str, dict[str, dict[str, int]]]], strategy: str
           ) -> list[dict[str, int]]:
    """Per measured round, what the kernel counted for *strategy* in that round."""
    out, prev = [], None
    for r, s, table in snaps:
        if s != strategy or r == "check":
            continue
        now = table[strategy]
        out.append({k: v - (prev or {}).get(k, 0) for k, v in now.items()})
        prev = now
    return out


def run_bench(rounds: int = 5, json_path: str | None = None,
              build: KernelBuild | None = None, modules: list[str] | None = None,
              timeout: float = 3000, clock: str = "icount") -> KernelReport:
    """Boot the built kernel once, measure every strategy, set the model beside it."""
    from fastlkm.target import open_system

    build = build or build_kernel()
    system = open_system(str(build.modroot), source="vmlinux")
    ordered = probe_order(system.modules, system.order, modules)
    files: list[Entry] = []
    names = []
    for m in ordered:
        names.append(m.name)
        files.append((f"modules/{m.name}.ko", 0o100644,
                      (build.moddir / m.path).read_bytes(), 0))
    init = init_script(names, KERNEL_STRATEGIES, rounds)
    guest = run_guest(build.bzimage, busybox_initramfs(init, files),
                      append="module.sig_enforce=1", timeout=timeout, memory_mb=1536,
                      icount=clock == "icount")
    g = parse_guest(guest.results)
    model = model_counts(system, g.stuck, g.list)
    final = next(t for r, s, t in g.snapshots if r == "check")
    loaded = next((t for r, s, t in g.snapshots if r == "0"), final)
    # what the two clock reads around each lookup add, measured by the kernel at boot
    clock_ns = final.get("clock_ns", {}).get("value", 0)
    reports = []
    for s in KERNEL_STRATEGIES:
        per = _delta(g.snapshots, s)
        for d in per:
            d["ns"] = max(0, d["ns"] - clock_ns * d["lookups"])
        ns = [d["ns"] / d["lookups"] for d in per if d["lookups"]]
        lookups = per[-1]["lookups"] if per else 0
        strcmp = per[-1]["strcmp"] if per else 0
        total_ns = sum(d["ns"] for d in per)
        loads = sum(d["loads"] for d in per)
        load_ns = sum(d["load_ns"] for d in per)
        update = sum(d["update_ns"] for d in per)
        rounds_equal = {(d["lookups"], d["strcmp"], d["chain_steps"], d["bloom_rejections"])
                        for d in per}
        if len(rounds_equal) > 1:
            lookups, strcmp = -1, -1        # the kernel counted differently per round
        last: dict[str, int] = per[-1] if per else {}
        reports.append(StrategyReport(
            name=s, kernel_ns_per_lookup=statistics.median(ns) if ns else 0.0,
            kernel_lookups=lookups, kernel_strcmp=strcmp,
            model_lookups=model[s][0], model_strcmp=model[s][1],
            failures=sum(1 for f in g.failures if f.split()[1] == s),
            mismatches=final[s]["mismatches"], fallbacks=sum(d["fallbacks"] for d in per),
            resolution_share=total_ns / load_ns if load_ns else 0.0,
            ns_per_lookup_rounds=ns,
            update_ns_per_load=update / loads if loads else 0.0,
            load_cost_ns=(total_ns + update) / loads if loads else 0.0,
            vmlinux_bytes=final[s]["vmlinux_bytes"], module_bytes=loaded[s]["module_bytes"],
            memory_bytes=final.get("global_peak_bytes", {}).get("value", 0)
            if s == "global" else final[s]["vmlinux_bytes"] + loaded[s]["module_bytes"],
            kernel_chain_steps=last.get("chain_steps", 0), model_chain_steps=model[s][2],
            kernel_bloom_rejections=last.get("bloom_rejections", 0),
            model_bloom_rejections=model[s][3], kernel_hashes=last.get("hashes", 0)))
    base = {r.name: r.kernel_ns_per_lookup for r in reports}
    for r in reports:
        if r.kernel_ns_per_lookup:
            r.vs_linear = base["linear"] / r.kernel_ns_per_lookup
            r.vs_bsearch = base["bsearch"] / r.kernel_ns_per_lookup
    report = KernelReport(build.release, len(g.list), int(build.info["vmlinux_exports"]),
                          rounds, reports, g.noload, g.stuck, guest.seconds,
                          refusals(g.dmesg), clock_ns, clock)
    if json_path:
        atomic_write(Path(json_path), json.dumps(report.to_json(), indent=1).encode())
    return report

