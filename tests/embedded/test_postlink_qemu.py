"""The proof that nothing broke: Debian's own, unmodified kernel loads modules processed by
``fastlkm hash``.  A chain with dependencies (ext4 with jbd2, mbcache and crc16 on the
6.12 kernel) is processed with each style and loaded under QEMU; every insmod must
succeed and the kernel log after /init must hold nothing but the taint of a module whose
signature is missing or made with a key the kernel does not know."""

from __future__ import annotations

import lzma
import random
import re
import subprocess
from pathlib import Path

import pytest

from fastlkm.cli import main
from fastlkm.elf.reader import ElfFile
from fastlkm.elf.writer import ElfWriter
from fastlkm.embedded.read import verify_image
from fastlkm.io.codecs import compress, decompress_file
from fastlkm.kernel.ksymtab import read_exports
from fastlkm.kernel.signature import split_signature
from fastlkm.kernel.sort import export_table_sections, reorder_table
from fastlkm.kernel.tree import find_tree
from tests.conftest import require_tools, skip_or_fail
from tests.qemu import BootResult, boot_and_insmod, missing_tools

KERNEL = "6.12-amd64"
CHAIN = ("kernel/lib/crc16", "kernel/fs/mbcache", "kernel/fs/jbd2/jbd2", "kernel/fs/ext4/ext4")
CONTROL = "kernel/lib/crc-itu-t"   # a leaf compressed with CRC64: the kernel must refuse it
TAINT = re.compile(r"^\S+: module verification failed: signature and/or required key "
                   r"missing - tainting kernel$")


def _setup(corpus, tmp_path: Path) -> tuple[Path, list[Path], Path]:
    if reason := missing_tools():
        skip_or_fail(reason)
    require_tools("gcc")
    root, release = corpus(KERNEL)
    tree = find_tree(str(root), release)
    assert tree.vmlinuz is not None
    files = []
    for rel in (*CHAIN, CONTROL):
        src = next(tree.moddir.glob(rel + ".ko*"))
        dst = tmp_path / src.name
        dst.write_bytes(src.read_bytes())
        files.append(dst)
    return tree.vmlinuz, files[:-1], files[-1]


def _after_init(boot: BootResult) -> list[str]:
    lines = boot.dmesg.splitlines()
    start = next(i for i, line in enumerate(lines) if "Run /init as init process" in line)
    out = []
    for line in lines[start + 1:]:
        m = re.match(r"^\[\s*\d+\.\d+\] (.*)$", line)
        text = m.group(1) if m else line
        # continuation lines, and the timekeeping's late TSC calibration (it lands after
        # init when the emulated boot is slow), which no module causes
        if not text.startswith(("  with ", "    ", "tsc: ", "clocksource: ")):
            out.append(text)
    return out


def _assert_loaded(boot: BootResult, files: list[Path]) -> None:
    print(f"\nboot to power-off {boot.seconds:.1f} s")
    assert [(v.module, v.status, v.output) for v in boot.verdicts[:len(files)]] == \
        [(f.name, 0, "") for f in files]
    log = _after_init(boot)
    assert [line for line in log if not TAINT.match(line)] == []
    assert any(TAINT.match(line) for line in log)


@pytest.mark.corpus
@pytest.mark.qemu
def test_sysv_undef_hash_stripped_decompressed_by_the_kernel(corpus, tmp_path: Path) -> None:
    """``--style sysv --undef-hash --strip-signature`` in place on the .ko.xz files, which
    the kernel itself decompresses (finit_module with MODULE_INIT_COMPRESSED_FILE); a CRC64
    control shows that it does."""
    vmlinuz, files, control = _setup(corpus, tmp_path)
    assert main(["hash", "--style", "sysv", "--undef-hash", "--strip-signature",
                 *map(str, files)]) == 0
    assert main(["verify", *map(str, files)]) == 0
    plain = split_signature(decompress_file(control))[0]
    control.write_bytes(lzma.compress(plain, lzma.FORMAT_XZ, check=lzma.CHECK_CRC64))
    boot = boot_and_insmod(vmlinuz, [*files, control], kernel_decompress=True)
    last = boot.verdicts[-1]
    assert last.status != 0 and "Invalid argument" in last.output
    assert "decompression failed" in boot.dmesg
    boot = BootResult(boot.verdicts[:-1], "\n".join(
        line for line in boot.dmesg.splitlines() if "decompression failed" not in line),
        boot.console, boot.seconds)
    _assert_loaded(boot, files)


@pytest.mark.corpus
@pytest.mark.qemu
def test_gnu_after_unsorting_and_sorting(corpus, tmp_path: Path) -> None:
    """Each export table shuffled with the writer, then ``--sort --style gnu``: the tables
    come back in their original order and the kernel's bsearch finds every export."""
    vmlinuz, files, _ = _setup(corpus, tmp_path)
    originals = {}
    for f in files:
        body = split_signature(decompress_file(f))[0]
        originals[f.name] = body
        elf = ElfFile(body, str(f))
        w = ElfWriter(elf)
        rng = random.Random(f.name)
        for sec in export_table_sections(elf):
            order = list(range(len([e for e in read_exports(elf) if e.table == sec.name])))
            rng.shuffle(order)
            reorder_table(elf, w, sec, order)
        f.write_bytes(compress(w.build(), "xz"))
    assert main(["hash", "--sort", "--style", "gnu", "--undef-hash", *map(str, files)]) == 0
    for f in files:
        elf = ElfFile(decompress_file(f), str(f))
        assert verify_image(elf) == []
        assert read_exports(elf) == read_exports(ElfFile(originals[f.name]))
    _assert_loaded(boot_and_insmod(vmlinuz, files), files)


@pytest.mark.corpus
@pytest.mark.qemu
def test_perfect_signed_again(corpus, tmp_path: Path) -> None:
    """``--style perfect`` with a new signature (sign-file's format, a key the kernel does
    not know): the kernel parses the signature, forgives the unknown key with a taint,
    and loads the chain; a malformed signature would be refused (EBADMSG)."""
    require_tools("openssl")
    (tmp_path / "m").mkdir()
    vmlinuz, files, _ = _setup(corpus, tmp_path / "m")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj",
                    "/CN=fastlkm test"], check=True, capture_output=True)
    assert main(["hash", "--style", "perfect", "--undef-hash", "--sign-key", str(key),
                 "--sign-cert", str(cert), "--output", str(tmp_path / "out"),
                 *map(str, files)]) == 0
    out = [tmp_path / "out" / f.name for f in files]
    assert all(split_signature(decompress_file(f))[1] for f in out)
    assert main(["verify", *map(str, out)]) == 0
    _assert_loaded(boot_and_insmod(vmlinuz, out), out)
