"""The QEMU harness against a real Debian kernel, and its pure helpers.

One boot serves every kernel scenario: a failed insmod leaves no state behind, so the
top module is first tried alone, then its dependency chain is loaded in order, then a
module stripped of its signature and a module whose signed bytes were changed.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.conftest import corpus_module, skip_or_fail  # noqa: E402
from tests.qemu import (  # noqa: E402
    MODULE_SIG_MAGIC,
    BootResult,
    Verdict,
    boot_and_insmod,
    missing_tools,
    newc_archive,
    strip_signature,
)

KERNEL = "6.1-cloud-amd64"
# top modules whose dependency chains are pure software, preferred in this order
CHAIN_TOPS = ("kernel/fs/ext4/ext4.ko", "kernel/fs/nfs/nfs.ko", "kernel/fs/btrfs/btrfs.ko")
# dependency-free modules with nothing to probe
LEAVES = ("kernel/lib/crc-itu-t.ko", "kernel/lib/crc16.ko", "kernel/lib/crc7.ko")
UNKNOWN = re.compile(r"\] (\S+): Unknown symbol (\S+) \(err (-?\d+)\)")


def _corpus() -> tuple[Path, str]:
    root, release = corpus_module().fetch(KERNEL)
    return Path(root), release


def _modname(rel: str) -> str:
    """The kernel's name for the module at *rel*, as depmod derives it."""
    return Path(rel).name.split(".ko")[0].replace("-", "_")


@dataclass(frozen=True)
class Plan:
    moddir: Path
    top: str  # relative to moddir
    deps: list[str]  # in modules.dep order: a module's dependencies come after it
    leaf: str
    stripped: Path
    tampered: Path

    @property
    def chain(self) -> list[str]:
        return [*reversed(self.deps), self.top]


@dataclass(frozen=True)
class Boot:
    plan: Plan
    result: BootResult
    alone: Verdict
    chain: list[Verdict]
    stripped: Verdict
    tampered: Verdict


def _modules_dep(root: Path, release: str) -> dict[str, list[str]]:
    moddir = root / "lib/modules" / release
    if not (moddir / "modules.dep").exists():
        if shutil.which("depmod") is None:
            skip_or_fail("modules.dep missing and no depmod (Debian package kmod)")
        subprocess.run(["depmod", "-b", str(root), release], check=True)
    dep: dict[str, list[str]] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        name, _, rest = line.partition(":")
        dep[name] = rest.split()
    return dep


@pytest.fixture(scope="module")
def boot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Boot]:
    if reason := missing_tools():
        skip_or_fail(reason)
    root, release = _corpus()
    moddir = root / "lib/modules" / release
    dep = _modules_dep(root, release)
    top = next((t for t in CHAIN_TOPS if len(dep.get(t, ())) >= 2), None)
    leaf = next((m for m in LEAVES if m in dep and not dep[m]), None)
    if top is None or leaf is None:
        skip_or_fail(f"no known dependency chain or leaf module among {KERNEL}'s modules")
    tmp = tmp_path_factory.mktemp("modules")
    signed = (moddir / leaf).read_bytes()
    stripped = tmp / Path(leaf).name
    stripped.write_bytes(strip_signature(signed))
    # flip a bit of e_ident's padding, which no ELF check reads: only the signature sees it
    tampered = tmp / f"tampered-{Path(leaf).name}"
    tampered.write_bytes(signed[:9] + bytes([signed[9] ^ 1]) + signed[10:])

    plan = Plan(moddir, top, dep[top], leaf, stripped, tampered)
    modules = [moddir / top, *(moddir / m for m in plan.chain), stripped, tampered]
    result = boot_and_insmod(root / "boot" / f"vmlinuz-{release}", modules)
    print(f"\n{KERNEL}: {len(modules)} insmods, boot to power-off {result.seconds:.1f} s")
    v = result.verdicts
    yield Boot(plan, result, v[0], v[1:-2], v[-2], v[-1])


def _dmesg_lines(boot: Boot, needle: str) -> list[str]:
    return [line for line in boot.result.dmesg.splitlines() if needle in line]


@pytest.mark.corpus
@pytest.mark.qemu
def test_dependency_chain_loads_in_order(boot: Boot) -> None:
    assert [v.module for v in boot.chain] == [Path(m).name for m in boot.plan.chain]
    assert [(v.module, v.status, v.output) for v in boot.chain] == [
        (v.module, 0, "") for v in boot.chain
    ]
    # the only Unknown symbol lines are the lone top module's, from before its chain
    names = {m for m, _, _ in UNKNOWN.findall(boot.result.dmesg)}
    assert names <= {_modname(boot.plan.top)}


@pytest.mark.corpus
@pytest.mark.qemu
def test_top_module_alone_names_every_missing_symbol(boot: Boot) -> None:
    top = _modname(boot.plan.top)
    assert boot.alone.status != 0
    assert "unknown symbol" in boot.alone.output
    found = UNKNOWN.findall(boot.result.dmesg)
    assert found
    assert {(m, err) for m, _, err in found} == {(top, "-2")}
    # every symbol the kernel missed is one that depmod says a dependency exports
    providers = {_modname(d) for d in boot.plan.deps}
    exports: dict[str, str] = {}
    for line in (boot.plan.moddir / "modules.symbols").read_text().splitlines():
        if line.startswith("alias symbol:"):
            sym, owner = line.removeprefix("alias symbol:").split()
            exports[sym] = owner
    missing = {sym for _, sym, _ in found}
    assert {exports.get(sym) for sym in missing} <= providers


@pytest.mark.corpus
@pytest.mark.qemu
def test_stripped_module_loads_with_taint_tampered_one_is_refused(boot: Boot) -> None:
    leaf = _modname(boot.plan.leaf)
    assert (boot.stripped.status, boot.stripped.output) == (0, "")
    assert _dmesg_lines(boot, f"{leaf}: module verification failed: signature and/or "
                              "required key missing - tainting kernel")
    assert boot.tampered.status != 0
    assert "Key was rejected by service" in boot.tampered.output


def _signed(body: bytes, sig: bytes, signer: bytes = b"", key_id: bytes = b"") -> bytes:
    info = struct.pack(">BBBBB3xI", 0, 0, 2, len(signer), len(key_id), len(sig))
    return body + signer + key_id + sig + info + MODULE_SIG_MAGIC


def test_strip_signature_removes_the_trailer() -> None:
    body = b"\x7fELF" + bytes(60)
    assert strip_signature(_signed(body, b"S" * 300)) == body
    assert strip_signature(_signed(body, b"S" * 3, b"who", b"id")) == body
    assert strip_signature(body) == body


def test_strip_signature_rejects_a_trailer_longer_than_the_file() -> None:
    with pytest.raises(ValueError):
        strip_signature(_signed(b"", b"S" * 10)[5:])
    with pytest.raises(ValueError):
        strip_signature(MODULE_SIG_MAGIC)


@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio not installed")
def test_newc_archive_reads_back_with_cpio(tmp_path: Path) -> None:
    archive = newc_archive([
        ("bin", 0o040755, b"", 0),
        ("bin/hello", 0o100755, b"hi there\n", 0),
        ("odd", 0o100644, b"x" * 5, 0),
        ("dev/console", 0o020600, b"", 5 << 8 | 1),
    ])
    listing = subprocess.run(["cpio", "-itv", "--quiet"], input=archive, capture_output=True,
                             check=True).stdout.decode()
    assert [line.split()[-1] for line in listing.splitlines()] == [
        "bin", "bin/hello", "odd", "dev/console"]
    assert "5," in listing.splitlines()[-1] and listing.startswith("d")
    subprocess.run(["cpio", "-id", "--quiet", "bin/hello", "odd"], input=archive, cwd=tmp_path,
                   check=True)
    assert (tmp_path / "bin/hello").read_bytes() == b"hi there\n"
    assert (tmp_path / "odd").read_bytes() == b"xxxxx"
