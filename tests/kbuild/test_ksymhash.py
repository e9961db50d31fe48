"""src/fastlkm/lookup/ksymhash.h, the lookup core the patched kernel compiles, compiled
for user space (tests/kbuild/ksymhash_driver.c, with AddressSanitizer and UBSan) and held
against the Python strategies: on the tables of the shipped 6.12 snapshot, every lookup
finds the same entry with the same strcmp calls, chain steps and Bloom rejections, and a
damaged record is rejected or looked up safely, never read out of bounds or looped on."""

from __future__ import annotations

import random
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from fastlkm.embedded.codec import (
    HASH_FUNCTIONS,
    STORABLE,
    decode,
    encode_index,
    join_records,
    split_records,
)
from fastlkm.loader.scenario import export_tables
from fastlkm.lookup.base import Counters, Table
from fastlkm.lookup.strategies import STRATEGIES
from fastlkm.target import open_system, shipped_snapshot
from tests.conftest import skip_or_fail

HERE = Path(__file__).resolve().parent
HEADER = HERE.parents[1] / "src/fastlkm/lookup/ksymhash.h"


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        skip_or_fail("gcc is missing")
    exe = tmp_path_factory.mktemp("ksymhash") / "driver"
    subprocess.run(["gcc", "-O1", "-g", "-Wall", "-Wextra", "-Werror",
                    "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                    f"-I{HEADER.parent}", "-o", str(exe), str(HERE / "ksymhash_driver.c")],
                   check=True)
    return exe


def run(driver: Path, names: list[bytes], record: bytes, queries: list[bytes]
        ) -> list[str]:
    data = struct.pack("<III", len(names), len(record), len(queries)) + \
        b"".join(n + b"\0" for n in [*names, *queries]) + record
    p = subprocess.run([str(driver)], input=data, capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr.decode(errors="replace")[-2000:]
    return p.stdout.decode().splitlines()


@pytest.fixture(scope="module")
def tables() -> list[Table]:
    """vmlinux's two tables and the tables of a few modules of the shipped snapshot."""
    system = open_system(str(shipped_snapshot()))
    out = export_tables(system.kernel.exports, -1, False)
    mods = [m for m in system.modules if m.exports]
    for m in random.Random(7).sample(mods, 12):
        out += export_tables(m.exports, 0, False)
    return out


def expected(t: Table, style: str, queries: list[bytes]) -> list[str]:
    st = STRATEGIES[style]
    assert st.build is not None
    index = st.build(t)
    fn = st.hash
    out = []
    for q in queries:
        c = Counters()
        got = index.find(q, fn(q) if fn is not None else 0, c)
        out.append(f"{-1 if got is None else got} {c.strcmp} {c.chain_steps} "
                   f"{c.bloom_rejections}")
    return out


def probes(t: Table, others: list[bytes], rng: random.Random) -> list[bytes]:
    own = list(t.names)
    near = [n[:-1] + bytes([n[-1] ^ 1]) for n in rng.sample(own, min(20, len(own)))]
    return own + rng.sample(others, min(200, len(others))) + near + [b"", b"x" * 300]


@pytest.mark.parametrize("style", list(STORABLE))
def test_same_answers_and_counts_as_the_model(driver: Path, tables: list[Table],
                                              style: str) -> None:
    rng = random.Random(style)
    every = [n for t in tables for n in t.names]
    for t in tables:
        st = STRATEGIES[style]
        assert st.build is not None
        rec = encode_index(st, st.build(t), len(t.names), True)
        queries = probes(t, every, rng)
        out = run(driver, t.names, rec, queries)
        stored = decode(rec, True)
        assert out[0] == f"record {stored.layout} {stored.hash}", (t.name, out[0])
        assert out[1:] == expected(t, style, queries), t.name


def test_a_section_of_every_strategy(driver: Path, tables: list[Table]) -> None:
    """--style all: one record per strategy, each 8-byte aligned, each found in turn."""
    t = tables[0]
    styles = list(STORABLE)
    recs = []
    for s in styles:
        st = STRATEGIES[s]
        assert st.build is not None
        recs.append(encode_index(st, st.build(t), len(t.names), True))
    section = join_records(recs)
    assert [r for _, r in split_records(section, True)] == recs
    queries = [*t.names[::50], b"no_such_symbol"]
    out = run(driver, t.names, section, queries)
    heads = [i for i, line in enumerate(out) if line.startswith("record")]
    assert len(heads) == len(styles)
    for k, s in enumerate(styles):
        lines = out[heads[k] + 1:heads[k] + 1 + len(queries)]
        assert lines == expected(t, s, queries), s


@pytest.mark.parametrize("style", list(STORABLE))
def test_damaged_records_are_rejected_or_harmless(driver: Path, tables: list[Table],
                                                  style: str) -> None:
    """Bit flips, overwritten words and truncations: the C parse rejects the record, or
    its lookups stay inside it and end (ASan and UBSan abort the driver otherwise); a
    lookup through a damaged table that is accepted may miss a name, never return an
    entry whose name differs (strcmp decides)."""
    rng = random.Random(f"damage-{style}")
    t = next(x for x in tables if 40 <= len(x.names) <= 400)
    st = STRATEGIES[style]
    assert st.build is not None
    rec = encode_index(st, st.build(t), len(t.names), True)
    queries = [*t.names[::3], b"absent_name"]
    rejected = 0
    for case in range(60):
        bad = bytearray(rec)
        kind = case % 3
        if kind == 0:
            for _ in range(rng.randint(1, 4)):
                bit = rng.randrange(8 * len(bad))
                bad[bit // 8] ^= 1 << (bit % 8)
        elif kind == 1:
            pos = rng.randrange(0, max(1, len(bad) - 4)) & ~3
            bad[pos:pos + 4] = struct.pack("<I", rng.choice(
                [0, 1, 0xFFFF, 0xFFFFFFFF, len(t.names), len(t.names) + 1,
                 rng.getrandbits(32)]))
        else:
            bad = bad[:rng.randrange(len(bad))]
        out = run(driver, t.names, bytes(bad), queries)
        if out[0].startswith("reject"):
            rejected += 1
            continue
        for q, line in zip(queries, out[1:], strict=True):
            i = int(line.split()[0])
            assert i == -1 or t.names[i] == q
    assert rejected, "no damaged record was rejected: the checks do not run"


def test_chains_that_loop_are_rejected(driver: Path, tables: list[Table]) -> None:
    """A SysV chain made cyclic would make a lookup spin: the parse refuses it."""
    t = next(x for x in tables if len(x.names) >= 40)
    st = STRATEGIES["sysv"]
    assert st.build is not None
    rec = bytearray(encode_index(st, st.build(t), len(t.names), True))
    stored = decode(bytes(rec), True)
    nbucket = stored.arrays["bucket"].__len__()
    chain_at = 16 + 8 + 4 * nbucket
    first = next(j for j in stored.arrays["bucket"] if j)
    rec[chain_at + 4 * (first - 1):chain_at + 4 * first] = struct.pack("<I", first)
    assert run(driver, t.names, bytes(rec), [t.names[0]]) == \
        ["reject sysv chain loops or leaves the table"]


def test_hash_functions_match(driver: Path) -> None:
    """The header's ELF and DJB hashes are the model's (through the sysv records)."""
    names = [b"printk", b"jbd2_journal_start", b"\xff\x80odd", b"a" * 200]
    for style in ("sysv", "sysv-djb"):
        st = STRATEGIES[style]
        assert st.build is not None
        t = Table(names)
        rec = encode_index(st, st.build(t), len(names), True)
        stored = decode(rec, True)
        fn = HASH_FUNCTIONS[stored.hash]
        assert fn is not None
        assert stored.arrays["hashes"] == [fn(n) for n in names]
        assert run(driver, names, rec, names)[1:] == expected(t, style, names)
