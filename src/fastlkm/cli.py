"""The ``fastlkm`` command: parses arguments, calls the library, prints.  No logic here.

Errors the library raises on purpose print one line, ``fastlkm: error: ...``, and exit
with status 2; ``--debug`` shows the traceback instead.  A file of a tree that cannot be
read (or is no regular file, or a symlink loop) prints ``fastlkm: warning: PATH: why;
skipped``, the rest is processed, and the status is 3.
"""

from __future__ import annotations

import argparse
import sys

from fastlkm import __version__
from fastlkm.errors import FastlkmError, UsageError

# the keys of fastlkm.embedded.codec.STORABLE (a test keeps them equal), named here so
# that building the parser imports nothing
HASH_STYLES = ("bsearch", "sysv", "sysv-djb", "gnu", "perfect")
COMMANDS = ("resolve", "check", "depmod", "bench", "hash", "verify", "snapshot")

EXIT_FAIL = 1     # a module would not load (depmod: a dependency cycle, as kmod's)
EXIT_ERROR = 2    # bad input or usage
EXIT_SKIPPED = 3  # some files were skipped (each named on stderr), the rest processed

EXIT_STATUS_HELP = """exit status: 0 success; 1 a module would not load, verify found problems,
or (depmod) a dependency cycle; 2 bad input or usage, nothing done; 3 some files were
skipped (unreadable, malformed, not regular files, symlink loops: each named in a
'fastlkm: warning:' line) and the rest processed -- 3 wins over 1."""


def _out(s: str = "") -> None:
    sys.stdout.write(s + "\n")


def _note(s: str) -> None:
    sys.stderr.write(f"fastlkm: {s}\n")


def _skipped(errors: list[FastlkmError]) -> None:
    for e in errors:
        _note(f"warning: {e}; skipped")


# --- resolve --------------------------------------------------------------------------


def cmd_resolve(a: argparse.Namespace) -> int:
    from fastlkm.loader.loader import Loader, load_order
    from fastlkm.target import open_system

    target, names = a.target, list(a.modules)
    system = open_system(target, source=a.source, jobs=a.jobs, compare=a.compare)
    wanted = names or None
    if wanted:
        missing = [n for n in wanted if system.module(n) is None]
        if missing:
            raise UsageError(f"no such module in {system.origin}: {', '.join(missing)}")
    loader = Loader(system.kernel)
    results = [loader.load(m) for m in load_order(system.modules, wanted, system.kernel)]
    from collections import Counter

    kinds = Counter(m.kind for r in results for m in r.failures)
    failed = [r for r in results if not r.ok]
    summary = {
        "kernel": system.kernel.release,
        "origin": system.origin,
        "exports_source": system.kernel.source,
        "modules": len(results),
        "loaded": len(results) - len(failed),
        "failed": len(failed),
        "lookups": sum(r.lookups for r in results),
        "resolved": sum(r.resolved for r in results),
        "failures_by_kind": dict(kinds),
        "unreadable": len(system.errors),
    }
    if a.json:
        doc = {
            "summary": summary,
            "notes": system.notes,
            "errors": [str(e) for e in system.errors],
            "modules": [{"name": r.module, "path": r.path, "ok": r.ok, "err": r.err,
                         "lookups": r.lookups, "resolved": r.resolved,
                         "messages": [{"text": m.text, "kind": m.kind, "symbol": m.symbol,
                                       "error": m.error} for m in r.messages]}
                        for r in results],
        }
        import json

        json.dump(doc, sys.stdout, indent=1)
        _out()
    else:
        for n in system.notes:
            _note(n)
        _skipped(system.errors)
        for r in results:
            for m in r.messages:
                _out(m.text)
        _out(f"kernel {summary['kernel']} ({system.origin}); exports from "
             f"{system.kernel.source}")
        _out(f"modules {summary['modules']}  loaded {summary['loaded']}  failed "
             f"{summary['failed']}  lookups {summary['lookups']}  resolved "
             f"{summary['resolved']}")
        if kinds:
            _out("failures by kind: " + ", ".join(f"{k} {v}" for k, v in kinds.most_common()))
    if system.errors:
        return EXIT_SKIPPED
    return EXIT_FAIL if failed else 0


# --- check ----------------------------------------------------------------------------


def cmd_check(a: argparse.Namespace) -> int:
    from fastlkm.kernel.module import read_module
    from fastlkm.loader.loader import Loader, load_order
    from fastlkm.target import open_system

    mod = read_module(a.module)
    system = open_system(a.kernel, source=a.source, jobs=a.jobs)
    others = [m for m in system.modules if m.name != mod.name]
    loader = Loader(system.kernel)
    plan = load_order([*others, mod], [mod.name], system.kernel)
    results = [loader.load(m) for m in plan]
    final = results[-1]
    deps = results[:-1]
    if a.json:
        import json

        json.dump({"module": a.module, "kernel": system.kernel.release, "loads": final.ok,
                   "err": final.err, "dependencies": [r.module for r in deps],
                   "messages": [m.text for r in results for m in r.messages]},
                  sys.stdout, indent=1)
        _out()
    else:
        _skipped(system.errors)
        for r in results:
            for m in r.messages:
                _out(m.text)
        verdict = "would load" if final.ok else f"would NOT load (err {final.err})"
        dep_s = f" after {', '.join(r.module for r in deps)}" if deps else ""
        _out(f"{final.module}: {verdict} on {system.kernel.release}{dep_s}")
    if system.errors:
        return EXIT_SKIPPED
    return 0 if final.ok else EXIT_FAIL


# --- depmod ---------------------------------------------------------------------------


def cmd_depmod(a: argparse.Namespace) -> int:
    from fastlkm.depmod.run import DepmodOptions, depmod

    return depmod(DepmodOptions(a.basedir, a.version, a.output, a.show, a.quick, a.errsyms,
                                a.filesyms, a.symvers, a.warn, a.config, a.kmod_compat,
                                a.no_cache, a.jobs))


# --- snapshot -------------------------------------------------------------------------


def cmd_snapshot(a: argparse.Namespace) -> int:
    from fastlkm.snapshot import save
    from fastlkm.target import open_system, to_snapshot

    system = open_system(a.target, source=a.source, jobs=a.jobs)
    _skipped(system.errors)
    size = save(to_snapshot(system), a.output)
    _note(f"{a.output}: {len(system.modules)} modules, {len(system.kernel.exports)} kernel "
          f"exports, {size} bytes")
    return EXIT_SKIPPED if system.errors else 0


# --- bench ----------------------------------------------------------------------------


def cmd_bench(a: argparse.Namespace) -> int:
    from fastlkm.bench.report import print_report, write_json
    from fastlkm.bench.run import run_bench
    from fastlkm.lookup import native
    from fastlkm.target import open_system

    tty = sys.stderr.isatty()
    status = None
    if tty:
        from rich.console import Console

        status = Console(stderr=True).status("opening the kernel")
        status.start()

    def progress(msg: str) -> None:
        if status is not None:
            status.update(msg)

    try:
        system = open_system(a.target, source=a.source, jobs=a.jobs)
        strategies = [s for x in a.strategies for s in x.split(",") if s] if a.strategies \
            else None
        results = []
        for scenario in a.scenario.split(","):
            progress(f"recording scenario {scenario}")
            results.append(run_bench(system, scenario, strategies, repeats=a.repeats,
                                     use_native=not a.python, embedded=a.embedded,
                                     progress=progress))
    finally:
        if status is not None:
            status.stop()
    if not native.available() and not a.python:
        _note("the native engine is not built: counts only, timings are absent")
    for i, b in enumerate(results):
        if i:
            _out()
        print_report(b, sys.stdout, rich=sys.stdout.isatty())
    if a.json:
        with open(a.json, "w") as f:
            if len(results) == 1:
                write_json(results[0], f)
            else:
                import json

                json.dump([b.as_dict() for b in results], f, indent=1)
    if a.plot:
        from fastlkm.bench.plot import plot

        plot(results, a.plot)
    return 0


# --- hash and verify ------------------------------------------------------------------


def cmd_hash(a: argparse.Namespace) -> int:
    from fastlkm.embedded.postprocess import HashOptions, hash_paths

    opts = HashOptions(a.style, a.sort, a.undef_hash, a.strip_signature, a.sign_key,
                       a.sign_cert, a.sign_hash)
    outcomes, errors = hash_paths(a.paths, opts, a.output, a.jobs)
    for o in outcomes:
        for n in o.notes:
            if a.verbose or not n.startswith(("signature stripped", "signed")):
                _note(f"{o.path}: {n}")
        if a.verbose and o.changed:
            moved = f", sorted {' '.join(o.sorted)}" if o.sorted else ""
            _note(f"{o.path}: {o.tables} tables{moved}")
    _skipped(errors)
    changed = sum(o.changed for o in outcomes)
    _note(f"{len(outcomes) + len(errors)} files: {changed} changed, "
          f"{len(outcomes) - changed} unchanged, {len(errors)} skipped")
    if errors:
        return EXIT_SKIPPED if outcomes else EXIT_ERROR   # nothing processed: bad input
    return 0


def cmd_verify(a: argparse.Namespace) -> int:
    from fastlkm.embedded.postprocess import NOT_PROCESSED, verify_paths

    checked, errors = verify_paths(a.paths, a.jobs)
    bad = todo = 0
    for path, problems in checked:
        todo += problems == [NOT_PROCESSED]
        bad += bool(problems) and problems != [NOT_PROCESSED]
        for p in problems:
            _out(f"{path}: {p}")
    _skipped(errors)
    _note(f"{len(checked)} files checked: {bad} with problems, {todo} not processed, "
          f"{len(errors)} unreadable")
    if errors:
        return EXIT_SKIPPED if checked else EXIT_ERROR   # nothing checked: bad input
    return EXIT_FAIL if bad or todo else 0


# --- main -----------------------------------------------------------------------------


def parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The command line; given *argv*, only the command it names gets its arguments
    (building all of them costs a warm depmod run a few percent of its time)."""
    p = argparse.ArgumentParser(prog="fastlkm", description="Fast symbol resolution for "
                                "Linux loadable kernel modules.", epilog=EXIT_STATUS_HELP)
    p.add_argument("--version", action="version", version=f"fastlkm {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--max-decompressed", metavar="SIZE", type=_size, default=None,
                   help="refuse a compressed module or kernel image that decodes to more "
                        "than SIZE bytes (64M, 1G, ...; default 1G)")
    sub = p.add_subparsers(dest="cmd", required=True)
    words = sys.argv[1:] if argv is None else argv
    chosen = next((w for w in words if w in COMMANDS), None)

    def command(name: str, **kw: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, **kw)
        return sp if chosen in (None, name) else _Unbuilt(sp)  # type: ignore[return-value]

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("-j", "--jobs", type=int, default=None,
                        help="processes reading modules (default: all cores)")
        sp.add_argument("--source", choices=["vmlinux", "vmlinuz", "System.map",
                                             "Module.symvers"],
                        help="where the kernel's own exports come from (default: best "
                             "available)")

    r = command("resolve", help="load modules as the kernel would and report")
    r.add_argument("target", nargs="?", help="ROOT, modules directory, RELEASE or SNAPSHOT "
                   "(default: running kernel, else the shipped snapshot)")
    r.add_argument("modules", nargs="*", help="modules to load with their dependencies "
                   "(default: all)")
    r.add_argument("--json", action="store_true")
    r.add_argument("--compare", action="store_true",
                   help="also read the other sources of the kernel's exports and say where "
                        "they disagree")
    common(r)
    r.set_defaults(func=cmd_resolve)

    c = command("check", help="would this module load on that kernel?")
    c.add_argument("module")
    c.add_argument("--kernel", default=None, help="ROOT, RELEASE or SNAPSHOT")
    c.add_argument("--json", action="store_true")
    common(c)
    c.set_defaults(func=cmd_check)

    d = command("depmod", help="write modules.dep and modules.symbols as kmod does")
    d.add_argument("-b", "--basedir", default=None, help="root of the module tree")
    d.add_argument("version", nargs="?", default=None,
                   help="kernel release (or a snapshot file)")
    d.add_argument("-o", "--output", default=None, help="write here instead of in place")
    d.add_argument("-n", "--show", action="store_true", help="write to standard output")
    d.add_argument("-a", "--all", action="store_true", help="probe all modules (the default)")
    d.add_argument("-A", "--quick", action="store_true",
                   help="do nothing when no module is newer than modules.dep")
    d.add_argument("-e", "--errsyms", action="store_true",
                   help="report symbols no module or kernel supplies (needs -F or -E)")
    d.add_argument("-F", "--filesyms", metavar="System.map",
                   help="the kernel's symbols, from its System.map")
    d.add_argument("-E", "--symvers", metavar="Module.symvers",
                   help="the kernel's symbols and CRCs, from Module.symvers")
    d.add_argument("-w", "--warn", action="store_true", help="warn on duplicates")
    d.add_argument("--no-cache", action="store_true",
                   help="neither use nor update the cache of module facts and outputs "
                        "($XDG_CACHE_HOME/fastlkm)")
    d.add_argument("-C", "--config", action="append",
                   help="read depmod.d configuration from this file or directory")
    d.add_argument("--kmod-compat", nargs="?", const="34", choices=["30", "34"],
                   help="reproduce the bytes of kmod 30 or 34 (default 34), kmod's known "
                        "errors included; without it: kmod 34's index layout, without "
                        "kmod's errors (docs/deviations.md)")
    d.add_argument("-j", "--jobs", type=int, default=None)
    d.set_defaults(func=cmd_depmod)

    b = command("bench", help="time every lookup strategy on the loader's lookups")
    b.add_argument("target", nargs="?", help="ROOT, RELEASE or SNAPSHOT (default: running "
                   "kernel, else the shipped snapshot)")
    b.add_argument("--scenario", default="boot",
                   help="all (every module), boot (the shipped desktop-like list), or a file "
                        "of module names or lsmod output; several separated by commas "
                        "(default: boot)")
    b.add_argument("--strategies", nargs="*", help="strategies to run (default: all)")
    b.add_argument("--repeats", type=int, default=5, help="timed repeats (median)")
    b.add_argument("--json", help="write the results as JSON here")
    b.add_argument("--plot", help="write the speed/memory plot here (PNG, SVG, PDF)")
    b.add_argument("--python", action="store_true",
                   help="use the pure-Python reference engine (counts only)")
    b.add_argument("--embedded", action="store_true",
                   help="a tree processed by fastlkm hash: read the modules' tables from "
                        "their embedded sections (give the --strategies of its style)")
    common(b)
    b.set_defaults(func=cmd_bench)

    h = command("hash", help="embed hash tables (and sort export tables) in modules "
                       "and vmlinux")
    h.add_argument("paths", nargs="+", metavar="PATH",
                   help="a module (any compression), a vmlinux, or a tree of modules")
    h.add_argument("--style", choices=HASH_STYLES, default="sysv",
                   help="the lookup layout to embed (default: sysv)")
    h.add_argument("--sort", action="store_true",
                   help="sort each export table of a module by name first")
    h.add_argument("--undef-hash", action="store_true",
                   help="add .undef.hash: the hashes of the undefined symbols")
    h.add_argument("--output", metavar="DIR",
                   help="write here (mirroring trees) instead of in place")
    h.add_argument("--strip-signature", action="store_true",
                   help="drop the signature of a signed module that changes")
    h.add_argument("--sign-key", metavar="KEY", help="sign changed modules with this "
                   "private key (PEM), as the kernel's sign-file does")
    h.add_argument("--sign-cert", metavar="CERT", help="the X.509 certificate of --sign-key")
    h.add_argument("--sign-hash", default="sha256", help="digest to sign (default: sha256)")
    h.add_argument("-v", "--verbose", action="store_true", help="a line per changed file")
    h.add_argument("-j", "--jobs", type=int, default=None,
                   help="processes (default: all cores)")
    h.set_defaults(func=cmd_hash)

    v = command("verify", help="check the hash tables fastlkm hash embedded")
    v.add_argument("paths", nargs="+", metavar="PATH", help="modules, vmlinux files or trees")
    v.add_argument("-j", "--jobs", type=int, default=None,
                   help="processes (default: all cores)")
    v.set_defaults(func=cmd_verify)

    s = command("snapshot", help="store a kernel's facts in one small file")
    s.add_argument("target", nargs="?")
    s.add_argument("-o", "--output", required=True)
    common(s)
    s.set_defaults(func=cmd_snapshot)
    return p


class _Unbuilt:
    """A subcommand that is not the one being run: listed in --help, no arguments."""

    def __init__(self, sp: argparse.ArgumentParser) -> None:
        self.set_defaults = sp.set_defaults

    def add_argument(self, *args: object, **kwargs: object) -> None:
        pass


def _size(text: str) -> int:
    from fastlkm.io.codecs import parse_size

    try:
        return parse_size(text)
    except UsageError as e:
        raise argparse.ArgumentTypeError(e.message) from None


def main(argv: list[str] | None = None) -> int:
    a = parser(argv).parse_args(argv)
    if not a.max_decompressed:
        return _run(a)
    from fastlkm.io.codecs import max_decompressed, set_max_decompressed

    # the cap holds for this command only (main() may be called again in one process)
    before = max_decompressed()
    set_max_decompressed(a.max_decompressed)
    try:
        return _run(a)
    finally:
        set_max_decompressed(before)


def _run(a: argparse.Namespace) -> int:
    try:
        return a.func(a)
    except FastlkmError as e:
        if a.debug:
            raise
        sys.stderr.write(f"fastlkm: error: {e}\n")
        return EXIT_ERROR
    except OSError as e:
        if a.debug:
            raise
        where = f"{e.filename}: " if e.filename else ""
        sys.stderr.write(f"fastlkm: error: {where}{e.strerror or e}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
