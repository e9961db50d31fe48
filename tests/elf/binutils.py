"""binutils as the oracle for written ELF files, and a check that a write appended and
changed nothing else."""

from __future__ import annotations

import subprocess
import tempfile

from fastlkm.elf.reader import ElfFile
from tests.conftest import require_tools


def _run(tool: list[str], data: bytes) -> tuple[str, str]:
    require_tools(tool[0])
    with tempfile.NamedTemporaryFile(suffix=".o") as f:
        f.write(data)
        f.flush()
        r = subprocess.run([*tool, f.name], capture_output=True, text=True, check=False)
    return r.stdout, r.stderr


def readelf_clean(data: bytes) -> str:
    """``readelf -a`` output; fails on any warning or error."""
    out, err = _run(["readelf", "-a", "-W"], data)
    bad = [line for line in err.splitlines() if "Warning" in line or "Error" in line]
    assert not bad, bad[:5]
    return out


def objdump_clean(data: bytes) -> str:
    """``objdump -h`` output; fails on anything on stderr."""
    out, err = _run(["objdump", "-h"], data)
    assert not err.strip(), err[:500]
    return out


def assert_only_appended(old: bytes, new: bytes, added: list[str],
                         edited: frozenset[str] = frozenset()) -> ElfFile:
    """*new* is *old* plus the sections *added* (in that order, at the end): every other
    section has the same header and the same bytes at the same offset (those in *edited*
    the same header only), ``.shstrtab`` only grew, program headers are untouched."""
    a, b = ElfFile(old, "old"), ElfFile(new, "new")
    n = len(a.sections)
    assert [s.name for s in b.sections[n:]] == added
    shs = a.sections[a.layout.ehdr.unpack_from(old, 0)[-1]]
    for s, t in zip(a.sections, b.sections[:n], strict=True):
        if s.index == shs.index:
            assert t.name == s.name
            assert b.section_data(t).startswith(a.section_data(s))
            continue
        assert s == t, s.name
        if s.name not in edited:
            assert a.section_data(s) == b.section_data(t), s.name
            assert new[s.offset:s.offset + s.size] == old[s.offset:s.offset + s.size] or \
                s.type == 8
    ea, eb = a.layout.ehdr.unpack_from(old, 0), b.layout.ehdr.unpack_from(new, 0)
    # everything but e_shoff and e_shnum
    assert ea[:6] == eb[:6] and ea[7:12] == eb[7:12] and ea[13] == eb[13]
    phoff, phentsize, phnum = ea[5], ea[9], ea[10]
    assert new[phoff:phoff + phentsize * phnum] == old[phoff:phoff + phentsize * phnum]
    return b
