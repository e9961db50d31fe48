"""Debian packages and tarballs of a kernel root, extracted without trusting them.

A ``.deb`` is an ar archive (deb(5)): ``debian-binary``, ``control.tar.*``, then
``data.tar`` plain or compressed (gz, xz, zst, bz2, lzma), read here by a small bounded ar
reader.  A tarball is a tar plain or compressed.  :func:`extract` writes the files into a
fresh directory and nothing anywhere else:

- member names must be relative and free of ``..``;
- no member is written through a symbolic link: links are created last, after every file
  and directory, and a member whose path goes through a link member is refused;
- an absolute link target is taken as the package means it (from the root it is unpacked
  into) and rewritten relative to the link; a link that leads outside is refused;
- a hard link must name a regular file extracted before it;
- devices, FIFOs and sparse files are refused; modes lose setuid, setgid and sticky bits;
- the decompressed stream, and so every member and their sum, is capped (``DEFAULT_LIMIT``).

Any violation raises one FormatError naming the archive and the member, and the
destination is removed.  :func:`extracted` keeps one extraction per archive in the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from fastlkm.errors import FastlkmError, FormatError, NotFoundError, UsageError
from fastlkm.io.cache import cache_dir
from fastlkm.io.codecs import DEFAULT_LIMIT, detect, open_stream

AR_MAGIC = b"!<arch>\n"
_AR_HEADER = 60
_AR_FMAG = b"`\n"
_TAR_MAGIC_AT = 257            # "ustar" (POSIX) or "ustar  " (GNU)
_DATA_TAR = re.compile(r"data\.tar(\.(gz|xz|zst|bz2|lzma))?")
_TAR_CODECS = ("gzip", "xz", "zstd", "bzip2", "lzma")
MAX_MEMBERS = 1 << 20          # far above a kernel package (a few ten thousand files)
MAX_EXTENDED_HEADER = 1 << 20  # a pax header or GNU long name is read whole into memory
_COPY_CHUNK = 1 << 20


# --- ar -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArMember:
    name: str
    header: int      # offset of its 60-byte header
    offset: int      # of its data
    size: int


def ar_members(f: BinaryIO, path: str) -> Iterator[ArMember]:
    """The members of the ar archive *f*, each checked against the file's size."""
    f.seek(0, os.SEEK_END)
    end = f.tell()
    f.seek(0)
    if f.read(len(AR_MAGIC)) != AR_MAGIC:
        raise FormatError("not an ar archive (bad magic)", path, 0)
    pos = len(AR_MAGIC)
    while pos < end:
        f.seek(pos)
        h = f.read(_AR_HEADER)
        if len(h) < _AR_HEADER:
            raise FormatError(f"truncated ar member header ({len(h)} of {_AR_HEADER} bytes)",
                              path, pos)
        if h[58:60] != _AR_FMAG:
            raise FormatError("bad ar member header (no terminator)", path, pos + 58)
        # GNU ar ends short names with "/"; dpkg-deb pads them with spaces
        raw_name = h[:16].rstrip(b" ")
        raw_name = raw_name[:-1] if raw_name.endswith(b"/") and len(raw_name) > 1 else raw_name
        raw_size = h[48:58].strip(b" ")
        if not raw_name.isascii() or not raw_name.decode().isprintable() or not raw_name:
            raise FormatError("bad ar member name", path, pos)
        if not raw_size.isdigit():
            raise FormatError(f"bad ar member size {raw_size!r}", path, pos + 48)
        name, size = raw_name.decode(), int(raw_size)
        start = pos + _AR_HEADER
        if start + size > end:
            raise FormatError(f"ar member {name} of {size} bytes runs past the end of the "
                              f"file ({end} bytes)", path, pos + 48)
        yield ArMember(name, pos, start, size)
        pos = start + size + (size & 1)   # members start at even offsets


class _Window:
    """Bytes [offset, offset + size) of *f*, read sequentially."""

    def __init__(self, f: BinaryIO, offset: int, size: int):
        self._f, self._pos, self._left = f, offset, size

    def read(self, n: int = -1) -> bytes:
        n = self._left if n is None or n < 0 else min(n, self._left)
        self._f.seek(self._pos)
        data = self._f.read(n)
        self._pos += len(data)
        self._left -= len(data)
        return data


def _deb_data(f: BinaryIO, path: str) -> tuple[ArMember, str]:
    """The data.tar member of the package *f*, as dpkg-deb finds it (deb(5))."""
    members = ar_members(f, path)
    first = next(members, None)
    if first is None or first.name != "debian-binary":
        raise FormatError("not a Debian package (no debian-binary first)", path,
                          first.header if first else len(AR_MAGIC))
    f.seek(first.offset)
    version = f.read(min(first.size, 16))
    if not re.match(rb"2\.\d+\n", version):
        raise FormatError(f"unsupported package format {version[:8]!r}", path, first.offset)
    for m in members:
        if _DATA_TAR.fullmatch(m.name):
            return m, m.name
    raise FormatError("no data.tar member", path)


# --- what a file is -------------------------------------------------------------------------


def archive_kind(path: str) -> str | None:
    """"deb", "tar" (plain or compressed) or None, from the file's first bytes and name."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return None
    if head.startswith(AR_MAGIC) or path.endswith((".deb", ".udeb")):
        return "deb"   # by name too, so that a broken package is reported as one
    if head[_TAR_MAGIC_AT:_TAR_MAGIC_AT + 5] == b"ustar":
        return "tar"
    name = os.path.basename(path)
    if ".tar." in name or name.endswith((".tgz", ".txz", ".tzst")):
        return "tar" if detect(head) in _TAR_CODECS else None
    return None


# --- extraction -----------------------------------------------------------------------------


def _member_path(name: str) -> str | None:
    """The normalised relative path of a member, None for the root itself; raises on an
    absolute path or a ``..`` component."""
    if name.startswith("/"):
        raise ValueError("absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError("path leaves the destination (..)")
    if any("\0" in p for p in parts):
        raise ValueError("NUL in path")
    return "/".join(parts) or None


class _Extractor:
    def __init__(self, archive: str, member_of: str, dest: Path):
        self.archive, self.member_of, self.dest = archive, member_of, dest
        self.files: set[str] = set()          # regular files written
        self.dirs: set[str] = set()
        self.links: dict[str, str] = {}       # symlink -> target (as rewritten)

    def error(self, member: str, why: str) -> FormatError:
        of = f"{self.member_of} " if self.member_of else ""
        return FormatError(f"{of}member {member}: {why}", self.archive)

    def through_link(self, rel: str) -> str | None:
        parts = rel.split("/")
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            if prefix in self.links or prefix in self.files:
                return prefix
        return None

    def add(self, m: tarfile.TarInfo, tf: tarfile.TarFile, limit: int) -> None:
        try:
            rel = _member_path(m.name)
        except ValueError as e:
            raise self.error(m.name, str(e)) from None
        if rel is None:
            if not m.isdir():
                raise self.error(m.name, "names the destination itself")
            return
        via = self.through_link(rel)
        if via is not None:
            raise self.error(m.name, f"goes through {via}, which is not a directory")
        if rel in self.links:
            raise self.error(m.name, "replaces a symbolic link")
        target = self.dest / rel
        if m.issym():
            self.symlink(m, rel)
        elif m.isdir():
            if rel in self.files:
                raise self.error(m.name, "replaces a file with a directory")
            target.mkdir(0o755, parents=True, exist_ok=True)
            self.dirs.add(rel)
        elif m.islnk():
            self.hardlink(m, rel, target)
        elif m.isreg() and not m.issparse():
            self.regular(m, rel, target, tf, limit)
        else:
            kind = ("a sparse file" if m.issparse() else "a character device" if m.ischr()
                    else "a block device" if m.isblk() else "a FIFO" if m.isfifo()
                    else f"of type {m.type!r}")
            raise self.error(m.name, f"is {kind}: refused")

    def _clear(self, rel: str, target: Path) -> None:
        if rel in self.dirs:
            raise self.error(rel, "replaces a directory")
        target.parent.mkdir(0o755, parents=True, exist_ok=True)
        if rel in self.files:
            target.unlink()      # a later member of the same name wins, as tar has it

    def regular(self, m: tarfile.TarInfo, rel: str, target: Path, tf: tarfile.TarFile,
                limit: int) -> None:
        if m.size > limit:
            raise self.error(m.name, f"{m.size} bytes exceeds the {limit}-byte limit")
        self._clear(rel, target)
        src = tf.extractfile(m)
        assert src is not None
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(target, flags, (m.mode & 0o777) | 0o600)
        self.files.add(rel)
        left = m.size
        with os.fdopen(fd, "wb") as out:
            while left:
                chunk = src.read(min(left, _COPY_CHUNK))
                if not chunk:
                    raise self.error(m.name, f"truncated ({m.size - left} of {m.size} bytes)")
                out.write(chunk)
                left -= len(chunk)

    def hardlink(self, m: tarfile.TarInfo, rel: str, target: Path) -> None:
        try:
            to = _member_path(m.linkname)
        except ValueError as e:
            raise self.error(m.name, f"hard link to {m.linkname}: {e}") from None
        if to is None or to not in self.files:
            raise self.error(m.name, f"hard link to {m.linkname}, which is not a file "
                                     "extracted before it")
        self._clear(rel, target)
        os.link(self.dest / to, target, follow_symlinks=False)
        self.files.add(rel)

    def symlink(self, m: tarfile.TarInfo, rel: str) -> None:
        if rel in self.files or rel in self.dirs:
            raise self.error(m.name, "a symbolic link replaces a file or directory")
        link = m.linkname
        if not link or "\0" in link:
            raise self.error(m.name, "empty symbolic link")
        parent = posixpath.dirname(rel)
        if link.startswith("/"):
            # from the root the package is unpacked into, as dpkg would on the target
            inside = posixpath.normpath(link).lstrip("/")
            link = posixpath.relpath(inside or ".", parent or ".")
        if posixpath.normpath(posixpath.join(parent, link)).split("/")[0] == "..":
            raise self.error(m.name, f"symbolic link to {m.linkname} leads outside the "
                                     "destination")
        self.links[rel] = link

    def finish(self) -> None:
        """Create the symbolic links, then check that none leads outside, following
        chains of them as the kernel would."""
        for rel, link in self.links.items():
            target = self.dest / rel
            target.parent.mkdir(0o755, parents=True, exist_ok=True)
            os.symlink(link, target)
        root = os.path.realpath(self.dest)
        for rel in self.links:
            real = os.path.realpath(self.dest / rel)
            if real != root and not real.startswith(root + os.sep):
                raise self.error(rel, f"symbolic link to {self.links[rel]} leads outside "
                                      "the destination")


def extract(archive: str, dest: str | os.PathLike[str], *, limit: int = DEFAULT_LIMIT
            ) -> Path:
    """Extract the package or tarball *archive* into *dest*, a directory this creates.

    Raises FormatError (or DecompressError) on anything unsafe or malformed, after removing
    *dest*; nothing is ever written outside it."""
    kind = archive_kind(archive)
    if kind is None:
        if not os.path.exists(archive):
            raise NotFoundError("no such file", archive)
        raise FormatError("not a Debian package or tar archive", archive, 0)
    out = Path(dest)
    try:
        out.mkdir(0o755)
    except FileExistsError:
        raise UsageError("destination exists (extraction needs a fresh directory)",
                         str(out)) from None
    try:
        with open(archive, "rb") as f:
            if kind == "deb":
                member, name = _deb_data(f, archive)
                offset, size = member.offset, member.size
            else:
                name, offset, size = "", 0, os.fstat(f.fileno()).st_size
            f.seek(offset)
            fmt = detect(f.read(min(size, _TAR_MAGIC_AT + 8)))
            if fmt is not None and fmt not in _TAR_CODECS:
                raise FormatError(f"{name or 'archive'}: {fmt}-compressed, not a tar "
                                  "format", archive)
            where = f"{archive}: {name}" if name else archive
            stream = open_stream(_Window(f, offset, size), fmt,  # type: ignore[arg-type]
                                 limit=limit, path=where)
            _extract_tar(stream, archive, name, out, limit)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return out


class _BoundedTarInfo(tarfile.TarInfo):
    """Refuses an extended header too large to hold in memory before tarfile reads it."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        extended = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE,
                    tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE)
        if self.type in extended and self.size > MAX_EXTENDED_HEADER:
            raise tarfile.HeaderError(f"extended header of {self.size} bytes at offset "
                                      f"{self.offset}")
        return super()._proc_member(tarfile_)  # type: ignore[misc]


def _extract_tar(stream: BinaryIO, archive: str, name: str, dest: Path, limit: int) -> None:
    ex = _Extractor(archive, name, dest)
    count = 0
    try:
        with tarfile.open(fileobj=stream, mode="r|", tarinfo=_BoundedTarInfo) as tf:
            for m in tf:
                count += 1
                if count > MAX_MEMBERS:
                    raise ex.error(m.name, f"more than {MAX_MEMBERS} members")
                ex.add(m, tf, limit)
        ex.finish()
    except tarfile.TarError as e:
        raise FormatError(f"{name + ': ' if name else ''}not a valid tar archive ({e})",
                          archive) from None
    except FastlkmError:
        raise
    except OSError as e:
        raise FormatError(f"{name + ': ' if name else ''}cannot extract: "
                          f"{e.strerror or e}", archive) from None


# --- the cache ------------------------------------------------------------------------------


def extracted(archive: str) -> Path:
    """The root *archive* unpacks to, extracted once into
    ``$XDG_CACHE_HOME/fastlkm/extract`` and kept while the archive's size and mtime stay."""
    try:
        st = os.stat(archive)
    except FileNotFoundError:
        raise NotFoundError("no such file", archive) from None
    real = os.path.realpath(archive)
    stem = re.sub(r"[^A-Za-z0-9.+_-]+", "_", os.path.basename(real))[:80]
    who = hashlib.sha256(real.encode(errors="surrogateescape")).hexdigest()[:8]
    key = f"{stem}-{who}-{st.st_size}-{st.st_mtime_ns}"
    base = cache_dir() / "extract"
    final = base / key
    if (final / "root").is_dir():
        return final / "root"
    try:
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=base))
    except OSError as e:
        raise FastlkmError(f"cannot create the extraction cache: {e.strerror or e}",
                           str(base)) from None
    try:
        extract(archive, tmp / "root")
        try:
            os.rename(tmp, final)
        except OSError:           # another process extracted it meanwhile
            if not (final / "root").is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # older extractions of the same file are stale
    for old in base.glob(f"{stem}-{who}-*"):
        if old.name != key:
            with contextlib.suppress(OSError):
                shutil.rmtree(old)
    return final / "root"
