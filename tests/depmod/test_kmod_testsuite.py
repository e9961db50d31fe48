"""kmod's own depmod test cases, run against fastlkm's depmod.

Nothing of kmod is kept here: sid's kmod source is fetched at test time
(``scripts/corpus.py --kmod-testsuite``, which also builds its module-playground against
Debian's 6.12 headers), each case is read from its ``testsuite/test-depmod.c`` (the
arguments of ``EXEC_DEPMOD()``, the ``TC_UNAME_R`` and ``TC_ROOTFS`` of its
configuration, whether it is expected to fail, the files and standard error it must
produce) and its root filesystem is assembled from ``testsuite/rootfs-pristine`` as
kmod's ``scripts/setup-rootfs.sh`` does (the playground's modules installed where its
table puts them, compressed with gzip, xz and zstd as its lists say).

kmod's harness runs depmod with every absolute path redirected into the case's root
(an LD_PRELOAD trap) and ``uname -r`` answering ``TC_UNAME_R``: here depmod runs as
``depmod --sysroot ROOTFS ARGS`` under the name ``depmod``, with ``os.uname()`` answering
the same.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from fastlkm.cli import main
from tests.conftest import corpus_tool

# the DEFINE_TEST() names of kmod 34's test-depmod.c; a case kmod adds or drops fails
# test_every_case_is_run, so none is left out unnoticed
CASES = (
    "depmod_modules_order_for_compressed", "depmod_modules_outdir",
    "depmod_search_order_simple", "depmod_another_moddir", "depmod_another_moddir_relative",
    "depmod_search_order_same_prefix", "depmod_detect_loop",
    "depmod_search_order_external_first", "depmod_search_order_external_last",
    "depmod_search_order_override", "depmod_check_weakdep",
)
# what the harness knows of a case that these tests understand; anything else fails
KNOWN_FIELDS = {"description", "config", "output", "files", "err", "expected_fail"}
# kmod's build defaults, which fastlkm's depmod shares
MODULE_DIRECTORY = "/lib/modules"


@dataclass(frozen=True)
class Case:
    name: str
    args: tuple[str, ...]
    uname: str
    rootfs: str
    expected_fail: bool
    files: tuple[tuple[str, str], ...]
    err: str | None


@pytest.fixture(scope="module")
def kmod_source() -> Path:
    return corpus_tool("kmod_testsuite")


# --- test-depmod.c, read -------------------------------------------------------------


def _concat(expr: str, macros: dict[str, str]) -> str:
    """A C expression of string literals and string macros, concatenated."""
    out = []
    for literal, name in re.findall(r'"((?:[^"\\]|\\.)*)"|(\w+)', expr):
        if name:
            assert name in macros, f"test-depmod.c: unknown macro {name} in {expr!r}"
            out.append(macros[name])
        else:
            out.append(literal.encode().decode("unicode_escape"))
    return "".join(out)


def read_cases(source: str, rootfs: Path) -> dict[str, Case]:
    """Every DEFINE_TEST() of test-depmod.c, with TESTSUITE_ROOTFS at *rootfs*."""
    macros = {"TESTSUITE_ROOTFS": f"{rootfs}/", "MODULE_DIRECTORY": MODULE_DIRECTORY}
    for m in re.finditer(r"^#define (\w+)[ \t]+((?:[^\n\\]|\\\n)+)$", source, re.M):
        body = m.group(2).replace("\\\n", " ")
        if re.fullmatch(r'(\s*("(?:[^"\\]|\\.)*"|\w+))+\s*', body) and all(
                n in macros for n in re.findall(r'"(?:[^"\\]|\\.)*"|(\w+)', body) if n):
            macros[m.group(1)] = _concat(body, macros)
    runs = {f: tuple(_concat(a, macros) for a in args.split(",") if a.strip())
            for f, args in re.findall(r"static noreturn int (\w+)\(const struct test \*t\)"
                                      r"\s*\{\s*EXEC_DEPMOD\(([^)]*)\);", source)}
    cases = {}
    for name, body in re.findall(r"DEFINE_TEST\((\w+),(.*?)\}\);", source, re.S):
        unknown = set(re.findall(r"\.(\w+)\s*=", body)) - KNOWN_FIELDS
        assert not unknown, f"{name}: the harness feature {sorted(unknown)} is not run here"
        config = dict(re.findall(r"\[(TC_\w+)\]\s*=\s*([^,\n]+),", body))
        assert set(config) <= {"TC_UNAME_R", "TC_ROOTFS"}, f"{name}: {sorted(config)}"
        files = body.split(".files", 1)[1] if ".files" in body else ""
        err = re.search(r"\.err\s*=\s*([^,\n]+),", body)
        cases[name] = Case(
            name, runs[name], _concat(config["TC_UNAME_R"], macros),
            _concat(config["TC_ROOTFS"], macros),
            re.search(r"\.expected_fail\s*=\s*true", body) is not None,
            tuple((_concat(a, macros), _concat(b, macros)) for a, b in
                  re.findall(r"\{\s*([^{},]+?)\s*,\s*([^{},]+?)\s*\}", files)),
            _concat(err.group(1), macros) if err else None)
    return cases


# --- scripts/setup-rootfs.sh, re-done --------------------------------------------------


def setup_rootfs(kmod: Path, rootfs: Path, only: str = "test-depmod/") -> None:
    """What kmod's setup-rootfs.sh does for the cases under *only*, with kmod's default
    module directory and /etc: rootfs-pristine copied (without .gitignore files), each
    module of its table installed from module-playground, those of its gzip, xz and zstd
    lists compressed with those tools."""
    script = (kmod / "scripts/setup-rootfs.sh").read_text()
    shutil.copytree(kmod / "testsuite/rootfs-pristine", rootfs, symlinks=True)
    for g in rootfs.rglob(".gitignore"):
        g.unlink()

    def expand(path: str) -> str:
        path = path.replace("$MODULE_DIRECTORY", MODULE_DIRECTORY)
        assert "$" not in path, f"setup-rootfs.sh: {path}"
        return path

    table = re.search(r"^map=\($(.*?)^\)$", script, re.M | re.S)
    assert table, "setup-rootfs.sh: no module table"
    entries = re.findall(r'^\s*\["([^"]+)"\]="([^"]+)"', table.group(1), re.M)
    assert entries, "setup-rootfs.sh: an empty module table"
    playground = kmod / "testsuite/module-playground"
    for key, module in entries:
        dst = expand(key)
        if not dst.startswith(only):
            continue
        target = rootfs / dst
        if dst.endswith("/"):      # install -d DIR; install -t DIR MODULE
            target.mkdir(parents=True, exist_ok=True)
            target = target / module
        else:                      # install -D MODULE PATH
            target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(playground / module, target)
    tools = {"gzip": ["gzip"], "xz": ["xz"], "zstd": ["zstd", "-q", "--rm"]}
    for array, cmd in tools.items():
        listed = re.search(rf"^{array}_array=\($(.*?)^\s*\)$", script, re.M | re.S)
        assert listed, f"setup-rootfs.sh: no {array}_array"
        for path in re.findall(r'"([^"]+)"', listed.group(1)):
            if expand(path).startswith(only):
                subprocess.run([*cmd, str(rootfs / expand(path))], check=True)


# --- the harness --------------------------------------------------------------------


def run_case(case: Case, monkeypatch: pytest.MonkeyPatch,
             capfd: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """depmod ARGS in the case's root as kmod's harness runs it: (status, stderr)."""
    real = os.uname()
    monkeypatch.setattr(os, "uname", lambda: os.uname_result(
        (real.sysname, real.nodename, case.uname, real.version, real.machine)))
    capfd.readouterr()
    status = main(["--sysroot", case.rootfs, *case.args], prog="depmod")
    return status, capfd.readouterr().err


@pytest.mark.corpus
def test_every_case_is_run(kmod_source: Path, tmp_path: Path) -> None:
    source = (kmod_source / "kmod/testsuite/test-depmod.c").read_text()
    assert sorted(read_cases(source, tmp_path)) == sorted(CASES)


@pytest.mark.corpus
@pytest.mark.parametrize("name", CASES)
def test_kmod_depmod_case(name: str, kmod_source: Path, tmp_path: Path,
                          monkeypatch: pytest.MonkeyPatch,
                          capfd: pytest.CaptureFixture[str]) -> None:
    kmod = kmod_source / "kmod"
    rootfs = tmp_path / "rootfs"
    setup_rootfs(kmod, rootfs)
    case = read_cases((kmod / "testsuite/test-depmod.c").read_text(), rootfs)[name]
    status, err = run_case(case, monkeypatch, capfd)
    if case.expected_fail:
        assert status != 0, f"{name}: exit 0, a failure expected"
    else:
        assert status == 0, f"{name}: exit {status}: {err}"
    assert case.files or case.err is not None, f"{name} checks nothing"
    for a, b in case.files:
        assert Path(a).is_file() and Path(b).is_file(), (a, b)
        assert Path(a).read_bytes() == Path(b).read_bytes(), (a, b)
    if case.err is not None:
        assert err == Path(case.err).read_text()
