"""The fast loader inside the real kernel: Debian's 6.12 with the patch series of
src/fastlkm/data/linux, built by ``fastlkm kernel build`` (cached under
~/.cache/fastlkm/kernel like the corpus; the first run on a machine builds it) and booted
under QEMU.

- every strategy's lookups and strcmp() calls, counted by the kernel, equal what the
  loader model predicts for the same modules in the same order, round after round, with
  ``module.sig_enforce=1`` (every processed module is signed) and no self-check mismatch;
- damaged lookup tables (bit flips, cut sections, looping chains: 100 seeded cases in
  one boot) never crash the kernel: each damaged table is named in one line and binary
  searched, the module loads and the module that imports from it resolves.
"""

from __future__ import annotations

import random
import re
import struct
import subprocess
from pathlib import Path

import pytest

from fastlkm.depmod.probe import probe_order
from fastlkm.elf.reader import ElfFile
from fastlkm.embedded.codec import split_records
from fastlkm.embedded.read import verify_image
from fastlkm.kbuild.bench import KERNEL_STRATEGIES, init_script, parse_guest, run_bench
from fastlkm.kbuild.build import (
    SOURCE_PACKAGE,
    KernelBuild,
    build_kernel,
    pristine_source,
    series,
)
from fastlkm.kbuild.qemu import INIT_HEAD, INIT_TAIL, busybox_initramfs, run_guest
from fastlkm.kernel.signature import split_signature
from fastlkm.target import open_system
from tests.conftest import skip_or_fail

pytestmark = [pytest.mark.qemu, pytest.mark.kernel]

KERNEL_CACHE = Path.home() / ".cache/fastlkm/kernel"
HERE = Path(__file__).resolve()
PATCHED_HEADER = "kernel/module/ksymhash.h"


def test_the_patch_series_carries_the_lookup_core_byte_for_byte() -> None:
    """One source for both hosts: the header the series adds to the kernel is
    src/fastlkm/lookup/ksymhash.h, byte for byte."""
    want = (HERE.parents[2] / "src/fastlkm/lookup/ksymhash.h").read_text().splitlines()
    for p in series():
        lines = p.read_text().splitlines()
        if f"+++ b/{PATCHED_HEADER}" not in lines:
            continue
        at = lines.index(f"+++ b/{PATCHED_HEADER}") + 2      # past the @@ line
        got = []
        for line in lines[at:]:
            if not line.startswith("+"):
                break
            got.append(line[1:])
        assert got == want, f"{p.name}: {PATCHED_HEADER} differs from the package's"
        return
    pytest.fail(f"no patch of the series adds {PATCHED_HEADER}")


def test_the_series_is_checkpatch_clean() -> None:
    """Each patch passes the kernel's own scripts/checkpatch.pl --strict: no error, no
    check, and no warning but the one asking whether MAINTAINERS needs a new file."""
    try:
        tree = pristine_source(KERNEL_CACHE)
    except OSError as e:
        skip_or_fail(f"cannot fetch {SOURCE_PACKAGE}: {e}")
        raise
    new_files = 0
    for p in series():
        r = subprocess.run(["perl", "scripts/checkpatch.pl", "--strict", "--terse",
                            "--show-types", str(p)], cwd=tree, capture_output=True,
                           text=True)
        # (1: warnings; stderr may say that spdxcheck.py lacks python3-ply: not ours)
        assert r.returncode in (0, 1), (p.name, r.stderr[-300:])
        found = [line for line in r.stdout.splitlines()
                 if re.search(r": (ERROR|WARNING|CHECK):", line)]
        assert all(":FILE_PATH_CHANGES:" in line for line in found), (p.name, found)
        new_files += len(found)
    assert new_files, "checkpatch said nothing of the files the series adds"


@pytest.fixture(scope="module")
def built() -> KernelBuild:
    try:
        return build_kernel(root=KERNEL_CACHE)
    except OSError as e:
        skip_or_fail(f"cannot build {SOURCE_PACKAGE}: {e}")
        raise


def test_counts_equal_the_model_under_signature_enforcement(built: KernelBuild) -> None:
    report = run_bench(rounds=2, build=built)
    # a module may fail its own init under QEMU (no such hardware); none may be refused
    # by the loader: symbols, versions, signatures
    assert not report.refusals, report.text()
    assert len(report.left_out) < report.modules, report.text()
    for s in report.strategies:
        assert s.failures == 0, report.text()
        assert s.mismatches == 0, report.text()
        assert s.kernel_lookups > 0, report.text()
        assert (s.kernel_lookups, s.kernel_strcmp) == (s.model_lookups, s.model_strcmp), \
            f"{s.name}\n{report.text()}"
    by = {s.name: s for s in report.strategies}
    # the tables are used: a hashing strategy compares far fewer names than linear
    for name in ("sysv", "sysv-djb", "gnu", "perfect", "global"):
        assert by[name].kernel_strcmp < by["bsearch"].kernel_strcmp, report.text()
        assert by[name].fallbacks == 0, report.text()
    assert by["bsearch"].kernel_strcmp < by["linear"].kernel_strcmp


def _damage(data: bytes, rng: random.Random, case: int) -> tuple[bytes, str]:
    """A module with one .htable damaged: flipped bits, a word overwritten, a SysV chain
    made to loop, or the section cut short in the section header."""
    elf = ElfFile(data, "m")
    secs = [s for s in elf.sections if s.name.endswith(".htable")]
    sec = secs[case % len(secs)]
    out = bytearray(data)
    body = elf.section_data(sec)
    kind = ("flip", "word", "loop", "cut")[case % 4]
    if kind == "flip":
        for _ in range(rng.randint(1, 3)):
            bit = rng.randrange(8 * sec.size)
            out[sec.offset + bit // 8] ^= 1 << (bit % 8)
    elif kind == "word":
        pos = rng.randrange(sec.size // 4) * 4
        out[sec.offset + pos:sec.offset + pos + 4] = struct.pack(
            "<I", rng.choice([0, 1, 0xFFFFFFFF, rng.getrandbits(32)]))
    elif kind == "loop":
        # the sysv record (layout 2): point an entry's chain link at itself
        off, rec = next((o, r) for o, r in split_records(body, True) if r[5] == 2)
        nbucket = struct.unpack_from("<I", rec, 16)[0]
        n = struct.unpack_from("<I", rec, 8)[0]
        j = rng.randrange(n)
        at = sec.offset + off + 16 + 8 + 4 * nbucket + 4 * j
        out[at:at + 4] = struct.pack("<I", j + 1)
    else:
        # sh_size of the section header: ELF64 little-endian, entry at e_shoff
        shoff = struct.unpack_from("<Q", data, 0x28)[0]
        at = shoff + 64 * sec.index + 32
        out[at:at + 8] = struct.pack("<Q", rng.randrange(1, sec.size))
    return bytes(out), f"{kind} {sec.name}"


def test_damaged_tables_are_refused_and_binary_searched(built: KernelBuild) -> None:
    system = open_system(str(built.modroot), source="vmlinux")
    # a module with exports whose importer loads on top of it: the importer resolves
    # through the damaged tables' fallback
    order = probe_order(system.modules, system.order, ["ext4"])
    names = [m.name for m in order]
    if "jbd2" not in names:
        skip_or_fail("the build has no ext4 with jbd2 as modules")
    victim = next(m for m in order if m.name == "jbd2")
    plain, _ = split_signature((built.moddir / victim.path).read_bytes())
    rng = random.Random(20091015)
    files = [(f"modules/{m.name}.ko", 0o100644, (built.moddir / m.path).read_bytes(), 0)
             for m in order]
    cases = []
    for k in range(100):
        bad, what = _damage(plain, rng, k)
        files.append((f"modules/bad{k}.ko", 0o100644, bad, 0))
        problems = verify_image(ElfFile(bad, f"bad{k}"))
        cases.append((what, bool(problems)))
    deps = [n for n in names if n not in ("jbd2", "ext4")]
    init = INIT_HEAD + f"""
for m in {' '.join(deps)}; do insmod /modules/$m.ko || echo "@@FAIL dep $m" >&3; done
K=0
while [ $K -lt 100 ]; do
    set -- {' '.join(KERNEL_STRATEGIES[2:6])}
    shift $((K % 4))
    echo $1 > /sys/module/module/parameters/lookup
    insmod /modules/bad$K.ko || echo "@@FAIL $K insmod jbd2" >&3
    insmod /modules/ext4.ko || echo "@@FAIL $K insmod ext4" >&3
    rmmod ext4 || echo "@@FAIL $K rmmod ext4" >&3
    rmmod jbd2 || echo "@@FAIL $K rmmod jbd2" >&3
    echo "@@CASE $K" >&3
    dmesg -c | grep -e "jbd2: __ksymtab" -e "Oops" -e "BUG" -e "Unknown symbol" >&3
    K=$((K + 1))
done
echo "@@LIST done" >&3
""" + INIT_TAIL
    guest = run_guest(built.bzimage, busybox_initramfs(init, files), timeout=1800)
    assert "@@LIST done" in guest.results, guest.console[-3000:]
    assert "@@FAIL" not in guest.results, guest.results[-3000:]
    body = guest.results.split("@@LIST done", 1)[0]
    blocks = re.split(r"^@@CASE (\d+)\n", body, flags=re.M)
    said = {int(blocks[i]): blocks[i + 1] for i in range(1, len(blocks) - 1, 2)}
    refused = 0
    for k, (what, bad) in enumerate(cases):
        text = said.get(k, "")
        assert "Oops" not in text and "BUG" not in text and "Unknown symbol" not in text, \
            (k, what, text)
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if bad:
            # the kernel names the module and the damaged section, in one line each
            assert lines and all(re.search(r"jbd2: __ksymtab(_gpl)?\.htable: .*binary "
                                           r"search instead", ln) for ln in lines), \
                (k, what, text)
            refused += 1
    assert refused >= 50, f"only {refused} of 100 damaged tables were caught by verify"


def test_init_script_interleaves_strategies() -> None:
    """Each measured round visits every strategy, each in another position."""
    text = init_script(["a", "b"], KERNEL_STRATEGIES, 3)
    rounds = re.search(r'for S in (.*); do', text)
    assert rounds is not None
    orders = re.findall(r'"([^"]*)"', rounds[1])
    assert len(orders) == 3
    assert all(sorted(o.split()) == sorted(KERNEL_STRATEGIES) for o in orders)
    assert len({o.split()[0] for o in orders}) == 3


def test_guest_report_parsing() -> None:
    head = "strategy lookups strcmp ns\n"
    text = ("@@NOLOAD x\n@@STUCK b\n@@STUCK a\n@@LIST c d\n"
            f"@@STATS 1 sysv\n{head}sysv 10 20 30\ncheck_ns 5\n"
            f"@@STATS 2 sysv\n{head}sysv 20 40 70\n@@DMESG\nhello\n@@END\n")
    g = parse_guest(text)
    assert g.list == ["c", "d"] and g.noload == ["x"] and g.stuck == ["a", "b"]
    assert [s[2]["sysv"]["strcmp"] for s in g.snapshots] == [20, 40]
    assert g.dmesg == "hello\n"


def _set_license(data: bytes, new: bytes) -> bytes:
    """The module with its .modinfo license=GPL replaced by *new* (same length)."""
    old = b"license=GPL\0"
    assert len(new) == 3 and data.count(old) == 1
    return data.replace(old, b"license=" + new + b"\0")


def _break_crc(data: bytes, elf: ElfFile) -> tuple[bytes, str]:
    """The module with the CRC of its second __versions entry changed; its symbol."""
    sec = elf.section("__versions")
    assert sec is not None and sec.size >= 128
    entry = sec.offset + 64
    name = data[entry + 8:entry + 64].split(b"\0")[0].decode()
    out = bytearray(data)
    out[entry] ^= 0x5A
    return bytes(out), name


def _rename(data: bytes, elf: ElfFile, old: bytes, new: bytes) -> bytes:
    """The module under another name of the same length: .modinfo's name= and the name
    in .gnu.linkonce.this_module (struct module: state, list, then name[], at 24 on
    x86_64)."""
    assert len(old) == len(new)
    sec = elf.section(".gnu.linkonce.this_module")
    assert sec is not None
    out = bytearray(data.replace(b"name=" + old + b"\0", b"name=" + new + b"\0"))
    at = sec.offset + 24
    assert out[at:at + len(old) + 1] == old + b"\0"
    out[at:at + len(new)] = new
    return bytes(out)


def test_every_strategy_refuses_as_the_stock_kernel(built: KernelBuild) -> None:
    """The same refusals under every strategy, line for line: a missing dependency
    (Unknown symbol), a proprietary license (its GPL-only imports unknown, the taint), a
    changed CRC (disagrees about version), and a duplicate export (jbd2 under another
    name, the same exports); the stock kernel's
    words are those of module.lookup=bsearch, mainline's code path."""
    system = open_system(str(built.modroot), source="vmlinux")
    order = probe_order(system.modules, system.order, ["ext4"])
    by = {m.name: m for m in order}
    if not {"ext4", "jbd2", "mbcache"} <= set(by):
        skip_or_fail("the build has no ext4 with jbd2 and mbcache as modules")
    raw = {n: split_signature((built.moddir / m.path).read_bytes())[0] for n, m in by.items()}
    crc_bad, crc_sym = _break_crc(raw["ext4"], ElfFile(raw["ext4"], "ext4"))
    deps = [m.name for m in order if m.name not in ("ext4", "jbd2")]
    files = [(f"modules/{n}.ko", 0o100644, d, 0) for n, d in raw.items()]
    files += [("modules/ext4_pro.ko", 0o100644, _set_license(raw["ext4"], b"Pro"), 0),
              ("modules/ext4_crc.ko", 0o100644, crc_bad, 0),
              ("modules/jbd3.ko", 0o100644,
               _rename(raw["jbd2"], ElfFile(raw["jbd2"], "jbd2"), b"jbd2", b"jbd3"), 0)]
    init = INIT_HEAD + f"""
for m in {' '.join(deps)}; do insmod /modules/$m.ko || echo "@@FAIL dep $m" >&3; done
dmesg -c > /dev/null
for s in {' '.join(KERNEL_STRATEGIES)}; do
    echo $s > /sys/module/module/parameters/lookup
    echo "@@STRATEGY $s" >&3
    insmod /modules/ext4.ko
    insmod /modules/jbd2.ko || echo "@@FAIL $s jbd2" >&3
    insmod /modules/ext4_pro.ko
    insmod /modules/ext4_crc.ko
    insmod /modules/jbd2.ko
    insmod /modules/jbd3.ko
    insmod /modules/ext4.ko || echo "@@FAIL $s ext4" >&3
    rmmod ext4
    rmmod jbd2
    dmesg -c | sed -e 's/^\\[[ 0-9.]*\\] //' >&3
done
echo "@@LIST done" >&3
""" + INIT_TAIL
    guest = run_guest(built.bzimage, busybox_initramfs(init, files), timeout=900)
    body = guest.results.split("@@LIST done", 1)[0]
    assert "@@FAIL" not in body, body[-3000:]
    said = dict(re.findall(r"^@@STRATEGY (\S+)\n(.*?)(?=^@@STRATEGY|\Z)", body, re.M | re.S))
    assert set(said) == set(KERNEL_STRATEGIES)
    # taints are printed once per boot: the refusals are compared, line for line
    refused = {s: [ln for ln in text.splitlines()
                   if re.search(r"Unknown symbol|disagrees about|duplicate symbol", ln)]
               for s, text in said.items()}
    stock = refused["bsearch"]
    # what a stock kernel says for each: checked here so that an empty log cannot pass
    assert any(ln.startswith("ext4: Unknown symbol jbd2_") for ln in stock), stock
    assert "ext4: module license 'Pro' taints kernel." in body
    assert f"ext4: disagrees about version of symbol {crc_sym}" in stock, stock
    assert any(ln.startswith("jbd3: exports duplicate symbol") and ln.endswith("(owned by jbd2)")
               for ln in stock), stock
    for s in KERNEL_STRATEGIES:
        assert refused[s] == stock, (s, refused[s], stock)
