"""The speed/memory trade-off at a glance: one point per strategy, memory added per
export against time per lookup (log scale), with the 2009 claim marked."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastlkm.bench.run import BenchResult


def plot(results: list[BenchResult], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 5), squeeze=False)
    for ax, b in zip(axes[0], results, strict=True):
        timed = [r for r in b.strategies if r.ns_per_lookup]
        use_time = bool(timed)
        pts = timed if use_time else b.strategies
        for r in pts:
            y = r.ns_per_lookup if use_time else max(1, r.counters["bytes_compared"]) / r.lookups
            ax.scatter(r.memory_per_export, y, s=60, zorder=3)
            ax.annotate(r.name, (r.memory_per_export, y), textcoords="offset points",
                        xytext=(6, 4), fontsize=9)
        lin = next((r for r in pts if r.name == "linear"), None)
        if lin is not None and use_time and lin.ns_per_lookup:
            target = lin.ns_per_lookup * 0.04
            ax.axhline(target, ls="--", lw=1, color="grey")
            ax.text(ax.get_xlim()[1], target, " 2009 claim: 96% less than linear",
                    va="bottom", ha="right", fontsize=8, color="grey")
        ax.set_yscale("log")
        ax.set_xlabel("memory added per export (bytes)")
        ax.set_ylabel("ns per lookup (native)" if use_time else "bytes compared per lookup")
        ax.set_title(f"{b.kernel}: {b.scenario}\n{b.lookups:,} lookups, {b.modules_loaded} "
                     f"modules", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
