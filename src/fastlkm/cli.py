"""The ``fastlkm`` command: parses arguments and calls one library function per command,
which formats what is printed.  No logic here.

Errors the library raises on purpose print one line, ``fastlkm: error: ...``, and exit
with status 2; ``--debug`` shows the traceback instead.  A file of a tree that cannot be
read (or is no regular file, or a symlink loop) prints ``fastlkm: warning: PATH: why;
skipped``, the rest is processed, and the status is 3.
"""

from __future__ import annotations

import argparse
import os
import sys

from fastlkm import __version__
from fastlkm.errors import EXIT_ERROR, FastlkmError, UsageError

# the keys of fastlkm.embedded.codec.STORABLE (a test keeps them equal), named here so
# that building the parser imports nothing
HASH_STYLES = ("bsearch", "sysv", "sysv-djb", "gnu", "perfect", "all")
COMMANDS = ("resolve", "check", "depmod", "bench", "hash", "verify", "snapshot", "kernel")

EXIT_STATUS_HELP = """exit status: 0 success; 1 a module would not load, verify found problems,
or (depmod) a dependency cycle; 2 bad input or usage, nothing done; 3 some files were
skipped (unreadable, malformed, not regular files, symlink loops: each named in a
'fastlkm: warning:' line) and the rest processed -- 3 wins over 1."""


# --- one library function per command ----------------------------------------------------


def cmd_resolve(a: argparse.Namespace) -> int:
    from fastlkm.verdicts import resolve

    r = resolve(a.target, a.modules, source=a.source, jobs=a.jobs, compare=a.compare)
    r.write(sys.stdout, sys.stderr, as_json=a.json)
    return r.status


def cmd_check(a: argparse.Namespace) -> int:
    from fastlkm.verdicts import check_many

    c = check_many(a.module, a.kernel or [None], source=a.source, jobs=a.jobs,
                   sig_enforce=a.sig_enforce, keys=a.key)
    c.write(sys.stdout, sys.stderr, as_json=a.json, table=sys.stdout.isatty())
    return c.status


def cmd_depmod(a: argparse.Namespace) -> int:
    from fastlkm.depmod.run import DepmodOptions, depmod

    return depmod(DepmodOptions(
        basedir=a.basedir, version=a.version, into=a.into, show=a.show, quick=a.quick,
        errsyms=a.errsyms, filesyms=a.filesyms, symvers=a.symvers, warn=a.warn,
        config=a.config, kmod_compat=a.kmod_compat, no_cache=a.no_cache, jobs=a.jobs,
        moduledir=a.moduledir, outdir=a.outdir, symbol_prefix=a.symbol_prefix,
        verbose=a.verbose, all=a.all, files=a.files, sysroot=a.sysroot))


def cmd_snapshot(a: argparse.Namespace) -> int:
    from fastlkm.target import save_snapshot

    return save_snapshot(a.target, a.output, source=a.source, jobs=a.jobs, err=sys.stderr)


def cmd_bench(a: argparse.Namespace) -> int:
    from fastlkm.bench.report import print_reports, progress_status, write_results_json
    from fastlkm.bench.run import bench, engine_note

    with progress_status(sys.stderr) as progress:
        results = bench(a.target, a.scenario, a.strategies, repeats=a.repeats,
                        use_native=not a.python, embedded=a.embedded, source=a.source,
                        jobs=a.jobs, progress=progress, unload=a.unload)
    note = engine_note(use_native=not a.python)
    if note:
        sys.stderr.write(f"fastlkm: {note}\n")
    print_reports(results, sys.stdout, rich=sys.stdout.isatty())
    if a.json:
        with open(a.json, "w") as f:
            write_results_json(results, f)
    if a.plot:
        from fastlkm.bench.plot import plot

        plot(results, a.plot)
    return 0


# --- the patched kernel ---------------------------------------------------------------


def cmd_kernel_postlink(a: argparse.Namespace) -> int:
    from fastlkm.kbuild.postlink import fill_vmlinux

    sys.stderr.write(fill_vmlinux(a.vmlinux).text() + "\n")
    return 0


def cmd_kernel_build(a: argparse.Namespace) -> int:
    from fastlkm.kbuild.build import build_kernel

    b = build_kernel(force=a.force)
    print(b.summary())
    return 0


def cmd_kernel_bench(a: argparse.Namespace) -> int:
    from fastlkm.kbuild.bench import run_bench

    report = run_bench(rounds=a.rounds, json_path=a.json, clock=a.clock)
    print(report.text())
    return 0 if report.ok else 1


def cmd_hash(a: argparse.Namespace) -> int:
    from fastlkm.embedded.postprocess import HashOptions, hash_files

    opts = HashOptions(a.style, a.sort, a.undef_hash, a.strip_signature, a.sign_key,
                       a.sign_cert, a.sign_hash)
    run = hash_files(a.paths, opts, a.output, a.jobs)
    run.write(sys.stderr, verbose=a.verbose)
    return run.status


def cmd_verify(a: argparse.Namespace) -> int:
    from fastlkm.embedded.postprocess import verify_files

    run = verify_files(a.paths, a.jobs)
    run.write(sys.stdout, sys.stderr)
    return run.status


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
    c.add_argument("--kernel", action="append", default=None,
                   help="ROOT, RELEASE or SNAPSHOT; repeat it to ask several kernels")
    c.add_argument("--sig-enforce", action="store_true",
                   help="as a kernel booted with module.sig_enforce=1 (or under lockdown)")
    c.add_argument("--key", action="append", metavar="CERT",
                   help="an X.509 certificate the kernel also trusts (MOK, the platform "
                        "keyring); repeatable")
    c.add_argument("--json", action="store_true")
    common(c)
    c.set_defaults(func=cmd_check)

    # listed in the help; "fastlkm depmod ..." is parsed by depmod_parser() (main())
    command("depmod", help="kmod's depmod: modules.dep, the aliases, symbols and indexes "
            "(kmod 34's options; installed as 'depmod' it is depmod)")

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
    b.add_argument("--unload", action="store_true",
                   help="then unload every module, last first: the index upkeep includes "
                        "removals")
    common(b)
    b.set_defaults(func=cmd_bench)

    k = command("kernel", help="the fast loader inside a real kernel: build the patched "
                "Debian 6.12 kernel, fill its tables, measure it under QEMU")
    if not isinstance(k, _Unbuilt):
        ksub = k.add_subparsers(dest="kcmd", required=True)
        kp = ksub.add_parser("postlink", help="fill vmlinux's __ksymtab_htables (the "
                             "kernel build's KSYMHASH step)")
        kp.add_argument("vmlinux")
        kp.set_defaults(func=cmd_kernel_postlink)
        kb = ksub.add_parser("build", help="download Debian's linux-source-6.12, apply the "
                             "patch series, build and process the modules (cached)")
        kb.add_argument("--force", action="store_true", help="rebuild even when cached")
        kb.set_defaults(func=cmd_kernel_build)
        kq = ksub.add_parser("bench", help="boot the built kernel under QEMU and measure "
                             "every strategy in the kernel, beside the model's counts")
        kq.add_argument("--rounds", type=int, default=5,
                        help="rounds per strategy (default 5)")
        kq.add_argument("--json", metavar="FILE", help="write the report as JSON")
        kq.add_argument("--clock", choices=("icount", "host"), default="icount",
                        help="the guest's clock: instructions executed (icount, the "
                        "default: the same whatever the host's load) or the host's")
        kq.set_defaults(func=cmd_kernel_bench)

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


DEPMOD_USAGE = "%(prog)s -[aA] [options] [forced_version] [module files]"
DEPMOD_HELP = """If no arguments (except options) are given, "depmod -a" is assumed.  The
options are kmod 34's depmod's, with kmod's meaning (depmod(8)); fastlkm's own follow."""


def depmod_parser(prog: str = "fastlkm depmod") -> argparse.ArgumentParser:
    """kmod 34's depmod command line (tools/depmod.c: options anywhere, short and long
    forms), then fastlkm's own options."""
    d = argparse.ArgumentParser(prog=prog, usage=DEPMOD_USAGE, description=DEPMOD_HELP,
                                epilog=EXIT_STATUS_HELP)
    d.add_argument("version", nargs="?", default=None, metavar="forced_version",
                   help="kernel release (default: uname -r), or a fastlkm snapshot file")
    d.add_argument("files", nargs="*", metavar="module", help="absolute paths of module "
                   "files: only these, without -a")
    d.add_argument("-a", "--all", action="store_true", help="probe all modules")
    d.add_argument("-A", "--quick", action="store_true",
                   help="only does the work if there's a new module")
    d.add_argument("-e", "--errsyms", action="store_true", help="report not supplied "
                   "symbols (needs -F or -E)")
    d.add_argument("-n", "--show", "--dry-run", action="store_true",
                   help="write the dependency file on stdout only")
    d.add_argument("-P", "--symbol-prefix", metavar="CHAR",
                   help="architecture symbol prefix")
    d.add_argument("-C", "--config", action="append", metavar="PATH",
                   help="read configuration from PATH (a file or a directory; again for "
                        "more; default: /etc, /run, /usr/local/lib, /usr/lib and /lib's "
                        "depmod.d)")
    d.add_argument("-v", "--verbose", action="count", default=0, help="enable verbose mode")
    d.add_argument("-w", "--warn", action="store_true", help="warn on duplicates")
    d.add_argument("-V", "--version", action="version",
                   version=f"fastlkm version {__version__} (depmod of kmod 34)",
                   help="show version")
    g = d.add_argument_group("useful for people managing distributions")
    g.add_argument("-b", "--basedir", metavar="DIR", help="root path (default: /)")
    g.add_argument("-m", "--moduledir", metavar="DIR",
                   help="module directory, relative to the root (default: /lib/modules)")
    g.add_argument("-o", "--outdir", metavar="DIR",
                   help="output root path (default: same as basedir): the files go to "
                        "DIR/MODULEDIR/VERSION")
    g.add_argument("-F", "--filesyms", metavar="FILE",
                   help="use the file instead of the current kernel symbols (System.map)")
    g.add_argument("-E", "--symvers", metavar="FILE",
                   help="use Module.symvers file to check symbol versions")
    f = d.add_argument_group("fastlkm's own")
    f.add_argument("--into", metavar="DIR",
                   help="write the files into DIR itself instead of the modules directory")
    f.add_argument("--sysroot", metavar="DIR",
                   help="run as if chrooted into DIR: every absolute path (-b, -o, -C, "
                        "-F, -E, the configuration directories and depmod.d's external "
                        "directories) is taken inside DIR")
    f.add_argument("--kmod-compat", nargs="?", const="34", choices=["30", "34"],
                   help="reproduce the bytes of kmod 30 or 34 (default 34), kmod's known "
                        "errors included; without it: kmod 34's index layout, without "
                        "kmod's errors (docs/deviations.md)")
    f.add_argument("--no-cache", action="store_true",
                   help="neither use nor update the cache of module facts and outputs "
                        "($XDG_CACHE_HOME/fastlkm)")
    f.add_argument("-j", "--jobs", type=int, default=None,
                   help="threads reading modules (default: all cores)")
    f.add_argument("--debug", action="store_true", help="show tracebacks")
    f.add_argument("--max-decompressed", metavar="SIZE", type=_size, default=None,
                   help="refuse a module that decodes to more than SIZE bytes")
    d.set_defaults(func=cmd_depmod)
    return d


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


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """The ``fastlkm`` command; called by the name ``depmod`` (*prog*, default: the name
    it was run by, as kmod's multi-call binary), it is depmod."""
    words = sys.argv[1:] if argv is None else argv
    name = os.path.basename(prog if prog is not None else sys.argv[0])
    if name == "depmod":
        a = depmod_parser("depmod").parse_intermixed_args(words)
        a.prog = "depmod"
    else:
        chosen = next((w for w in words if w in COMMANDS), None)
        if chosen == "depmod":
            # what comes before the command word are fastlkm's options (--debug,
            # --max-decompressed), which depmod_parser() takes too
            i = words.index(chosen)
            a = depmod_parser().parse_intermixed_args(words[:i] + words[i + 1:])
        else:
            a = parser(argv).parse_args(argv)
        a.prog = "fastlkm"
    if not a.max_decompressed:
        return _run(a)
    from fastlkm.io.codecs import decompression_cap

    with decompression_cap(a.max_decompressed):   # for this command only
        return _run(a)


def _run(a: argparse.Namespace) -> int:
    try:
        return a.func(a)
    except FastlkmError as e:
        if a.debug:
            raise
        sys.stderr.write(f"{a.prog}: error: {e}\n")
        return EXIT_ERROR
    except BrokenPipeError:
        # the reader went away (``fastlkm resolve | head``): end quietly, as cat does;
        # stdout is pointed at /dev/null so the interpreter's final flush cannot fail
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as e:
        if a.debug:
            raise
        where = f"{e.filename}: " if e.filename else ""
        sys.stderr.write(f"{a.prog}: error: {where}{e.strerror or e}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
