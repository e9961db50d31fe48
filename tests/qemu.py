"""Ask a real kernel, booted under QEMU, what it says when modules are loaded.

Test support only: the kernel is the oracle fastlkm's loader model is checked against.
``boot_and_insmod`` packs busybox, the modules and a small ``/init`` into a newc
initramfs, boots the kernel with software emulation (TCG; KVM fails on these
machines), runs ``insmod`` on each module in order and returns each exit status and
message together with the kernel log.

The kernel console stays on the first serial port; ``/init`` writes its results to the
second one, a file, so kernel messages never interleave with them.

With ``kernel_decompress`` the modules stay compressed and a small static helper (built
with gcc) loads each with ``finit_module(fd, "", MODULE_INIT_COMPRESSED_FILE)``, so the
kernel's own decompressor (CONFIG_MODULE_DECOMPRESS) reads them.

Trap: busybox's insmod tries ``finit_module`` first and, on any failure, loads the
module a second time with ``init_module``; a module that fails therefore leaves its
kernel messages in the log twice.
"""

from __future__ import annotations

import gzip
import lzma
import re
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import zstandard

from fastlkm.kbuild.qemu import BUSYBOX, QEMU, GuestError, GuestTimeout, newc_archive, run_guest
from tests.conftest import require_mark

# include/linux/module_signature.h: the trailer of a signed module is
# [signer][key id][signature][struct module_signature][magic], the struct being
# algo, hash, id_type, signer_len, key_id_len, 3 bytes of padding, big-endian sig_len
MODULE_SIG_MAGIC = b"~Module signature appended~\n"
_MODULE_SIGNATURE = struct.Struct(">BBBBB3xI")


class QemuError(RuntimeError):
    """QEMU did not run the initramfs to its end; carries the console's tail."""


class QemuTimeout(QemuError):
    """The guest did not power off in time; QEMU was killed."""


@dataclass(frozen=True)
class Verdict:
    module: str  # file name given
    status: int  # insmod's exit status
    output: str  # insmod's own stdout and stderr


@dataclass(frozen=True)
class BootResult:
    verdicts: list[Verdict]
    dmesg: str  # the kernel log after every insmod
    console: str  # what the kernel wrote to the serial console, for diagnosis
    seconds: float  # wall time of the QEMU run, boot to power-off


def strip_signature(data: bytes) -> bytes:
    """*data* without its appended signature; unsigned data is returned unchanged."""
    # the same walk as mod_check_sig() in kernel/module_signature.c
    if not data.endswith(MODULE_SIG_MAGIC):
        return data
    info_end = len(data) - len(MODULE_SIG_MAGIC)
    info_start = info_end - _MODULE_SIGNATURE.size
    if info_start < 0:
        raise ValueError("module signature trailer is truncated")
    *_, signer_len, key_id_len, sig_len = _MODULE_SIGNATURE.unpack_from(data, info_start)
    start = info_start - sig_len - signer_len - key_id_len
    if start < 0:
        raise ValueError(f"module signature of {sig_len} bytes is longer than the file")
    return data[:start]


def decompress_module(data: bytes) -> bytes:
    """A plain ELF module from *data*, decompressing xz, zstd and gzip by their magic."""
    # busybox's insmod reads no zstd, and gzip/xz only when built with them
    if data.startswith(b"\xfd7zXZ\x00"):
        return lzma.decompress(data, format=lzma.FORMAT_XZ)
    if data.startswith(b"\x28\xb5\x2f\xfd"):
        return zstandard.ZstdDecompressor().stream_reader(data).read()
    if data.startswith(b"\x1f\x8b"):
        return gzip.decompress(data)
    return data


# finit_module() with MODULE_INIT_COMPRESSED_FILE (include/uapi/linux/module.h): what
# kmod's insmod does for a compressed module when the kernel decompresses in-kernel
_FINIT_SOURCE = r"""
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(int argc, char **argv)
{
    int fd = open(argv[1], O_RDONLY | O_CLOEXEC);
    if (fd < 0) { perror(argv[1]); return 1; }
    if (syscall(SYS_finit_module, fd, "", 4)) {
        fprintf(stderr, "finit_module: %s\n", strerror(errno));
        return 1;
    }
    return 0;
}
"""


def build_finit_helper(directory: Path) -> Path:
    """A static binary that loads one compressed module file, built with gcc."""
    src = directory / "finit.c"
    out = directory / "finit"
    src.write_text(_FINIT_SOURCE)
    subprocess.run(["gcc", "-static", "-O2", "-o", str(out), str(src)], check=True,
                   capture_output=True)
    return out


# with mark=True, /init writes this line (and the module's number) to the kernel log
# before each insmod, so that each line of the log can be told to its insmod
MARK = "fastlkm-test: insmod "


def _init_script(count: int, loader: str = "insmod", mark: bool = False) -> str:
    lines = [
        "#!/bin/busybox sh",
        "/bin/busybox --install -s /bin",
        "export PATH=/bin",
        "mount -t proc proc /proc",
        "mount -t sysfs sysfs /sys",
        "mount -t devtmpfs devtmpfs /dev",
        "dmesg -n 1",
        "exec 3>/dev/ttyS1",
        "load() {",
        *([f'    echo "{MARK}$1" > /dev/kmsg'] if mark else []),
        f'    out=$({loader} "/modules/$1.ko" 2>&1)',
        "    echo \"@@INSMOD $1 status=$?\" >&3",
        '    [ -n "$out" ] && echo "$out" >&3',
        "    echo \"@@END $1\" >&3",
        "}",
    ]
    lines += [f"load {i:03d}" for i in range(count)]
    lines += [
        "echo @@DMESG >&3",
        "dmesg >&3",
        "echo @@END DMESG >&3",
        "exec 3>&-",  # the last close waits until the port has sent everything
        "poweroff -f",
    ]
    return "\n".join(lines) + "\n"


def build_initramfs(modules: Sequence[Path], finit: Path | None = None,
                    mark: bool = False) -> bytes:
    """The gzip-compressed initramfs that loads *modules* in order (names 000.ko, ...);
    with *finit* (build_finit_helper()) they stay compressed and the kernel decompresses
    them."""
    entries: list[tuple[str, int, bytes, int]] = [
        (d, 0o040755, b"", 0) for d in ("bin", "dev", "proc", "sys", "modules")
    ]
    entries.append(("dev/console", 0o020600, b"", 5 << 8 | 1))  # init's stdio before devtmpfs
    entries.append(("bin/busybox", 0o100755, BUSYBOX.read_bytes(), 0))
    loader = "insmod"
    if finit is not None:
        entries.append(("bin/finit", 0o100755, finit.read_bytes(), 0))
        loader = "/bin/finit"
    entries.append(("init", 0o100755, _init_script(len(modules), loader, mark).encode(), 0))
    for i, m in enumerate(modules):
        data = m.read_bytes()
        if finit is None:
            data = decompress_module(data)
        entries.append((f"modules/{i:03d}.ko", 0o100644, data, 0))
    return gzip.compress(newc_archive(entries), compresslevel=1)


_INSMOD = re.compile(r"@@INSMOD (\d+) status=(\d+)\n(.*?)@@END \1\n", re.S)
_DMESG = re.compile(r"@@DMESG\n(.*?)@@END DMESG\n", re.S)


def parse_results(text: str, modules: Sequence[Path]) -> tuple[list[Verdict], str]:
    """The verdicts and the kernel log from what ``/init`` wrote to the results port."""
    text = text.replace("\r\n", "\n")
    found = {int(m[1]): (int(m[2]), m[3].rstrip("\n")) for m in _INSMOD.finditer(text)}
    dmesg = _DMESG.search(text)
    if dmesg is None or len(found) != len(modules):
        raise QemuError(f"incomplete results from the guest ({len(found)} of {len(modules)} "
                        f"insmods, dmesg {'present' if dmesg else 'missing'}):\n{text[-2000:]}")
    verdicts = [Verdict(m.name, *found[i]) for i, m in enumerate(modules)]
    return verdicts, dmesg[1]


def missing_tools() -> str | None:
    """Why ``boot_and_insmod`` cannot run here, or None."""
    if shutil.which(QEMU) is None:
        return f"{QEMU} not installed (Debian package qemu-system-x86)"
    if not BUSYBOX.is_file():
        return f"{BUSYBOX} missing (Debian package busybox-static)"
    return None


def boot_and_insmod(vmlinuz: Path, modules: Sequence[Path], *, timeout: float = 180,
                    memory_mb: int = 768, kernel_decompress: bool = False,
                    append: str = "", mark: bool = False) -> BootResult:
    """Boot *vmlinuz*, ``insmod`` each of *modules* in order, and return what happened.

    Modules may be compressed (.ko.xz, .ko.zst, .ko.gz); they are loaded as plain ELF, or
    as they are with *kernel_decompress* (the kernel must read their format).  *append*
    adds to the kernel's command line; with *mark* the log has a line ``MARK + NNN``
    before the lines of the NNN-th insmod (lines_by_insmod()).
    Raises QemuTimeout if the guest is still running after *timeout* seconds and
    QemuError if it stopped without reporting every result.
    """
    require_mark("qemu", "QEMU")
    with tempfile.TemporaryDirectory(prefix="fastlkm-qemu-") as tmp:
        finit = build_finit_helper(Path(tmp)) if kernel_decompress else None
        initrd = build_initramfs(modules, finit, mark)
    try:
        guest = run_guest(vmlinuz, initrd, timeout=timeout, memory_mb=memory_mb,
                          append=append)
    except GuestError as e:
        raise (QemuTimeout if isinstance(e, GuestTimeout) else QemuError)(e.message) from None
    try:
        verdicts, dmesg = parse_results(guest.results, modules)
    except QemuError as e:
        raise QemuError(f"{e}\nconsole tail:\n{guest.console[-2000:]}") from None
    return BootResult(verdicts, dmesg, guest.console, guest.seconds)


def lines_by_insmod(dmesg: str, count: int) -> list[list[str]]:
    """The kernel's lines (without timestamps) between the marks of a boot with
    ``mark=True``, one list per insmod; busybox's insmod retries a failed finit_module()
    with init_module(), so a line said twice in a row for one insmod counts once."""
    out: list[list[str]] = [[] for _ in range(count)]
    cur: int | None = None
    for line in dmesg.splitlines():
        m = re.match(r"^\[\s*\d+\.\d+\] (.*)$", line)
        text = m.group(1) if m else line
        if text.startswith(MARK):
            cur = int(text[len(MARK):])
        elif cur is not None and text not in out[cur]:
            out[cur].append(text)
    return out
