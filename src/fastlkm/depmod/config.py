"""depmod.d configuration: which of several files of one module name depmod takes, which
directories it skips, and which outside it searches (depmod.d(5), cfg_load() in kmod).

Lines: ``search DIR|built-in|external...``, ``override MODULE KERNEL SUBDIR``,
``external KERNEL DIR``, ``exclude DIR...``; ``#`` comments; KERNEL is ``*`` or an
extended regular expression matched against the release.  Files are the ``*.conf`` of the
configuration directories, each name taken once (the first directory wins), read in name
order.  Entries are kept in kmod's list order: each new entry goes to the head.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

DEFAULT_PATHS = ("/etc/depmod.d", "/run/depmod.d", "/usr/local/lib/depmod.d",
                 "/usr/lib/depmod.d", "/lib/depmod.d")
BUILTIN, EXTERNAL = "built-in", "external"


class DepmodConfig:
    """What depmod.d says (a plain class: a warm depmod run must not pay for importing
    dataclasses); its repr is part of the output cache's key."""

    __slots__ = ("excludes", "externals", "messages", "overrides", "searches")

    def __init__(self, searches: list[str] | None = None, overrides: list[str] | None = None,
                 externals: list[str] | None = None, excludes: list[str] | None = None,
                 messages: list[tuple[str, str]] | None = None) -> None:
        self.searches = searches or []     # newest first, as kmod's list
        self.overrides = overrides or []   # "SUBDIR/MODNAME", newest first
        self.externals = externals or []   # absolute dirs, newest first
        self.excludes = excludes or []
        # what kmod says while it reads them, in its words and order: (ERROR or INFO, text)
        self.messages = messages or []

    def _fields(self) -> tuple[list[str], ...]:
        return tuple(getattr(self, f) for f in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DepmodConfig) and self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]   # mutable, as the dataclass it was

    def __repr__(self) -> str:
        return "DepmodConfig(" + ", ".join(
            f"{f}={getattr(self, f)!r}" for f in self.__slots__) + ")"

    def existing_wins(self, old: tuple[str | None, str], new: tuple[str | None, str]) -> bool:
        """depmod_module_is_higher_priority(): does the module file found first, *old*,
        keep its place against *new*?  Each is (path relative to the modules directory or
        None, full path); paths are compared without their extension."""
        (orel, opath), (nrel, npath) = old, new
        okey, nkey = _stem(orel), _stem(nrel)
        for ov in self.overrides:
            if nkey == ov:
                return False
            if okey == ov:
                return True
        bprio = oprio = nprio = -1
        ostem, nstem = _stem(opath), _stem(npath)
        i = 0
        for s in self.searches:
            if s == BUILTIN:
                bprio = i
            elif s == EXTERNAL:
                for ext in self.externals:
                    if _under(nstem, ext):
                        nprio = i
                    if _under(ostem, ext):
                        oprio = i
                    i += 1
            elif _under(nkey, s):
                nprio = i
            elif _under(okey, s):
                oprio = i
            i += 1
        if nprio < 0:
            nprio = bprio
        if oprio < 0:
            oprio = bprio
        return nprio <= oprio


def _stem(path: str | None) -> str | None:
    """The path up to the module name's end: its extension dropped."""
    if path is None:
        return None
    d, _, base = path.rpartition("/")
    return (d + "/" if d else "") + base.split(".", 1)[0]


def _under(path: str | None, prefix: str) -> bool:
    return path is not None and len(path) > len(prefix) and path[len(prefix)] == "/" \
        and path.startswith(prefix)


def _kernel_matches(pattern: str, release: str) -> bool:
    """cfg_kernel_matches(): '*', else a POSIX extended regex searched in the release."""
    if pattern == "*":
        return True
    try:
        return re.search(pattern, release) is not None
    except re.error:
        return False


def config_files(paths: tuple[str, ...] | list[str], cfg: DepmodConfig | None = None
                 ) -> list[Path]:
    """cfg_files_list(): *.conf files (or files named directly), each name once (the
    first directory wins), in name order; what kmod says of the other entries goes to
    *cfg*'s messages (cfg_files_filter_out())."""
    cfg = cfg if cfg is not None else DepmodConfig()
    chosen: dict[str, Path] = {}
    for p in paths:
        path = Path(p)
        if path.is_file():
            chosen.setdefault(path.name, path)
            continue
        if not path.is_dir():
            continue
        for e in os.scandir(path):   # readdir() order, as kmod's messages
            if e.name.startswith("."):
                continue
            if len(e.name) < 6 or not e.name.endswith(".conf"):
                cfg.messages.append(("INFO", f"All cfg files need .conf: {p}/{e.name}"))
                continue
            try:
                is_dir = e.is_dir()
            except OSError:
                cfg.messages.append(("ERROR", f"Cannot stat directory entry: {p}{e.name}"))
                continue
            if is_dir:
                cfg.messages.append(("ERROR", "Directories inside directories are not "
                                     f"supported: {p}/{e.name}"))
                continue
            chosen.setdefault(e.name, Path(e.path))
    return [chosen[n] for n in sorted(chosen, key=lambda n: n.encode())]


def load_config(release: str, paths: tuple[str, ...] | list[str] | None = None
                ) -> DepmodConfig:
    cfg = DepmodConfig()
    for f in config_files(list(paths) if paths is not None else list(DEFAULT_PATHS), cfg):
        try:
            text = f.read_text(errors="replace")
        except OSError as e:
            cfg.messages.append(("ERROR", f"file parse {f}: {e.strerror}"))
            continue
        # freadline_wrapped(): a trailing backslash continues the line
        text = text.replace("\\\n", "")
        for n, line in enumerate(text.splitlines(), 1):
            if not line or line.startswith("#"):
                continue
            words = line.split()
            if not words:
                continue
            cmd, args = words[0], words[1:]
            if cmd == "search":
                for a in args:
                    cfg.searches.insert(0, a)
            elif cmd == "override" and len(args) >= 3:
                if _kernel_matches(args[1], release):
                    cfg.overrides.insert(0, f"{args[2]}/{args[0]}")
                else:
                    cfg.messages.append(("INFO",
                                         f"{f}:{n}: override kernel did not match {args[1]}"))
            elif cmd == "external" and len(args) >= 2:
                if _kernel_matches(args[0], release):
                    cfg.externals.insert(0, args[1])
                else:
                    cfg.messages.append(
                        ("INFO", f"{f}:{n}: external directory did not match {args[0]}"))
            elif cmd == "exclude":
                for a in args:
                    cfg.excludes.insert(0, a)
            elif cmd in ("include", "make_map_files"):
                cfg.messages.append(("INFO", f"{f}:{n}: command {cmd} not implemented yet"))
            else:
                cfg.messages.append(("ERROR",
                                     f"{f}:{n}: ignoring bad line starting with '{cmd}'"))
    if not cfg.searches:
        cfg.searches.append("updates")
    return cfg
