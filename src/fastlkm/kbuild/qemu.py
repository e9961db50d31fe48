"""Boot a kernel under QEMU with a busybox initramfs and collect what its ``/init`` says.

Software emulation (TCG): KVM fails on the machines this runs on.  The kernel console
is the first serial port; ``/init`` writes its results to the second, a file, so kernel
messages never interleave with them.  TCG models no caches: the kernel's times are
those of emulated instructions, comparable between strategies of one boot, not with
real hardware.
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fastlkm.errors import FastlkmError

QEMU = "qemu-system-x86_64"
BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static
CMDLINE = "console=ttyS0 panic=-1 quiet loglevel=3"

# (name, mode with file type, contents, rdev as major << 8 | minor)
Entry = tuple[str, int, bytes, int]


class GuestError(FastlkmError):
    """QEMU did not run the initramfs to its end."""


class GuestTimeout(GuestError):
    """The guest did not power off in time; QEMU was killed."""


def newc_archive(entries: Sequence[Entry]) -> bytes:
    """A cpio archive in the "new ASCII" format the kernel unpacks (usr/gen_init_cpio.c)."""
    out = bytearray()

    def add(name: str, mode: int, data: bytes, rdev: int, ino: int) -> None:
        raw = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 2 if mode & 0o040000 else 1, 0, len(data), 0, 0,
                  rdev >> 8, rdev & 0xFF, len(raw), 0)
        out.extend(b"070701" + b"".join(b"%08X" % f for f in fields) + raw)
        out.extend(b"\0" * (-len(out) % 4))
        out.extend(data)
        out.extend(b"\0" * (-len(out) % 4))

    for ino, (name, mode, data, rdev) in enumerate(entries, start=1):
        add(name, mode, data, rdev, ino)
    add("TRAILER!!!", 0, b"", 0, 0)
    return bytes(out)


def busybox_initramfs(init: str, files: Sequence[Entry]) -> bytes:
    """A gzip'd initramfs: busybox, the standard directories, *files* and ``/init``."""
    if not BUSYBOX.is_file():
        raise GuestError(f"{BUSYBOX} missing (Debian package busybox-static)")
    entries: list[Entry] = [(d, 0o040755, b"", 0)
                            for d in ("bin", "dev", "proc", "sys", "modules")]
    entries.append(("dev/console", 0o020600, b"", 5 << 8 | 1))
    entries.append(("bin/busybox", 0o100755, BUSYBOX.read_bytes(), 0))
    entries.append(("init", 0o100755, init.encode(), 0))
    entries += files
    return gzip.compress(newc_archive(entries), compresslevel=1)


INIT_HEAD = """#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t debugfs debugfs /sys/kernel/debug
dmesg -n 1
exec 3>/dev/ttyS1
"""

INIT_TAIL = """echo @@DMESG >&3
dmesg >&3
echo @@END >&3
exec 3>&-
poweroff -f
"""


@dataclass(frozen=True)
class GuestRun:
    results: str    # what /init wrote to the second serial port
    console: str    # the kernel's console
    seconds: float  # boot to power-off


def run_guest(kernel: Path, initrd: bytes, *, append: str = "", timeout: float = 600,
              memory_mb: int = 1024, icount: bool = False) -> GuestRun:
    """Boot *kernel* with *initrd* and wait for it to power off.  With *icount* the
    guest's clock counts instructions (QEMU's ``-icount shift=0``: 1 ns each), so what the
    guest times does not depend on the host's load."""
    if shutil.which(QEMU) is None:
        raise GuestError(f"{QEMU} not installed (Debian package qemu-system-x86)")
    with tempfile.TemporaryDirectory(prefix="fastlkm-guest-") as tmp:
        rd = Path(tmp) / "initrd.gz"
        rd.write_bytes(initrd)
        results = Path(tmp) / "results.txt"
        cmd = [QEMU, "-accel", "tcg", "-cpu", "max", "-m", str(memory_mb),
               "-kernel", str(kernel), "-initrd", str(rd),
               "-append", f"{CMDLINE} {append}".strip(),
               "-nographic", "-no-reboot", "-nic", "none",
               "-serial", "stdio", "-serial", f"file:{results}", "-monitor", "none"]
        if icount:
            cmd[1:1] = ["-icount", "shift=0,sleep=off"]
        start = time.monotonic()
        with subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT) as proc:
            try:
                out, _ = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
                raise GuestTimeout(f"guest still running after {timeout:g} s, killed; "
                                 f"console tail:\n{out.decode(errors='replace')[-2000:]}"
                                 ) from None
        seconds = time.monotonic() - start
        console = out.decode(errors="replace")
        if proc.returncode != 0:
            raise GuestError(f"{QEMU} exited with {proc.returncode}:\n{console[-2000:]}")
        text = results.read_bytes().decode(errors="replace") if results.exists() else ""
    if "@@END" not in text:
        raise GuestError(f"the guest stopped before reporting; console tail:\n"
                         f"{console[-3000:]}\nresults tail:\n{text[-2000:]}")
    return GuestRun(text.replace("\r\n", "\n"), console, seconds)
