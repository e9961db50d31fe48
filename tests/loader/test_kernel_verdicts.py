"""The loader model against the kernel itself: the same real module bytes, altered the
same way, go to the model and to Debian's kernel booted under QEMU; both must say the
same lines (failure paths: a missing dependency, a proprietary license, a dropped
namespace import, an altered CRC)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from fastlkm.io.codecs import decompress_file
from fastlkm.kernel.facts import License, Module
from fastlkm.kernel.module import parse_module
from fastlkm.loader.loader import Loader, dependency_map, load_order
from fastlkm.target import System
from tests.conftest import skip_or_fail
from tests.loader import mutate
from tests.qemu import boot_and_insmod, missing_tools

KERNEL = "6.1-cloud-amd64"
# pure-software corners of the tree, safe to initialise in a bare virtual machine
SAFE = ("kernel/fs/", "kernel/lib/", "kernel/crypto/", "kernel/net/")
# what the model speaks of (the kernel also logs signature taints and driver chatter)
MODELLED = re.compile(r"Unknown symbol|disagrees about version|from namespace|taints kernel|"
                      r"exports duplicate|please compile|kernel tainted\.|proprietary module")


@dataclass
class Step:
    label: str
    data: bytes
    module: Module


def _vmlinux_exports(s: System) -> dict[str, object]:
    return {e.name: e for e in s.kernel.exports}


Plan = list[tuple[str, Module, bytes, set[str] | None]]


def _plan(s: System) -> Plan:
    """The insmod sequence: (label, module facts, bytes to load, the symbols that must
    be unknown, or None for a module that must load)."""
    deps = dependency_map(s.modules, s.kernel)
    by_name = {m.name: m for m in s.modules}
    vml = _vmlinux_exports(s)
    moddir = s.tree.moddir if s.tree else Path()

    def raw(m: Module) -> bytes:
        return decompress_file(str(moddir / m.path))

    def safe(m: Module) -> bool:
        return m.path.startswith(SAFE)

    leaves = sorted((m for m in s.modules if not deps[m.name] and m.has_versions),
                    key=lambda m: (len(m.imports), m.name))
    steps: Plan = []
    used: set[str] = set()

    # 1. a missing dependency: the top module of a small safe chain without one of its
    #    direct dependencies that nothing else in the chain needs
    top = drop = None
    for m in sorted(s.modules, key=lambda m: m.name):
        chain = load_order(s.modules, [m.name], s.kernel)
        if not 3 <= len(chain) <= 6 or not all(safe(c) for c in chain):
            continue
        others = [c for c in chain if c.name != m.name]
        for d in deps[m.name]:
            if not any(d in deps[o.name] for o in others):
                top, drop = m, by_name[d]
                break
        if top:
            break
    if top is None or drop is None:
        skip_or_fail("no safe dependency chain found")
    chain = load_order(s.modules, [top.name], s.kernel)
    for c in chain:
        if c.name not in (top.name, drop.name):
            steps.append((f"dep {c.name}", c, raw(c), None))
    dropped = {e.name for e in drop.exports}
    steps.append((f"without {drop.name}", top, raw(top),
                  {i.name for i in top.imports if i.name in dropped}))
    used.update(c.name for c in chain)

    # 2. an altered CRC
    crc_mod = next(m for m in leaves if m.name not in used and safe(m)
                   and any(i.name in vml for i in m.imports))
    sym = next(i.name for i in crc_mod.imports if i.name in vml and i.crc is not None)
    steps.append((f"crc {sym}", crc_mod, mutate.unsigned(mutate.alter_crc(raw(crc_mod), sym)),
                  {sym}))
    used.add(crc_mod.name)

    # 3. a dropped namespace import
    for m in leaves:
        ns_used = {vml[i.name].namespace for i in m.imports  # type: ignore[attr-defined]
                   if i.name in vml and vml[i.name].namespace}  # type: ignore[attr-defined]
        common = sorted(ns_used & set(m.import_ns))
        if m.name not in used and common:
            data = mutate.unsigned(mutate.drop_import_ns(raw(m), common[0]))
            steps.append((f"namespace {common[0]}", m, data,
                          {i.name for i in m.imports if i.name in vml
                           and vml[i.name].namespace == common[0]}))  # type: ignore[attr-defined]
            used.add(m.name)
            break
    else:
        skip_or_fail("no module importing a namespace")

    # 4. a proprietary license, last: the kernel prints that taint once per boot
    lic_mod = next(m for m in leaves if m.name not in used and safe(m)
                   and any(i.name in vml and vml[i.name].license == License.GPL_ONLY  # type: ignore[attr-defined]
                           for i in m.imports))
    gpl_only = {i.name for i in lic_mod.imports if i.name in vml
                and vml[i.name].license == License.GPL_ONLY}  # type: ignore[attr-defined]
    steps.append(("license Pro", lic_mod,
                  mutate.unsigned(mutate.set_license(raw(lic_mod), "Pro")), gpl_only))
    return steps


def _kernel_lines(dmesg: str) -> list[str]:
    out = []
    for line in dmesg.splitlines():
        m = re.match(r"^\[\s*\d+\.\d+\] (.*)$", line)
        if m and MODELLED.search(m.group(1)):
            out.append(m.group(1))
    # busybox insmod retries a failed finit_module with init_module: every line twice
    return list(dict.fromkeys(out))


@pytest.mark.corpus
@pytest.mark.qemu
def test_model_says_what_the_kernel_says(system, tmp_path: Path) -> None:
    if reason := missing_tools():
        skip_or_fail(reason)
    s = system(KERNEL, "vmlinuz")
    steps = _plan(s)
    files = []
    for i, (_, _, data, _) in enumerate(steps):
        f = tmp_path / f"{i:03}.ko"
        f.write_bytes(data)
        files.append(f)
    # the model reads the very bytes the kernel gets
    loader = Loader(s.kernel)
    model_lines: list[str] = []
    model_ok = []
    for f, (label, m, _, unknown) in zip(files, steps, strict=True):
        facts = parse_module(f.read_bytes(), str(f), m.path)
        r = loader.load(facts)
        model_ok.append(r.ok)
        model_lines += [x.text for x in r.messages if MODELLED.search(x.text)]
        # exactly the right symbols fail
        failed = {x.symbol for x in r.failures if x.kind == "unknown_symbol"}
        assert failed == (unknown or set()), label
    assert s.tree is not None
    vmlinuz = s.tree.vmlinuz
    assert vmlinuz is not None
    boot = boot_and_insmod(vmlinuz, files)
    kernel_ok = [v.status == 0 for v in boot.verdicts]
    labels = [label for label, _, _, _ in steps]
    assert dict(zip(labels, kernel_ok, strict=True)) == dict(zip(labels, model_ok, strict=True))
    assert _kernel_lines(boot.dmesg) == list(dict.fromkeys(model_lines))
    # and the failures are the right ones
    assert model_ok[:-4] == [True] * (len(steps) - 4)
    assert model_ok[-4:] == [False] * 4
    kinds = " ".join(model_lines)
    for needed in ("(err -2)", "disagrees about version", "from namespace",
                   "taints kernel", "(err -22)"):
        assert needed in kinds
