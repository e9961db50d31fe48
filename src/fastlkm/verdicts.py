"""``fastlkm resolve`` and ``fastlkm check``: modules loaded into the loader model as the
kernel would load them, and what the kernel would say, as text and as JSON."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import IO

from fastlkm.errors import EXIT_FAIL, EXIT_SKIPPED, UsageError, warn_skipped
from fastlkm.loader.loader import Loader, LoadResult
from fastlkm.target import System, open_system


@dataclass
class Resolution:
    """The modules of a system loaded with their dependencies, one result per load."""

    system: System
    results: list[LoadResult]

    @property
    def failed(self) -> list[LoadResult]:
        return [r for r in self.results if not r.ok]

    @property
    def failures_by_kind(self) -> Counter[str]:
        return Counter(m.kind for r in self.results for m in r.failures)

    @property
    def status(self) -> int:
        """0, EXIT_FAIL (a module would not load) or EXIT_SKIPPED (files were skipped)."""
        if self.system.errors:
            return EXIT_SKIPPED
        return EXIT_FAIL if self.failed else 0

    def summary(self) -> dict[str, object]:
        kernel = self.system.kernel
        return {
            "kernel": kernel.release,
            "origin": self.system.origin,
            "exports_source": kernel.source,
            "modules": len(self.results),
            "loaded": len(self.results) - len(self.failed),
            "failed": len(self.failed),
            "lookups": sum(r.lookups for r in self.results),
            "resolved": sum(r.resolved for r in self.results),
            "failures_by_kind": dict(self.failures_by_kind),
            "unreadable": len(self.system.errors),
        }

    def as_dict(self) -> dict[str, object]:
        """The ``--json`` document."""
        return {
            "summary": self.summary(),
            "notes": self.system.notes,
            "errors": [str(e) for e in self.system.errors],
            "modules": [{"name": r.module, "path": r.path, "ok": r.ok, "err": r.err,
                         "lookups": r.lookups, "resolved": r.resolved,
                         "messages": [{"text": m.text, "kind": m.kind, "symbol": m.symbol,
                                       "error": m.error} for m in r.messages]}
                        for r in self.results],
        }

    def write(self, out: IO[str], err: IO[str], as_json: bool = False) -> None:
        """The kernel's lines and the summary on *out*, notes and skipped files on *err*;
        or the JSON document on *out*."""
        if as_json:
            _write_json(self.as_dict(), out)
            return
        for n in self.system.notes:
            err.write(f"fastlkm: {n}\n")
        warn_skipped(self.system.errors, err)
        for r in self.results:
            for m in r.messages:
                out.write(m.text + "\n")
        s = self.summary()
        out.write(f"kernel {s['kernel']} ({self.system.origin}); exports from "
                  f"{self.system.kernel.source}\n")
        out.write(f"modules {s['modules']}  loaded {s['loaded']}  failed {s['failed']}  "
                  f"lookups {s['lookups']}  resolved {s['resolved']}\n")
        kinds = self.failures_by_kind
        if kinds:
            out.write("failures by kind: "
                      + ", ".join(f"{k} {v}" for k, v in kinds.most_common()) + "\n")


def resolve(target: str | None, modules: list[str] | None = None, source: str | None = None,
            jobs: int | None = None, compare: bool = False) -> Resolution:
    """Load *modules* (default: all) of *target* (what :func:`open_system` takes) with
    their dependencies."""
    system = open_system(target, source=source, jobs=jobs, compare=compare)
    wanted = list(modules) if modules else None
    if wanted:
        missing = [n for n in wanted if system.module(n) is None]
        if missing:
            raise UsageError(f"no such module in {system.origin}: {', '.join(missing)}")
    return Resolution(system, Loader(system.kernel).modprobe(system.modules, wanted))


@dataclass
class Check:
    """One module file loaded on a kernel after the dependencies it needs."""

    path: str
    system: System
    results: list[LoadResult]    # the dependencies', then the module's

    @property
    def status(self) -> int:
        if self.system.errors:
            return EXIT_SKIPPED
        return 0 if self.results[-1].ok else EXIT_FAIL

    def as_dict(self) -> dict[str, object]:
        final = self.results[-1]
        return {"module": self.path, "kernel": self.system.kernel.release, "loads": final.ok,
                "err": final.err, "dependencies": [r.module for r in self.results[:-1]],
                "messages": [m.text for r in self.results for m in r.messages]}

    def write(self, out: IO[str], err: IO[str], as_json: bool = False) -> None:
        if as_json:
            _write_json(self.as_dict(), out)
            return
        warn_skipped(self.system.errors, err)
        for r in self.results:
            for m in r.messages:
                out.write(m.text + "\n")
        final, deps = self.results[-1], self.results[:-1]
        verdict = "would load" if final.ok else f"would NOT load (err {final.err})"
        dep_s = f" after {', '.join(r.module for r in deps)}" if deps else ""
        out.write(f"{final.module}: {verdict} on {self.system.kernel.release}{dep_s}\n")


def check(module: str, kernel: str | None, source: str | None = None,
          jobs: int | None = None) -> Check:
    """Would the module file *module* load on *kernel* (what :func:`open_system` takes)?"""
    from fastlkm.kernel.module import read_module

    mod = read_module(module)
    system = open_system(kernel, source=source, jobs=jobs)
    others = [m for m in system.modules if m.name != mod.name]
    return Check(module, system, Loader(system.kernel).modprobe([*others, mod], [mod.name]))


def _write_json(doc: dict[str, object], out: IO[str]) -> None:
    json.dump(doc, out, indent=1)
    out.write("\n")
