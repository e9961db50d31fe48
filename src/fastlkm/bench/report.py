"""The benchmark's report: a table for people (rich when on a terminal), JSON for
machines."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from fastlkm.bench.run import BenchResult


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:,.1f}x"


def _pct_less(speedup: float | None) -> str:
    return "-" if speedup is None else f"{100 * (1 - 1 / speedup):.1f}%"


def rows(b: BenchResult) -> list[list[str]]:
    out = []
    for r in b.strategies:
        c = r.counters
        ns = "-" if r.ns_per_lookup is None else f"{r.ns_per_lookup:,.1f}"
        total = "-" if r.ns_total is None else f"{r.ns_total / 1e6:,.2f}"
        upkeep = "-" if r.ns_update is None else f"{r.ns_update / 1e6:,.2f}"
        per_load = "-" if r.ns_per_load is None else f"{r.ns_per_load / 1e3:,.1f}"
        est = "~" if r.sampled > 1 else ""
        runs = [x / r.lookups for x in r.ns_runs] if r.lookups else []
        spread = f"{min(runs):,.0f}-{max(runs):,.0f}" if len(runs) > 1 else "-"
        ratio = r.vs_bsearch_runs
        vs_b = _x(r.vs_bsearch) if len(ratio) < 2 else \
            f"{_x(r.vs_bsearch)} ({min(ratio):.1f}-{max(ratio):.1f})"
        out.append([
            r.name, f"{r.lookups:,}", f"{est}{c['strcmp']:,}", f"{est}{c['bytes_compared']:,}",
            f"{c['hashes']:,}", f"{r.memory:,}", f"{r.undef_hash:,}", f"{r.memory_per_export:.2f}",
            f"{r.memory_pct:.1f}%", ns, spread, total, upkeep, per_load,
            _pct_less(r.vs_linear), _x(r.vs_linear), vs_b, r.claim,
        ])
    return out


HEADERS = ["strategy", "lookups", "strcmp", "bytes cmp", "hashes", "mem added B", "undef.hash B",
           "B/export", "% of tables", "ns/lookup", "rounds' spread", "total ms",
           "index upkeep ms",
           "us/load all-in", "less than linear", "vs linear", "vs bsearch", "2009 claim"]
# left-aligned columns: the strategy and the claim; "index upkeep" is inserting on load
# and removing on unload, "all-in" the lookups and the upkeep per module loaded; the
# times are the median of the rounds (strategies interleaved in each), the spread the
# least and most ns/lookup of a round, and beside "vs bsearch" the least and most ratio
# within one round
_LEFT = (0, len(HEADERS) - 1)


def header(b: BenchResult) -> list[str]:
    lines = [
        f"kernel {b.kernel} ({b.origin})",
        f"scenario {b.scenario}: {b.modules_loaded} modules loaded, {b.lookups:,} lookups, "
        f"{b.exports:,} exports in {b.tables:,} tables ({b.tables_size:,} bytes of tables)",
        f"engine {b.engine}; machine {b.machine}",
    ]
    if b.failures:
        lines.append(f"{b.failures} modules would fail to load (their lookups are counted)")
    if any(r.sampled > 1 for r in b.strategies):
        lines.append("~ counts from a sample of the lookups, scaled to all of them")
    return lines


def print_report(b: BenchResult, out: TextIO, rich: bool) -> None:
    if rich:
        from rich.console import Console
        from rich.table import Table

        console = Console(file=out)
        for line in header(b):
            console.print(line, highlight=False)
        t = Table(show_header=True, header_style="bold")
        for i, h in enumerate(HEADERS):
            t.add_column(h, justify="left" if i in _LEFT else "right")
        for r in rows(b):
            t.add_row(*r)
        console.print(t)
        return
    for line in header(b):
        out.write(line + "\n")
    table = [HEADERS, *rows(b)]
    widths = [max(len(r[i]) for r in table) for i in range(len(HEADERS))]
    for r in table:
        out.write("  ".join(c.ljust(w) if i in _LEFT else c.rjust(w)
                            for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()
                  + "\n")


def write_json(b: BenchResult, out: TextIO) -> None:
    json.dump(b.as_dict(), out, indent=1)
    out.write("\n")


def write_results_json(results: list[BenchResult], out: TextIO) -> None:
    """``--json``: one scenario's document, or a list of them."""
    if len(results) == 1:
        write_json(results[0], out)
    else:
        json.dump([b.as_dict() for b in results], out, indent=1)


def print_reports(results: list[BenchResult], out: TextIO, rich: bool) -> None:
    """Every scenario's report, a blank line between them."""
    for i, b in enumerate(results):
        if i:
            out.write("\n")
        print_report(b, out, rich)


@contextmanager
def progress_status(err: TextIO) -> Iterator[Callable[[str], None]]:
    """A progress callback: a rich status line on a terminal, nothing elsewhere."""
    if not err.isatty():
        yield lambda msg: None
        return
    from rich.console import Console

    status = Console(file=err).status("opening the kernel")
    status.start()
    try:
        yield status.update
    finally:
        status.stop()
