"""``fastlkm hash`` and ``fastlkm verify``: the build-time post-processor, for binaries that
already exist.

Amoroso's fast loader needed its hash tables made at build time (a modpost step and a
post-link tool that filled them in); Jenkins' bsearch needed the export tables sorted at
build time.  :func:`process_image` does both to one ELF image (a module or a linked
vmlinux); :func:`process_file` adds what a file on disk needs around it (compression,
the appended signature, atomic writes); :func:`hash_paths` and :func:`verify_paths` run
over files and trees on every core.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from fastlkm.elf.reader import ElfFile
from fastlkm.elf.structs import ELFMAG, ET_DYN, ET_EXEC, ET_REL
from fastlkm.elf.writer import ElfWriter, NewSection
from fastlkm.embedded.build import hash_sections
from fastlkm.embedded.codec import MAGIC, STORABLE
from fastlkm.embedded.read import fastlkm_sections, verify_image
from fastlkm.errors import (
    EXIT_ERROR,
    EXIT_FAIL,
    EXIT_SKIPPED,
    FastlkmError,
    FormatError,
    NotFoundError,
    UsageError,
    result_or_error,
    warn_skipped,
)
from fastlkm.io.atomic import atomic_symlink, atomic_write, clean_temporaries
from fastlkm.io.codecs import compress, decompress, detect
from fastlkm.kernel.ksymtab import read_exports, table_entries
from fastlkm.kernel.modname import is_module_path
from fastlkm.kernel.signature import sign, split_signature
from fastlkm.kernel.sort import export_table_sections, sort_exports, sort_order
from fastlkm.lookup.strategies import STRATEGIES, Strategy

ALL_STYLES = "all"             # one record per storable style
STYLES = (*STORABLE, ALL_STYLES)
NOT_PROCESSED = "not processed by fastlkm hash (no embedded tables)"
RECOMPRESSED = ("xz", "zstd", "gzip")   # what the kernel's module decompressor reads


@dataclass(frozen=True)
class HashOptions:
    style: str = "sysv"
    sort: bool = False
    undef_hash: bool = False
    strip_signature: bool = False
    sign_key: str | None = None
    sign_cert: str | None = None
    sign_hash: str = "sha256"

    def strategies(self) -> Strategy | list[Strategy]:
        """The strategy to embed, or with style ``all`` every storable one (one record
        each: what the patched kernel switches between at run time)."""
        if self.style == ALL_STYLES:
            return [STRATEGIES[s] for s in STORABLE]
        return STRATEGIES[self.style]

    def check(self) -> None:
        if self.style == ALL_STYLES:
            pass
        elif self.style not in STORABLE:
            why = {"linear": "it needs no table", "global": "it is one index over every "
                   "loaded export, built as modules load"}.get(self.style, "unknown style")
            raise UsageError(f"style {self.style} cannot be embedded ({why}); styles: "
                             f"{', '.join(STYLES)}")
        if self.undef_hash and self.style != ALL_STYLES and \
                STRATEGIES[self.style].hash is None:
            raise UsageError(f"--undef-hash needs a style that hashes, not {self.style}")
        if (self.sign_key is None) != (self.sign_cert is None):
            raise UsageError("signing needs both --sign-key and --sign-cert")


@dataclass(frozen=True)
class Outcome:
    """What happened to one file."""

    path: str
    changed: bool
    kind: str = "module"                   # "module" or "vmlinux"
    sorted: tuple[str, ...] = ()           # tables reordered
    tables: int = 0                        # tables indexed
    warnings: tuple[str, ...] = ()         # what was left as it was, and why
    signature: str = ""                    # "signed", "signed again", "signature stripped"

    @property
    def notes(self) -> tuple[str, ...]:
        """The warnings, then what was done to the signature."""
        return (*self.warnings, self.signature) if self.signature else self.warnings


# --- one ELF image ----------------------------------------------------------------------


def _same(elf: ElfFile, want: list[NewSection]) -> bool:
    have = fastlkm_sections(elf)
    return len(have) == len(want) and all(
        (h.name, h.type, h.flags, h.addralign, elf.section_data(h))
        == (w.name, w.type, w.flags, w.addralign, w.data)
        for h, w in zip(have, want, strict=True))


def process_image(data: bytes, path: str, opts: HashOptions
                  ) -> tuple[bytes, Outcome]:
    """Sort (``opts.sort``, modules only) and embed the hash tables in one ELF image.

    The image comes back unchanged (the same object) when it already holds exactly what
    would be written: a second run changes nothing.  Sections written by an earlier run
    with other options are replaced."""
    if data[:4] != ELFMAG:
        if data[0x202:0x206] == b"HdrS" or data[:2] == b"MZ":
            raise FormatError("a compressed boot image (vmlinuz) cannot be written back; "
                              "process its vmlinux (scripts/extract-vmlinux)", path, 0)
        raise FormatError("not an ELF file (bad magic)", path, 0)
    elf = ElfFile(data, path)
    if elf.e_type not in (ET_REL, ET_EXEC, ET_DYN):
        raise elf.error(f"neither a module nor a kernel image (e_type {elf.e_type})", 16)
    module = elf.e_type == ET_REL
    notes: list[str] = []
    moved: list[str] = []
    if opts.sort and module:
        w = ElfWriter(elf)
        moved = sort_exports(elf, w)
        if moved:
            data = w.build()
            elf = ElfFile(data, path)
    elif opts.sort:
        for sec in export_table_sections(elf):
            names = [n for n, _ in table_entries(elf, sec)[1]]
            if sort_order(names) != list(range(len(names))):
                notes.append(f"{sec.name} is not sorted; a linked image is left as linked")
    exports = read_exports(elf)
    want = hash_sections(elf, exports, opts.strategies(), opts.undef_hash)
    kind = "module" if module else "vmlinux"
    tables = sum(1 for s in want if s.name.endswith(".htable"))
    if _same(elf, want):
        return data, Outcome(path, bool(moved), kind, tuple(moved), tables, tuple(notes))
    have = fastlkm_sections(elf)
    for s in have:
        if elf.section_data(s)[:4] != MAGIC:
            raise elf.error(f"{s.name} exists and was not written by fastlkm", s.offset)
    w = ElfWriter(elf)
    w.remove_sections([s.index for s in have])
    for s in want:
        w.add_section(s)
    return w.build(), Outcome(path, True, kind, tuple(moved), tables, tuple(notes))


# --- one file -----------------------------------------------------------------------------


def process_bytes(raw: bytes, path: str, opts: HashOptions) -> tuple[bytes, Outcome]:
    """What the file *raw* becomes: decompressed, its signature set aside, processed,
    signed again or not, compressed again in its own format."""
    fmt = detect(raw)
    if fmt is not None and fmt not in RECOMPRESSED:
        raise FormatError(f"{fmt}-compressed: cannot write it back (modules are compressed "
                          f"as {', '.join(RECOMPRESSED)})", path, 0)
    plain = decompress(raw, fmt, path=path) if fmt else raw
    body, trailer = split_signature(plain, path)
    new, outcome = process_image(body, path, opts)
    if not outcome.changed:
        return raw, outcome
    signature = ""
    module = outcome.kind == "module"
    if module and opts.sign_key is not None:
        assert opts.sign_cert is not None
        new = sign(new, opts.sign_key, opts.sign_cert, opts.sign_hash)
        signature = "signed again" if trailer else "signed"
    elif trailer:
        if not opts.strip_signature:
            raise FormatError("the module is signed (~Module signature appended~); changing "
                              "it voids the signature and the kernel refuses it: give "
                              "--strip-signature (it then loads with a taint) or "
                              "--sign-key and --sign-cert", path)
        signature = "signature stripped"
    out = compress(new, fmt) if fmt else new
    return out, Outcome(path, True, outcome.kind, outcome.sorted, outcome.tables,
                        outcome.warnings, signature)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise NotFoundError("no such file", path) from None
    except OSError as e:
        raise FastlkmError(e.strerror or str(e), path) from None


def process_file(src: str, dst: str | None, opts: HashOptions) -> Outcome:
    """Process the file *src* into *dst* (None: in place).  The write is atomic and keeps
    the file's mode; an unchanged file is not rewritten in place."""
    raw = _read(src)
    out, outcome = process_bytes(raw, src, opts)
    if dst is None and out is raw:
        return outcome
    target = Path(dst if dst is not None else src)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write(target, out, os.stat(src).st_mode & 0o7777)
    except OSError as e:
        raise FastlkmError(f"cannot write: {e.strerror or e}", str(target)) from None
    return outcome


# --- files and trees ----------------------------------------------------------------------


@dataclass
class Job:
    src: str
    dst: str | None
    size: int = 0


@dataclass
class Plan:
    jobs: list[Job] = field(default_factory=list)
    copies: list[tuple[str, str]] = field(default_factory=list)      # other files of trees
    links: list[tuple[str, str]] = field(default_factory=list)       # (target, link)
    dirs: list[str] = field(default_factory=list)
    skipped: list[FastlkmError] = field(default_factory=list)   # unreadable, not files


def _walk(root: str, skipped: list[FastlkmError]
          ) -> Iterator[tuple[str, list[str], list[str]]]:
    def unreadable(e: OSError) -> None:
        skipped.append(FastlkmError(f"cannot read directory: {e.strerror or e}", e.filename))

    for d, subdirs, files in os.walk(root, onerror=unreadable):
        subdirs.sort()
        yield d, subdirs, sorted(files)


def plan_paths(paths: Iterable[str], output: str | None = None) -> Plan:
    """The files to process (modules of a tree; a file named, whatever it is), and with
    *output* where each goes, plus what else a tree holds to copy beside them."""
    plan = Plan()
    for p in paths:
        if os.path.isdir(p):
            for d, subdirs, files in _walk(p, plan.skipped):
                rel = os.path.relpath(d, p)
                out_d = os.path.normpath(os.path.join(output, rel)) if output else None
                if out_d:
                    plan.dirs.append(out_d)
                for name in [*subdirs, *files]:
                    f = os.path.join(d, name)
                    if os.path.islink(f):
                        if out_d:
                            plan.links.append((os.readlink(f), os.path.join(out_d, name)))
                        continue
                    if name in subdirs:
                        continue
                    if is_module_path(name) and not os.path.isfile(f):
                        # a FIFO would block the read; a device is no module
                        plan.skipped.append(FastlkmError("not a regular file", f))
                    elif is_module_path(name):
                        plan.jobs.append(Job(f, os.path.join(out_d, name) if out_d else None,
                                             os.path.getsize(f)))
                    elif out_d:
                        plan.copies.append((f, os.path.join(out_d, name)))
        elif os.path.exists(p) and not os.path.isfile(p):
            plan.skipped.append(FastlkmError("not a regular file", p))
        elif os.path.exists(p):
            dst = os.path.join(output, os.path.basename(p)) if output else None
            plan.jobs.append(Job(p, dst, os.path.getsize(p)))
        else:
            raise NotFoundError("no such file or directory", p)
    return plan


def _copy(src: str, dst: str) -> None:
    d = os.path.dirname(dst)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(dst)}.", suffix=".tmp", dir=d)
    os.close(fd)
    try:
        shutil.copy2(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _hash_one(job: tuple[str, str | None, HashOptions]) -> Outcome | FastlkmError:
    src, dst, opts = job
    return result_or_error(lambda: process_file(src, dst, opts), src)


def _run(fn: Callable[[object], object], args: list[object], sizes: list[int],
         jobs: int | None) -> list[object]:
    """fn over args on every core, biggest first; results in the order of *args*."""
    jobs = jobs or os.cpu_count() or 1
    if jobs <= 1 or len(args) < 4:
        return [fn(a) for a in args]
    order = sorted(range(len(args)), key=lambda i: -sizes[i])
    results: list[object] = [None] * len(args)
    with ProcessPoolExecutor(max_workers=jobs) as ex:
        futures = {ex.submit(fn, args[i]): i for i in order}
        for f in as_completed(futures):
            results[futures[f]] = f.result()
    return results


def hash_paths(paths: list[str], opts: HashOptions, output: str | None = None,
               jobs: int | None = None) -> tuple[list[Outcome], list[FastlkmError]]:
    """Process every file and tree of *paths* (in place, or into *output* mirroring the
    trees); per-file errors are returned and the other files processed."""
    opts.check()
    plan = plan_paths(paths, output)
    for d in plan.dirs:
        os.makedirs(d, exist_ok=True)
    # a run killed mid-write leaves at most a temporary file beside each target: whole
    # files are renamed into place, never written there
    clean_temporaries([*(j.dst or j.src for j in plan.jobs), *(d for _, d in plan.copies),
                       *(link for _, link in plan.links)])
    errors: list[FastlkmError] = list(plan.skipped)
    for src, dst in plan.copies:
        try:
            _copy(src, dst)
        except OSError as e:
            errors.append(FastlkmError(f"cannot copy: {e.strerror or e}", src))
    for target, link in plan.links:
        atomic_symlink(target, Path(link))
    results = _run(_hash_one, [(j.src, j.dst, opts) for j in plan.jobs],
                   [j.size for j in plan.jobs], jobs)
    outcomes = [r for r in results if isinstance(r, Outcome)]
    errors += [r for r in results if isinstance(r, FastlkmError)]
    return outcomes, errors


def _status(done: bool, skipped: bool, failed: bool) -> int:
    """A run over files: EXIT_SKIPPED when files were skipped (EXIT_ERROR when nothing
    was done at all: bad input), else EXIT_FAIL when a file *failed*."""
    if skipped:
        return EXIT_SKIPPED if done else EXIT_ERROR
    return EXIT_FAIL if failed else 0


@dataclass
class HashRun:
    """What ``fastlkm hash`` did: an outcome per file processed, the files skipped."""

    outcomes: list[Outcome]
    errors: list[FastlkmError]

    @property
    def status(self) -> int:
        return _status(bool(self.outcomes), bool(self.errors), False)

    def write(self, err: IO[str], verbose: bool = False) -> None:
        """A line per warning (and, *verbose*, per signature and per changed file), the
        skipped files, and the counts."""
        for o in self.outcomes:
            for n in o.notes if verbose else o.warnings:
                err.write(f"fastlkm: {o.path}: {n}\n")
            if verbose and o.changed:
                moved = f", sorted {' '.join(o.sorted)}" if o.sorted else ""
                err.write(f"fastlkm: {o.path}: {o.tables} tables{moved}\n")
        warn_skipped(self.errors, err)
        changed = sum(o.changed for o in self.outcomes)
        err.write(f"fastlkm: {len(self.outcomes) + len(self.errors)} files: {changed} "
                  f"changed, {len(self.outcomes) - changed} unchanged, {len(self.errors)} "
                  "skipped\n")


def hash_files(paths: list[str], opts: HashOptions, output: str | None = None,
               jobs: int | None = None) -> HashRun:
    """``fastlkm hash``: :func:`hash_paths` with its report."""
    return HashRun(*hash_paths(paths, opts, output, jobs))


@dataclass(frozen=True)
class Verified:
    """The check of one file: its problems; *processed* False when it needs tables and
    holds none of fastlkm's sections (then the one problem is NOT_PROCESSED)."""

    path: str
    problems: list[str]
    processed: bool = True

    @property
    def bad(self) -> bool:
        return self.processed and bool(self.problems)


def verify_file(path: str) -> Verified:
    """The problems of the embedded tables of one file (see verify_image)."""
    raw = _read(path)
    fmt = detect(raw)
    plain = decompress(raw, fmt, path=path) if fmt else raw
    body, _ = split_signature(plain, path)
    elf = ElfFile(body, path)
    problems = verify_image(elf)
    if problems and not fastlkm_sections(elf):
        return Verified(path, [NOT_PROCESSED], processed=False)
    return Verified(path, problems)


def _verify_one(path: str) -> Verified | FastlkmError:
    return result_or_error(lambda: verify_file(path), path)


def verify_paths(paths: list[str], jobs: int | None = None
                 ) -> tuple[list[Verified], list[FastlkmError]]:
    """A check per file, and the files that could not be read."""
    plan = plan_paths(paths)
    results = _run(_verify_one, [j.src for j in plan.jobs],  # type: ignore[arg-type]
                   [j.size for j in plan.jobs], jobs)
    checked = [r for r in results if isinstance(r, Verified)]
    errors = plan.skipped + [r for r in results if isinstance(r, FastlkmError)]
    return checked, errors


@dataclass
class VerifyRun:
    """What ``fastlkm verify`` found."""

    checked: list[Verified]
    errors: list[FastlkmError]

    @property
    def status(self) -> int:
        return _status(bool(self.checked), bool(self.errors),
                       any(v.problems for v in self.checked))

    def write(self, out: IO[str], err: IO[str]) -> None:
        """A line per problem on *out*; the skipped files and the counts on *err*."""
        for v in self.checked:
            for p in v.problems:
                out.write(f"{v.path}: {p}\n")
        warn_skipped(self.errors, err)
        bad = sum(v.bad for v in self.checked)
        todo = sum(not v.processed for v in self.checked)
        err.write(f"fastlkm: {len(self.checked)} files checked: {bad} with problems, {todo} "
                  f"not processed, {len(self.errors)} unreadable\n")


def verify_files(paths: list[str], jobs: int | None = None) -> VerifyRun:
    """``fastlkm verify``: :func:`verify_paths` with its report."""
    return VerifyRun(*verify_paths(paths, jobs))
