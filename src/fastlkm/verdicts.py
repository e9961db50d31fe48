"""``fastlkm resolve`` and ``fastlkm check``: modules loaded into the loader model as the
kernel would load them, and what the kernel would say, as text and as JSON."""

from __future__ import annotations

import errno
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from cryptography.hazmat.primitives import serialization

from fastlkm.depmod.probe import probe_order
from fastlkm.elf.structs import ELFMAG
from fastlkm.errors import EXIT_FAIL, EXIT_SKIPPED, FastlkmError, UsageError, warn_skipped
from fastlkm.kernel.facts import Module
from fastlkm.kernel.signature import SigCheck
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
    loader = Loader(system.kernel)
    return Resolution(system, [loader.load(m) for m in
                               probe_order(system.modules, system.order, wanted)])


@dataclass
class Check:
    """One module file loaded on one kernel after the dependencies it needs."""

    path: str
    system: System
    results: list[LoadResult]    # the dependencies', then the module's
    notes: list[str]             # fastlkm's explanations

    @property
    def final(self) -> LoadResult:
        return self.results[-1]

    @property
    def status(self) -> int:
        if self.system.errors:
            return EXIT_SKIPPED
        return 0 if self.final.ok else EXIT_FAIL

    def verdict(self) -> str:
        final, deps = self.final, self.results[:-1]
        if final.ok:
            verdict = "would load"
        else:
            verdict = f"would NOT load (err {final.err}{_errno_name(final.err)})"
        dep_s = f" after {', '.join(r.module for r in deps)}" if deps else ""
        return f"{final.module}: {verdict} on {self.system.kernel.release}{dep_s}"

    def as_dict(self) -> dict[str, object]:
        final = self.final
        sig = final.sig
        return {"module": self.path, "kernel": self.system.kernel.release,
                "origin": self.system.origin,
                "verdict": "loads" if final.ok else "refused", "loads": final.ok,
                "err": final.err, "error": _errno_name(final.err).strip(" ,") or None,
                "dependencies": [r.module for r in self.results[:-1]],
                "kernel_lines": [m.text for r in self.results for m in r.messages],
                "messages": [m.text for r in self.results for m in r.messages],
                "notes": self.notes,
                "signature": sig.as_dict() if sig is not None else None}

    def write(self, out: IO[str], err: IO[str], as_json: bool = False) -> None:
        if as_json:
            _write_json(self.as_dict(), out)
            return
        warn_skipped(self.system.errors, err)
        for r in self.results:
            for m in r.messages:
                out.write(m.text + "\n")
        for n in self.notes:
            out.write(f"fastlkm: {n}\n")
        out.write(self.verdict() + "\n")


@dataclass
class Checks:
    """One module file on several kernels."""

    checks: list[Check]

    @property
    def status(self) -> int:
        statuses = [c.status for c in self.checks]
        if EXIT_SKIPPED in statuses:
            return EXIT_SKIPPED
        return EXIT_FAIL if EXIT_FAIL in statuses else 0

    def write(self, out: IO[str], err: IO[str], as_json: bool = False,
              table: bool = False) -> None:
        if len(self.checks) == 1:
            self.checks[0].write(out, err, as_json)
            return
        if as_json:
            json.dump([c.as_dict() for c in self.checks], out, indent=1)
            out.write("\n")
            return
        for i, c in enumerate(self.checks):
            if i:
                out.write("\n")
            c.write(out, err)
        if table:
            rows = [(c.system.kernel.release, "loads" if c.final.ok else "refused",
                     str(c.final.err), next((m.text for m in c.final.failures), ""))
                    for c in self.checks]
            heads = ("kernel", "verdict", "err", "first refusal")
            widths = [max(len(x) for x in col) for col in zip(heads, *rows, strict=False)]
            out.write("\n")
            for row in (heads, *rows):
                out.write("  ".join(x.ljust(w) for x, w in zip(row, widths, strict=True))
                          .rstrip() + "\n")


def _errno_name(err: int) -> str:
    name = errno.errorcode.get(-err) if err < 0 else None
    return f", {name}" if name else ""


def read_keys(paths: list[str]) -> list[bytes]:
    """The X.509 certificates (PEM, one or several, or DER) of the files *paths*, DER."""
    from cryptography import x509

    out: list[bytes] = []
    for p in paths:
        try:
            data = Path(p).read_bytes()
        except OSError as e:
            raise UsageError(f"cannot read the key: {e.strerror}", p) from None
        try:
            if b"-----BEGIN CERTIFICATE-----" in data:
                certs = x509.load_pem_x509_certificates(data)
            else:
                certs = [x509.load_der_x509_certificate(data)]
        except ValueError:
            raise UsageError("not an X.509 certificate (PEM or DER)", p) from None
        out.extend(c.public_bytes(serialization.Encoding.DER) for c in certs)
    return out


def check(module: str, kernel: str | None, source: str | None = None,
          jobs: int | None = None, sig_enforce: bool = False,
          keys: list[str] | None = None) -> Check:
    """Would the module file *module* load on *kernel* (what :func:`open_system` takes)?"""
    return check_many(module, [kernel], source, jobs, sig_enforce, keys).checks[0]


def check_many(module: str, kernels: list[str | None], source: str | None = None,
               jobs: int | None = None, sig_enforce: bool = False,
               keys: list[str] | None = None) -> Checks:
    """Would the module file *module* load on each of *kernels*?  *sig_enforce* as a
    kernel booted with module.sig_enforce=1; *keys*: certificate files the kernel would
    also trust (MOK, the platform keyring: not readable offline)."""
    from fastlkm.io.codecs import decompress_file
    from fastlkm.kernel.module import parse_module
    from fastlkm.kernel.signature import verify_module

    extra = read_keys(keys or [])
    try:
        data = decompress_file(module)
    except FastlkmError as e:
        raise e.with_path(module) from None
    try:
        mod, unreadable = parse_module(data, module), None
    except FastlkmError as e:
        # what a kernel refuses before it reads the module is that kernel's verdict;
        # a module it would read and fastlkm cannot is an error
        mod, unreadable = None, e.with_path(module)
        if not data.startswith(ELFMAG):
            raise unreadable from None    # no ELF image at all: no kernel to ask
    checks = []
    for k in kernels:
        system = open_system(k, source=source, jobs=jobs)
        certs = (*system.kernel.certificates, *extra)
        sig = verify_module(data, certs)
        loader = Loader(system.kernel, sig_enforce=sig_enforce)
        problem = loader.image_problem(data)
        if problem is not None:
            checks.append(Check(module, system, [loader.refuse_image(module, sig, problem)],
                                _sig_notes(system, loader, sig, len(extra))))
            continue
        if unreadable is not None:
            raise unreadable
        others = [m for m in system.modules if m.name != mod.name]
        results = [loader.load(m, sig if m is mod else None)
                   for m in probe_order([*others, mod], system.order, [mod.name])]
        checks.append(Check(module, system, results, _notes(system, loader, mod, sig,
                                                             len(extra))))
    return Checks(checks)


def _sig_notes(system: System, loader: Loader, sig: SigCheck, extra: int) -> list[str]:
    """fastlkm's explanation of the signature check."""
    k = system.kernel
    if not loader.module_sig:
        return ["the kernel checks no module signatures (CONFIG_MODULE_SIG unset or "
                "unknown)"]
    keys = (f"{len(k.certificates)} key(s) built into vmlinux" if k.certificates else
            "no key built into vmlinux known (none found, or a snapshot written "
            "without them)") + (f" and {extra} given with --key" if extra else "")
    enforced = "enforced" if loader.sig_enforce else "not enforced"
    if sig.ok:
        return [f"signature verified by {sig.key} ({keys}; {enforced})"]
    return [f"signature: {sig.why} ({keys}; {enforced})"]


def _notes(system: System, loader: Loader, mod: Module, sig: SigCheck, extra: int
           ) -> list[str]:
    """fastlkm's explanations of what the kernel says (or does not say)."""
    k = system.kernel
    notes = _sig_notes(system, loader, sig, extra)
    if k.struct_module_size is None:
        notes.append("the kernel's struct module size is unknown (no module of its own "
                     "says it): .gnu.linkonce.this_module not compared")
    elif mod.this_module is not None and mod.this_module.size != k.struct_module_size:
        notes.append(f"this module's struct module is {mod.this_module.size:#x} bytes, the "
                     f"kernel's {k.struct_module_size:#x}: it was built for another kernel")
    magic = mod.info1("vermagic")
    if magic and k.vermagic and magic.split(" ", 1)[0] != k.vermagic.split(" ", 1)[0]:
        notes.append(f"built for {magic.split(' ', 1)[0]}, the kernel is "
                     f"{k.vermagic.split(' ', 1)[0]}")
    retpoline = any(k.config.get(c) == "y" for c in ("CONFIG_RETPOLINE",
                                                      "CONFIG_MITIGATION_RETPOLINE"))
    if retpoline and mod.info1("retpoline") is None:
        notes.append(f"{mod.name} was not built with retpolines: on a CPU that uses them the "
                     f"kernel also prints '{mod.name}: loading module not compiled with "
                     "retpoline compiler.'")
    return notes


def _write_json(doc: dict[str, object], out: IO[str]) -> None:
    json.dump(doc, out, indent=1)
    out.write("\n")
