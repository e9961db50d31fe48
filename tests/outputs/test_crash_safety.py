"""Writers never lose data: a depmod killed (SIGKILL) at random moments while it writes
leaves every output file either the complete old or the complete new version."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.outputs.test_depmod import _shadow_root


@pytest.mark.corpus
def test_depmod_killed_mid_write(corpus, tmp_path: Path) -> None:
    root, release = corpus("6.1-cloud-amd64")
    sh = _shadow_root(root, release, tmp_path / "r")
    out = tmp_path / "out"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    base = [sys.executable, "-m", "fastlkm.cli", "depmod", "-b", str(sh), release,
            "--no-cache"]
    cmd = [*base, "-o", str(out)]
    # the old version: a complete run with kmod 30's index layout
    subprocess.run([*cmd, "--kmod-compat=30"], check=True, env=env)
    old = {p.name: p.read_bytes() for p in out.iterdir()}
    # the new version: kmod 34's layout (the .bin files differ, modules.weakdep appears)
    new_dir = tmp_path / "new"
    subprocess.run([*base, "-o", str(new_dir)], check=True, env=env)
    new = {p.name: p.read_bytes() for p in new_dir.iterdir()}
    assert any(old[n] != new[n] for n in old)
    # time a whole run, then kill runs at random points within it
    t = time.monotonic()
    subprocess.run(cmd, check=True, env=env)
    span = time.monotonic() - t
    subprocess.run([*cmd, "--kmod-compat=30"], check=True, env=env)   # back to old
    rng = random.Random(7)
    for _ in range(12):
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.5, 1.0) * span)
        p.send_signal(signal.SIGKILL)
        p.wait()
        for f in out.iterdir():
            if f.name.endswith(".tmp") or f.name.startswith("."):
                f.unlink()   # a leftover temporary file: never one of the outputs
                continue
            data = f.read_bytes()
            assert data in (old.get(f.name), new.get(f.name)), f.name
