"""The loader model against the kernel itself: the same real module bytes, altered the
same way, go to the model and to Debian's kernel booted under QEMU (6.1, 6.12 and 7.x);
both must say the same lines and give the same verdicts: a missing dependency, a
proprietary license, a dropped namespace import, an altered CRC (with MODVERSIONS), a
version magic that differs, a common symbol, a forced load, a duplicate export, and the
users of a proprietary module's exports."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from fastlkm.depmod.probe import dependencies, probe_order
from fastlkm.io.codecs import decompress_file
from fastlkm.kernel.facts import License, Module
from fastlkm.kernel.module import parse_module
from fastlkm.loader.loader import Loader
from fastlkm.target import System
from tests.conftest import skip_or_fail
from tests.loader import mutate
from tests.qemu import boot_and_insmod, missing_tools

# the corpus kernels QEMU boots here (amd64), one per generation: 6.1, 6.12, 7.x
BOOTED = ("6.1-cloud-amd64", "6.12-amd64", "sid-cloud-amd64")
# pure-software corners of the tree, safe to initialise in a bare virtual machine
SAFE = ("kernel/fs/", "kernel/lib/", "kernel/crypto/", "kernel/net/")
# what the model speaks of (the kernel also logs signature taints and driver chatter)
MODELLED = re.compile(r"Unknown symbol|disagrees about version|from namespace|taints kernel|"
                      r"exports duplicate|please compile|kernel tainted\.|proprietary module|"
                      r"version magic|no symbol version")


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
    deps = dependencies(s.modules, s.order)
    by_name = {m.name: m for m in s.modules}
    vml = _vmlinux_exports(s)
    moddir = s.tree.moddir if s.tree else Path()

    def raw(m: Module) -> bytes:
        return decompress_file(str(moddir / m.path))

    def safe(m: Module) -> bool:
        return m.path.startswith(SAFE)

    leaves = sorted((m for m in s.modules if not deps[m.name]
                     and (m.has_versions or not s.kernel.modversions)),
                    key=lambda m: (len(m.imports), m.name))
    steps: Plan = []
    used: set[str] = set()

    # 1. a missing dependency: the top module of a small safe chain without one of its
    #    direct dependencies that nothing else in the chain needs
    top = drop = None
    for m in sorted(s.modules, key=lambda m: m.name):
        chain = probe_order(s.modules, s.order, [m.name])
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
    chain = probe_order(s.modules, s.order, [top.name])
    for c in chain:
        if c.name not in (top.name, drop.name):
            steps.append((f"dep {c.name}", c, raw(c), None))
    dropped = {e.name for e in drop.exports}
    steps.append((f"without {drop.name}", top, raw(top),
                  {i.name for i in top.imports if i.name in dropped}))
    used.update(c.name for c in chain)

    # 2. an altered CRC (where the kernel has MODVERSIONS)
    if s.kernel.modversions:
        crc_mod = next(m for m in leaves if m.name not in used and safe(m)
                       and any(i.name in vml for i in m.imports))
        sym = next(i.name for i in crc_mod.imports if i.name in vml and i.crc is not None)
        steps.append((f"crc {sym}", crc_mod,
                      mutate.unsigned(mutate.alter_crc(raw(crc_mod), sym)), {sym}))
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


def _write_steps(tmp_path: Path, steps: list) -> list[Path]:
    """Each step's module bytes in a file of its own, numbered in load order."""
    files = []
    for i, (_, _, data, _) in enumerate(steps):
        f = tmp_path / f"{i:03}.ko"
        f.write_bytes(data)
        files.append(f)
    return files


@pytest.mark.corpus
@pytest.mark.qemu
@pytest.mark.parametrize("kernel", BOOTED)
def test_model_says_what_the_kernel_says(system, tmp_path: Path, kernel: str) -> None:
    if reason := missing_tools():
        skip_or_fail(reason)
    s = system(kernel, "vmlinuz")
    steps = _plan(s)
    files = _write_steps(tmp_path, steps)
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
    assert model_ok == [unknown is None for _, _, _, unknown in steps]
    kinds = " ".join(model_lines)
    for needed in ("(err -2)", "from namespace", "taints kernel", "(err -22)",
                   *(["disagrees about version"] if s.kernel.modversions else [])):
        assert needed in kinds


# --- the other kinds of message, on every kernel the corpus boots ---------------------

# what the model must say for each step (None: it loads without a word)
SAYS = {"vermagic": "version magic", "common": "please compile with -fno-common",
        "forced": "bad vermagic: kernel tainted.", "exporter": None,
        "duplicate": "exports duplicate symbol", "owner Pro": "module license 'Pro' taints",
        "user inherits": "inheriting taint",
        "user of GPL-only": "module using GPL-only symbols uses symbols",
        "no version": "no symbol version for", "no version again": "no symbol version for"}


def _more_plan(s: System) -> Plan:
    """vermagic, -fno-common, a forced load, a duplicate export, a proprietary module
    and the modules using its exports (one that inherits its taint, one that uses
    GPL-only symbols first, where the tree has them), each on a safe module without
    dependencies (the users depend on the proprietary module alone)."""
    deps = dependencies(s.modules, s.order)
    vml = _vmlinux_exports(s)
    moddir = s.tree.moddir if s.tree else Path()
    names = {m.name for m in s.modules}

    def raw(m: Module) -> bytes:
        return decompress_file(str(moddir / m.path))

    def gpl_only(name: str) -> bool:
        return name in vml and vml[name].license == License.GPL_ONLY  # type: ignore[attr-defined]

    def inherits(user: Module, owner: Module) -> bool:
        """Does *user* reach *owner*'s export before any GPL-only symbol (the order
        simplify_symbols() resolves them in)?"""
        owned = {e.name for e in owner.exports}
        return next(i.name in owned for i in user.imports
                    if i.name in owned or gpl_only(i.name))

    leaves = sorted((m for m in s.modules if not deps[m.name] and m.path.startswith(SAFE)),
                    key=lambda m: (len(m.imports), m.name))
    users: dict[str, list[Module]] = {}
    for m in sorted(s.modules, key=lambda m: (len(m.imports), m.name)):
        if m.path.startswith(SAFE) and len(deps[m.name]) == 1:
            users.setdefault(next(iter(deps[m.name])), []).append(m)
    owners = [a for a in leaves if a.exports and a.name in users
              and not any(gpl_only(i.name) for i in a.imports)]
    if not owners:
        skip_or_fail("no proprietary-compatible module with a user")
    # the owner whose users show both messages, if one does
    owner = max(owners, key=lambda a: len({inherits(u, a) for u in users[a.name]}))
    by_kind = {inherits(u, owner): u for u in reversed(users[owner.name])}
    rest = [m for m in leaves if m.name != owner.name and m not in by_kind.values()]

    def common_ok(m: Module) -> bool:
        try:
            mutate.make_common(raw(m))
        except AssertionError:
            return False
        return True

    vermagic = rest[0]
    common = next(m for m in rest[1:] if common_ok(m))
    forced = next(m for m in rest[1:] if m is not common)
    exporter = next(m for m in rest[1:] if m.exports and m not in (common, forced))
    twin = next(exporter.name[:-1] + c for c in "xyz"
                if exporter.name[:-1] + c not in names)
    u = mutate.unsigned
    steps: Plan = [
        ("vermagic", vermagic, u(mutate.alter_vermagic(raw(vermagic))), None),
        ("common", common, u(mutate.make_common(raw(common))), None),
        ("forced", forced, u(mutate.drop_vermagic(raw(forced))), None),
        ("exporter", exporter, u(raw(exporter)), None),
        ("duplicate", exporter, u(mutate.rename(raw(exporter), exporter.name, twin)), None),
        ("owner Pro", owner, u(mutate.set_license(raw(owner), "Pro")), None),
    ]
    if True in by_kind:
        steps.append(("user inherits", by_kind[True], u(raw(by_kind[True])), None))
    if False in by_kind:
        steps.append(("user of GPL-only", by_kind[False], u(raw(by_kind[False])), None))
    if s.kernel.modversions:
        # modules without the version of one symbol, then of two: each is a refusal
        taken = {m.name for _, m, _, _ in steps}
        for n, (label, m) in enumerate(zip(
                ("no version", "no version again"),
                [m for m in rest[1:] if m.name not in taken and m.has_versions
                 and sum(i.name in vml for i in m.imports) >= 2], strict=False)):
            data = raw(m)
            for sym in [i.name for i in m.imports if i.name in vml][:n + 1]:
                data = mutate.hide_version(data, sym)
            steps.append((label, m, u(data), None))
    return steps


@pytest.mark.corpus
@pytest.mark.qemu
@pytest.mark.parametrize("kernel", BOOTED)
def test_every_kind_of_message_as_the_kernel_says_it(system, tmp_path: Path,
                                                      kernel: str) -> None:
    """Each kind of message the model prints besides the four above -- a version magic
    that differs, a common symbol, a forced load (no vermagic), a duplicate export, a
    proprietary module's taint and its inheritance (7.x: GPL-only as __kflagstab says)
    -- is said by the kernel itself, line for line, with the same verdicts."""
    if reason := missing_tools():
        skip_or_fail(reason)
    s = system(kernel, "vmlinuz")
    steps = _more_plan(s)
    files = _write_steps(tmp_path, steps)
    loader = Loader(s.kernel)
    model_ok: dict[str, bool] = {}
    model_lines: list[str] = []
    for f, (label, m, _, _) in zip(files, steps, strict=True):
        r = loader.load(parse_module(f.read_bytes(), str(f), m.path))
        model_ok[label] = r.ok
        model_lines += [x.text for x in r.messages if MODELLED.search(x.text)]
        said = " ".join(x.text for x in r.messages)
        want = SAYS[label]
        assert said == "" if want is None else want in said, (label, said)
    assert s.tree is not None and s.tree.vmlinuz is not None
    boot = boot_and_insmod(s.tree.vmlinuz, files)
    print(f"\n{kernel}: {len(files)} insmods, boot to power-off {boot.seconds:.1f} s")
    for line in _kernel_lines(boot.dmesg):
        print(f"  {line}")
    assert {label: v.status == 0 for (label, *_), v in zip(steps, boot.verdicts, strict=True)} \
        == model_ok
    assert _kernel_lines(boot.dmesg) == list(dict.fromkeys(model_lines))
    assert [model_ok[k] for k in ("vermagic", "common", "forced", "exporter", "duplicate")] \
        == [False, False, True, True, False]


@pytest.mark.corpus
@pytest.mark.qemu
@pytest.mark.parametrize("kernel", ["sid-cloud-amd64"])   # 7.x exports to named modules
def test_module_namespace_as_the_kernel_says_it(system, tmp_path: Path, kernel: str) -> None:
    """An export to named modules only (namespace ``module:NAME``, EXPORT_SYMBOL_FOR_MODULES):
    the module named loads, the same module under another name is refused, by the model
    and by the kernel, with the same lines."""
    if reason := missing_tools():
        skip_or_fail(reason)
    s = system(kernel, "vmlinuz")
    deps = dependencies(s.modules, s.order)
    names = {m.name for m in s.modules}
    moddir = s.tree.moddir if s.tree else Path()
    for_modules = {e.namespace for e in s.kernel.exports if e.namespace.startswith("module:")}
    named = next((m for m in sorted(s.modules, key=lambda m: m.name)
                  if f"module:{m.name}" in for_modules and not deps[m.name]
                  and m.path.startswith(SAFE)), None)
    if named is None:
        skip_or_fail("no safe module that vmlinux exports to by name")
    ns = f"module:{named.name}"
    other = next(named.name[:-1] + c for c in "xyz" if named.name[:-1] + c not in names)
    data = mutate.unsigned(decompress_file(str(moddir / named.path)))
    wanted = {i.name for i in named.imports
              if any(e.name == i.name and e.namespace == ns for e in s.kernel.exports)}
    steps = [(f"as {other}", mutate.rename(data, named.name, other), wanted),
             (f"as {named.name}", data, set())]
    files = []
    loader = Loader(s.kernel)
    model_ok: dict[str, bool] = {}
    model_lines: list[str] = []
    for i, (label, body, unknown) in enumerate(steps):
        f = tmp_path / f"{i:03}.ko"
        f.write_bytes(body)
        files.append(f)
        r = loader.load(parse_module(body, str(f), named.path))
        model_ok[label] = r.ok
        model_lines += [x.text for x in r.messages if MODELLED.search(x.text)]
        assert {x.symbol for x in r.failures if x.kind == "namespace"} == unknown, label
    assert wanted and model_ok == {f"as {other}": False, f"as {named.name}": True}
    assert any(f"from namespace {ns}, but does not import it." in x for x in model_lines)
    assert s.tree is not None and s.tree.vmlinuz is not None
    boot = boot_and_insmod(s.tree.vmlinuz, files)
    for line in _kernel_lines(boot.dmesg):
        print(f"  {line}")
    assert {label: v.status == 0 for (label, *_), v in zip(steps, boot.verdicts, strict=True)} \
        == model_ok
    assert _kernel_lines(boot.dmesg) == list(dict.fromkeys(model_lines))
