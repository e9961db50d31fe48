#!/usr/bin/env python3
"""Coverage-guided fuzzing of every parser (atheris/libFuzzer), for a number of runs or a
time, one target after another; findings go to fuzz/regressions/TARGET/, which the test
suite replays.

Usage: fuzz/run.py [--runs N | --seconds S] [--targets T,...] [--report FILE]

Seeds are made fresh each time: small real modules, a vmlinuz head and headers' files
from the corpus cache (scripts/corpus.py) when it is there, and synthetic inputs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from targets import TARGETS, run_one  # noqa: E402


def seeds(target: str, dest: Path) -> None:
    """A few valid inputs of the target's format."""
    dest.mkdir(parents=True, exist_ok=True)
    corpus = Path(os.environ.get("FASTLKM_CORPUS", Path.home() / ".cache/fastlkm/corpus"))
    mods = sorted(corpus.glob("6.1-*/root/lib/modules/*/kernel/lib/*.ko"))[:6]
    n = 0

    def put(data: bytes) -> None:
        nonlocal n
        (dest / f"seed{n}").write_bytes(data)
        n += 1

    if target in ("elf", "scan", "elfcheck"):
        for m in mods:
            if m.stat().st_size < 64 << 10:
                put(m.read_bytes())
    elif target in ("vmlinuz", "codecs"):
        import gzip
        import lzma

        import zstandard

        payload = b"\x7fELF" + bytes(200)
        put(gzip.compress(payload))
        put(lzma.compress(payload, check=lzma.CHECK_CRC32))
        put(zstandard.ZstdCompressor().compress(payload))
    elif target == "imagesyms":
        # small raw images with export tables (each refused for one reason), as tests make them
        for f in sorted((HERE / "regressions" / "imagesyms").glob("seed-*")):
            put(f.read_bytes())
    elif target == "sysmap":
        put(b"ffffffff81000000 T _text\nffffffff82400000 r __ksymtab_printk\n"
            b"0000000012345678 A __crc_printk\n")
    elif target == "symvers":
        for f in sorted(corpus.glob("*/root/usr/src/linux-headers-*/Module.symvers"))[:1]:
            put(b"\n".join(f.read_bytes().splitlines()[:50]) + b"\n")
        put(b"0x12345678\tprintk\tvmlinux\tEXPORT_SYMBOL\t\n")
    elif target == "modinfo":
        put(b"license=GPL\0alias=pci:v*\0depends=a,b\0")
    elif target == "depmod_d":
        put(b"search updates built-in\noverride foo * extra\nexclude x\nexternal * /opt\n")
    elif target == "kmod_index":
        put(b"ext4 kernel/fs/ext4/ext4.ko: a b\njbd2 kernel/fs/jbd2/jbd2.ko:\n")
    elif target == "sections":
        put(b"FLKH" + bytes(60))
    elif target == "snapshot":
        import json as js
        import lzma

        put(lzma.compress(js.dumps({"names": [], "kernel": {}, "modules": [],
                                    "order": []}).encode(), check=lzma.CHECK_CRC32))
    if n == 0:
        put(b"\0")


def fuzz_one(target: str, runs: int | None, seconds: int | None,
             work: Path) -> tuple[int, int]:
    """Run libFuzzer on one target in a child process; returns the executions done and
    the findings saved."""
    sd = work / target / "seeds"
    seeds(target, sd)
    art = work / target / "artifacts"
    art.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, __file__, "--child", target, str(sd), f"-artifact_prefix={art}/",
            "-rss_limit_mb=2048", "-timeout=10", "-max_len=65536"]
    args.append(f"-runs={runs}" if runs else f"-max_total_time={seconds}")
    out = subprocess.run(args, capture_output=True, text=True)
    done = re.findall(r"Done (\d+) runs", out.stderr)
    execs = int(done[-1]) if done else max(
        [int(x) for x in re.findall(r"#(\d+)", out.stderr)] or [0])
    found = sorted(art.iterdir())
    if found:
        reg = HERE / "regressions" / target
        reg.mkdir(parents=True, exist_ok=True)
        for f in found:
            shutil.copy(f, reg / f.name)
        print(f"{target}: {len(found)} findings saved in {reg}", file=sys.stderr)
        print(out.stderr[-3000:], file=sys.stderr)
    return execs, len(found)


def child(target: str, argv: list[str]) -> None:
    import atheris

    def one(data: bytes) -> None:
        run_one(target, data)

    atheris.instrument_all()
    atheris.Setup([sys.argv[0], *argv], one)
    atheris.Fuzz()


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--runs", type=int, help="executions per target")
    g.add_argument("--seconds", type=int, default=30, help="seconds per target")
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--report", help="write the executions per target here (JSON)")
    a = ap.parse_args()
    total = findings = 0
    report = {}
    with tempfile.TemporaryDirectory() as tmp:
        for t in a.targets.split(","):
            n, found = fuzz_one(t, a.runs, None if a.runs else a.seconds, Path(tmp))
            report[t] = n
            total += n
            findings += found
            print(f"{t:12} {n:>10,} executions", flush=True)
    print(f"{'total':12} {total:>10,} executions")
    if a.report:
        Path(a.report).write_text(json.dumps({"executions": report, "total": total}))
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
