"""One exception hierarchy for everything fastlkm reads or writes.

Every error names the file and, where it makes sense, the byte offset, so that the command
line can print a single ``fastlkm: error: PATH: what is wrong (at offset N)`` line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, TypeVar

T = TypeVar("T")

# exit statuses of every command (the command line's, and the library functions' that
# run one)
EXIT_FAIL = 1     # a module would not load, verify found problems, a dependency cycle
EXIT_ERROR = 2    # bad input or usage
EXIT_SKIPPED = 3  # some files were skipped (each named on stderr), the rest processed


class FastlkmError(Exception):
    """Base of every error fastlkm raises on purpose."""

    def __init__(self, message: str, path: str | None = None, offset: int | None = None):
        super().__init__(message)
        self.message = message
        self.path = path
        self.offset = offset

    def with_path(self, path: str) -> FastlkmError:
        """Attach *path* if the raiser did not know it (a parser working on bytes)."""
        if self.path is None:
            self.path = path
        return self

    def __str__(self) -> str:
        s = f"{self.path}: {self.message}" if self.path else self.message
        if self.offset is not None:
            s += f" (at offset {self.offset})"
        return s


class FormatError(FastlkmError):
    """The input is malformed: truncated, out of bounds, wrong magic, bad syntax."""


class DecompressError(FormatError):
    """A compressed payload could not be decoded, or exceeds the size cap."""


class NotFoundError(FastlkmError):
    """A kernel, module or file the user named does not exist."""


class UsageError(FastlkmError):
    """The command line asks for something inconsistent."""


class CycleError(FastlkmError):
    """Modules depend on each other in a cycle.  *lines* are depmod's report of it, one
    ``Cycle detected: a -> b -> a`` per cycle and ``Found N modules in dependency
    cycles!`` last; *complete* is False when the listing was cut short (see
    depmod/compute.py, _report_cycles())."""

    def __init__(self, lines: list[str], complete: bool = True, path: str | None = None):
        super().__init__(lines[-1] if lines else "dependency cycle", path)
        self.lines = lines
        self.complete = complete


# what a parser raises on bytes it did not check: reported as a malformed file
PARSE_ERRORS = (ValueError, IndexError, KeyError, OverflowError)


def guarded(fn: Callable[[], T], path: str, what: str = "file") -> T:
    """``fn()``, every error of reading *path* a FastlkmError naming it: a FastlkmError
    gets the path, one of PARSE_ERRORS becomes ``malformed WHAT (Type: message)``."""
    try:
        return fn()
    except FastlkmError as e:
        raise e.with_path(path) from None
    except PARSE_ERRORS as e:
        raise FormatError(f"malformed {what} ({type(e).__name__}: {e})", path) from None


def result_or_error(fn: Callable[[], T], path: str, what: str = "file") -> T | FastlkmError:
    """:func:`guarded`, the error returned instead of raised (for a worker's results)."""
    try:
        return guarded(fn, path, what)
    except FastlkmError as e:
        return e


def warn_skipped(errors: list[FastlkmError], err: IO[str]) -> None:
    """One ``fastlkm: warning: PATH: why; skipped`` line per file a command skipped."""
    for e in errors:
        err.write(f"fastlkm: warning: {e}; skipped\n")
