"""Modules built elsewhere, judged by the kernel itself (Debian's 6.1, 6.12 and 7.x under
QEMU): an out-of-tree module built against Debian's headers (unsigned, and signed with a
throwaway key; on 7.x, whose headers want a newer gcc than Debian 12's, two of its own
modules made out-of-tree instead), the module built for each other generation, a module
of each of Debian's other kernels, an executable instead of a relocatable object, another
architecture's module, a Debian-signed module
with one byte changed and the same module intact -- booted once per kernel as Debian
boots (signatures not enforced) and once with ``module.sig_enforce=1``.  For every
insmod, fastlkm's lines must be the kernel's lines and its verdict the kernel's; each
module file alone through ``fastlkm check`` (from the tree and from a snapshot) must say
what the kernel says of it when it is the first of its kind in a boot."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from fastlkm.depmod.probe import dependencies
from fastlkm.elf.reader import ElfFile
from fastlkm.io.codecs import decompress_file
from fastlkm.kernel.modname import modname
from fastlkm.kernel.signature import EKEYREJECTED, sign, verify_module
from fastlkm.loader.loader import Loader
from fastlkm.snapshot import save
from fastlkm.target import System, to_snapshot
from fastlkm.verdicts import check_many
from tests.conftest import corpus_module, require_tools, skip_or_fail
from tests.loader import mutate
from tests.qemu import boot_and_insmod, lines_by_insmod, missing_tools

BOOTED = ("6.1-cloud-amd64", "6.12-amd64", "sid-cloud-amd64")
# the kernels whose headers build here (7.x wants a newer gcc than Debian 12's)
BUILT = ("6.1-cloud-amd64", "6.12-amd64")
FOREIGN_ARCH = "6.1-686"
# timekeeping and entropy chatter that can land between two insmods on a slow emulated
# boot; no module causes it
CHATTER = ("tsc: ", "clocksource: ", "random: ", "  with ", "    ")

HELLO = """#include <linux/module.h>
#include <linux/init.h>
static int __init fl_init(void) { return 0; }
static void __exit fl_exit(void) { }
module_init(fl_init);
module_exit(fl_exit);
MODULE_LICENSE("GPL");
"""


@dataclass(frozen=True)
class Built:
    """The out-of-tree modules built for one kernel."""

    plain: Path       # unsigned
    signed: Path      # signed by sign-file with a throwaway key
    cert: Path        # that key's certificate (PEM)


def build_out_of_tree(headers: Path, where: Path) -> Built:
    """fl_plain.ko and fl_signed.ko built against *headers* as DKMS builds them, the
    second signed with a throwaway key by the kbuild package's own sign-file."""
    where.mkdir(parents=True)
    for name in ("fl_plain", "fl_signed"):
        (where / f"{name}.c").write_text(HELLO)
    (where / "Kbuild").write_text("obj-m := fl_plain.o fl_signed.o\n")
    r = subprocess.run(["make", "-s", "-C", str(headers), f"M={where}", "modules"],
                       capture_output=True, text=True)
    assert r.returncode == 0, f"out-of-tree build failed:\n{r.stdout}\n{r.stderr}"
    key = where / "key.pem"
    subprocess.run(["openssl", "req", "-new", "-nodes", "-utf8", "-sha256", "-x509",
                    "-days", "2", "-batch", "-subj", "/CN=fastlkm throwaway key",
                    "-newkey", "rsa:2048", "-keyout", str(key), "-out", str(key)],
                   check=True, capture_output=True)
    sign_file = corpus_module().sign_file(headers)
    subprocess.run([str(sign_file), "sha256", str(key), str(key), str(where / "fl_signed.ko")],
                   check=True, capture_output=True)
    return Built(where / "fl_plain.ko", where / "fl_signed.ko", key)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory,
          corpus: Callable[[str], tuple[Path, str]]) -> dict[str, Built]:
    require_tools("make", "gcc", "openssl", "pahole")
    out = {}
    for name in BUILT:
        corpus(name)
        try:
            headers = corpus_module().kbuild(name)
        except (SystemExit, subprocess.CalledProcessError, OSError) as e:
            skip_or_fail(f"headers of {name} unavailable: {e}")
        out[name] = build_out_of_tree(headers, tmp_path_factory.mktemp("oot") / name)
    return out


def _quiet_leaves(s: System) -> list[Path]:
    """Signed modules of *s* without dependencies under kernel/lib/, fewest imports
    first: safe to initialise in a bare virtual machine, and silent."""
    deps = dependencies(s.modules, s.order)
    leaves = sorted((m for m in s.modules if m.path.startswith("kernel/lib/")
                     and not deps[m.name] and m.signed),
                    key=lambda m: (len(m.imports), m.name))
    assert s.tree is not None and len(leaves) >= 3
    return [s.tree.moddir / m.path for m in leaves]


def _write(tmp: Path, label: str, data: bytes) -> Path:
    f = tmp / f"{label}.ko"
    f.write_bytes(data)
    return f


def _changed(data: bytes) -> bytes:
    """*data* with one byte of its ELF image (not of the signature) changed."""
    b = bytearray(data)
    b[len(b) // 3] ^= 0x01
    return bytes(b)


def _exec(path: Path) -> bytes:
    """The module at *path* with e_type ET_EXEC instead of ET_REL."""
    data = bytearray(path.read_bytes())
    data[16:18] = (2).to_bytes(2, "little")
    return bytes(data)


def _own(kernel: str, s: System, built: dict[str, Built], tmp: Path) -> Built:
    """The out-of-tree modules for *kernel*: built against its headers where this
    machine's compiler can (7.x wants a newer gcc than Debian 12's), else two of its own
    modules made out-of-tree (intree= hidden), unsigned and signed with the throwaway
    key."""
    if kernel in built:
        return built[kernel]
    key = next(iter(built.values())).cert
    _, plain, signed = _quiet_leaves(s)[:3]
    made = [mutate.unsigned(mutate.replace_modinfo(decompress_file(str(f)), "intree=Y",
                                                   "intreX=Y")) for f in (plain, signed)]
    return Built(_write(tmp, "oot-plain", made[0]),
                 _write(tmp, "oot-signed", sign(made[1], str(key), str(key))), key)


Step = tuple[str, Path, bool]   # label, file, loads


def _code(data: bytes) -> int:
    """The first section with contents (PROGBITS, not empty)."""
    return next(s.index for s in ElfFile(data).sections if s.type == 1 and s.size)


# damaged section headers, each on a copy of one module renamed (the kernel then tells
# them apart) -- what the section header checks of load_module() refuse, by version
DAMAGES: list[tuple[str, Callable[[bytes], bytes]]] = [
    ("section header size", lambda d: mutate.set_ehdr(d, "shentsize", 65)),
    ("section headers past the end", lambda d: mutate.set_ehdr(d, "shoff", len(d))),
    ("section 0 not null", lambda d: mutate.set_shdr(d, 0, "type", 1)),
    ("section past the end", lambda d: mutate.set_shdr(d, _code(d), "offset", len(d))),
    ("name table index", lambda d: mutate.set_ehdr(
        d, "shstrndx", len(ElfFile(d).sections))),
    ("name table type", lambda d: mutate.set_shdr(
        d, mutate.ehdr_field(d, "shstrndx"), "type", 1)),
    ("name table unterminated", mutate.unterminated_shstrtab),
    ("section name past the table", lambda d: mutate.set_shdr(
        d, _code(d), "name", ElfFile(d).sections[
            mutate.ehdr_field(d, "shstrndx")].size + 10)),
    ("two .modinfo", lambda d: mutate.set_shdr(
        d, ".comment", "name", mutate.shdr_field(d, ".modinfo", "name"))),
    ("no symbol table", lambda d: mutate.set_shdr(d, ".symtab", "type", 1)),
    ("symbol table link", lambda d: mutate.set_shdr(d, ".symtab", "link", 0)),
    ("symbol string table type", lambda d: mutate.set_shdr(d, ".strtab", "type", 1)),
    ("no struct module", lambda d: mutate.set_shdr(
        d, ".gnu.linkonce.this_module", "name", mutate.shdr_field(d, ".comment", "name"))),
    ("struct module NOBITS", lambda d: mutate.set_shdr(
        d, ".gnu.linkonce.this_module", "type", 8)),
]


def _damaged(s: System, tmp: Path) -> list[Step]:
    """The damaged copies of a quiet module of *s*; the kernel refuses each, but for
    the checks its version does not make (before 6.12 the name and symbol string table
    types, before 6.4 duplicate .modinfo sections), where the first of them loads and
    the next, exporting the same names, is refused as a duplicate."""
    version = Loader(s.kernel).version
    unchecked = set() if version >= (6, 12) else \
        {"name table type", "symbol string table type"} | (
            {"two .modinfo"} if version < (6, 4) else set())
    f = _quiet_leaves(s)[1]
    data = mutate.unsigned(decompress_file(str(f)))
    name = modname(f.name)
    steps: list[Step] = []
    first = True
    for i, (label, damage) in enumerate(DAMAGES):
        if label == "struct module NOBITS" and version < (6, 4):
            continue   # unchecked before 6.4: Debian's 6.1 oopses (docs/deviations.md)
        twin = mutate.rename(data, name, name[:-1] + chr(ord("a") + i))
        steps.append((label, _write(tmp, f"damaged-{i}", damage(twin)),
                      label in unchecked and first))
        first = first and label not in unchecked
    return steps


def _plan(kernel: str, system: Callable[..., System], built: dict[str, Built], tmp: Path,
          enforce: bool) -> list[Step]:
    s = system(kernel, "vmlinuz")
    own = _own(kernel, s, built, tmp)
    leaf = decompress_file(str(_quiet_leaves(s)[0]))
    if enforce:
        return [("unsigned", own.plain, False),
                ("unavailable key", own.signed, False),
                ("Debian-signed", _write(tmp, "debian", leaf), True)]
    arch = system(FOREIGN_ARCH)
    assert arch.tree is not None
    alien = next(m for m in arch.modules if m.path.startswith("kernel/lib/"))
    steps: list[Step] = [("out of tree", own.plain, True), ("throwaway key", own.signed, True)]
    for other in BOOTED:
        if other == kernel:
            continue
        if other in built:
            steps.append((f"built for {other}", built[other].plain, False))
        foreign = decompress_file(str(_quiet_leaves(system(other, "vmlinuz"))[0]))
        steps.append((f"Debian's {other}", _write(tmp, f"debian-{other}", foreign), False))
    return [*steps,
            ("not relocatable", _write(tmp, "exec", _exec(own.plain)), False),
            ("other architecture",
             _write(tmp, "alien", decompress_file(str(arch.tree.moddir / alien.path))), False),
            ("one byte changed", _write(tmp, "changed", _changed(leaf)), False),
            *_damaged(s, tmp),
            ("Debian-signed", _write(tmp, "debian", leaf), True)]


def _kernel_said(dmesg: str, count: int) -> list[list[str]]:
    return [[x for x in lines if not x.startswith(CHATTER)]
            for lines in lines_by_insmod(dmesg, count)]


@pytest.mark.corpus
@pytest.mark.qemu
@pytest.mark.parametrize("enforce", [False, True], ids=["debian", "sig_enforce"])
@pytest.mark.parametrize("kernel", BOOTED)
def test_modules_built_elsewhere_as_the_kernel_says(system, built, tmp_path: Path,
                                                     kernel: str, enforce: bool) -> None:
    if reason := missing_tools():
        skip_or_fail(reason)
    s = system(kernel, "vmlinuz")
    steps = _plan(kernel, system, built, tmp_path, enforce)
    loader = Loader(s.kernel, sig_enforce=enforce)
    model: list[tuple[bool, int, list[str]]] = []
    for label, f, _ in steps:
        data = decompress_file(str(f))
        r = loader.load_image(data, str(f), verify_module(data, s.kernel.certificates))
        model.append((r.ok, r.err, [m.text for m in r.messages]))
        print(f"  {label}: model {'loads' if r.ok else f'refuses ({r.err})'}")
    assert s.tree is not None and s.tree.vmlinuz is not None
    boot = boot_and_insmod(s.tree.vmlinuz, [f for _, f, _ in steps], mark=True,
                           append="module.sig_enforce=1" if enforce else "")
    said = _kernel_said(boot.dmesg, len(steps))
    print(f"\n{kernel}{' sig_enforce=1' if enforce else ''}: {len(steps)} insmods, "
          f"boot to power-off {boot.seconds:.1f} s")
    for (label, _, _), v, lines in zip(steps, boot.verdicts, said, strict=True):
        print(f"  {label}: status {v.status} {v.output!r}")
        for line in lines:
            print(f"    {line}")
    labels = [label for label, _, _ in steps]
    # the kernel's verdicts are the expected ones, and the model's are the kernel's
    assert {lb: v.status == 0 for lb, v in zip(labels, boot.verdicts, strict=True)} == \
        {lb: loads for lb, _, loads in steps}
    assert {lb: ok for lb, (ok, _, _) in zip(labels, model, strict=True)} == \
        {lb: loads for lb, _, loads in steps}
    # line for line, insmod by insmod
    assert dict(zip(labels, said, strict=True)) == \
        {lb: lines for lb, (_, _, lines) in zip(labels, model, strict=True)}
    if not enforce:
        changed = labels.index("one byte changed")
        assert model[changed][1] == -EKEYREJECTED
        assert "Key was rejected by service" in boot.verdicts[changed].output
        assert said[labels.index("out of tree")], "the first out-of-tree module taints"
    else:
        assert [x for lines in said for x in lines] == [
            "Loading of unsigned module is rejected",
            "Loading of module with unavailable key is rejected"]
    # fastlkm check, one module file at a time, from the tree and from a snapshot of it,
    # says what the kernel said of the first of its kind in the boot (every refusal, and
    # the first module that loads)
    snap = tmp_path / "kernel.snap"
    save(to_snapshot(s), snap)
    for i, (label, f, _) in enumerate(steps):
        if i and model[i][0] and said[i] == []:
            continue   # its taints were already set by an earlier module of the boot
        if any("exports duplicate symbol" in x for x in said[i]):
            continue   # refused for a module an earlier insmod of the boot loaded
        for where in (str(s.tree.root), str(snap)):
            c = check_many(str(f), [where], sig_enforce=enforce).checks[0].as_dict()
            assert (c["loads"], c["kernel_lines"]) == (model[i][0], said[i]), (label, where)


@pytest.mark.corpus
def test_check_several_kernels_and_a_key(built, corpus, capsys: pytest.CaptureFixture[str]
                                         ) -> None:
    """``fastlkm check MODULE --kernel A --kernel B``: one answer per kernel, the verdict
    line last in each, notes on ``fastlkm: `` lines, the JSON list; and ``--key`` makes a
    key trusted as MOK would (the throwaway-signed module then verifies)."""
    import json

    from fastlkm.cli import main

    roots = [str(corpus(k)[0]) for k in BUILT]
    own = built["6.12-amd64"]
    args = ["check", str(own.plain)] + [a for r in roots for a in ("--kernel", r)]
    assert main(args) == 1            # refused by 6.1 (module_layout)
    out = capsys.readouterr().out
    blocks = out.strip().split("\n\n")
    assert len(blocks) == len(BUILT)
    for block, k in zip(blocks, BUILT, strict=True):
        lines = block.splitlines()
        release = corpus(k)[1]
        assert lines[-1].startswith("fl_plain: would") and lines[-1].find(release) > 0
        assert any(x.startswith("fastlkm: ") for x in lines)
    assert main([*args, "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert [d["verdict"] for d in doc] == ["refused", "loads"]
    assert doc[0]["kernel_lines"] == ["fl_plain: disagrees about version of symbol module_layout"]
    assert doc[0]["error"] == "ENOEXEC" and doc[1]["err"] == 0
    assert doc[1]["signature"]["signed"] is False

    signed = ["check", str(own.signed), "--kernel", roots[1], "--json"]
    assert main([*signed, "--sig-enforce"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["kernel_lines"] == ["Loading of module with unavailable key is rejected"]
    assert doc["signature"]["signer"] == "fastlkm throwaway key"
    assert doc["signature"]["hash_algo"] == "sha256"
    assert main([*signed, "--sig-enforce", "--key", str(own.cert)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["signature"]["verified"] is True
    assert doc["kernel_lines"] == ["fl_signed: loading out-of-tree module taints kernel."]


def test_check_bad_key_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                        ) -> None:
    from fastlkm.cli import main

    bad = tmp_path / "key.pem"
    bad.write_text("not a certificate\n")
    mod = tmp_path / "m.ko"
    mod.write_bytes(b"")
    assert main(["check", str(mod), "--key", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err and "Traceback" not in err

