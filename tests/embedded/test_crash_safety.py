"""Writers never lose data: a depmod killed (SIGKILL) at random moments while it writes
leaves every output file either the complete old or the complete new version, and at
least one of the kills is shown to have interrupted the writing."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.depmod.test_depmod import _shadow_root


@pytest.mark.corpus
def test_depmod_killed_mid_write(corpus, tmp_path: Path) -> None:
    root, release = corpus("6.1-cloud-amd64")
    sh = _shadow_root(root, release, tmp_path / "r")
    out = tmp_path / "out"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    base = [sys.executable, "-m", "fastlkm.cli", "depmod", "-b", str(sh), release,
            "--no-cache"]
    cmd = [*base, "--into", str(out)]
    # the old version: a complete run with kmod 30's index layout
    subprocess.run([*cmd, "--kmod-compat=30"], check=True, env=env)
    old = {p.name: p.read_bytes() for p in out.iterdir()}
    # the new version: kmod 34's layout (the .bin files differ, modules.weakdep appears)
    new_dir = tmp_path / "new"
    subprocess.run([*base, "--into", str(new_dir)], check=True, env=env)
    new = {p.name: p.read_bytes() for p in new_dir.iterdir()}
    assert any(old[n] != new[n] for n in old)
    # kill runs at random points of their writing, which starts when the first temporary
    # file appears (atomic_write's ".NAME.XXXXXXXX.tmp"): the first run, left to finish,
    # measures how long writing takes
    def started() -> tuple[subprocess.Popen[bytes], float]:
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        while p.poll() is None and not any(n.endswith(".tmp") for n in os.listdir(out)):
            time.sleep(0.0002)
        return p, time.monotonic()

    p, t = started()
    assert p.wait() == 0
    window = time.monotonic() - t
    rng = random.Random(7)
    interrupted = 0   # kills that left writing half done: proof that one landed mid-write
    for _ in range(16):
        _restore(out, old)
        p, _ = started()
        time.sleep(rng.uniform(0, window))
        p.send_signal(signal.SIGKILL)
        p.wait()
        left = [f for f in out.iterdir() if f.name.endswith(".tmp")]
        whole = {f.name: f.read_bytes() for f in out.iterdir() if f not in left}
        for name, data in whole.items():
            assert data in (old.get(name), new.get(name)), name
        changed = [n for n in new if old.get(n) != new[n]]
        renamed = sum(whole.get(n) == new[n] for n in changed)
        if p.returncode == -signal.SIGKILL and (left or 0 < renamed < len(changed)):
            interrupted += 1
    assert interrupted > 0, "no kill landed while the outputs were being written"


def _restore(out: Path, files: dict[str, bytes]) -> None:
    """*out* holding exactly *files*."""
    for f in out.iterdir():
        if f.name not in files:
            f.unlink()
    for name, data in files.items():
        (out / name).write_bytes(data)


# --- fastlkm hash rewriting a tree in place -------------------------------------------------


def _small_tree(corpus, dest: Path) -> Path:
    """30 real modules in one tree: 15 of 6.12's .ko.xz, 15 of 6.1's plain .ko of which 5
    recompressed as .ko.zst and 5 as .ko.gz, each kernel's 12 first with exports; a
    modules.order and a symlink beside them."""
    from fastlkm.io.codecs import compress
    from fastlkm.kernel.module import read_module

    moddir = dest / "lib/modules/1.0"
    for name, fmts in (("6.12-amd64", ["xz"] * 15), ("6.1-cloud-amd64",
                                                     [None] * 5 + ["zstd"] * 5 + ["gzip"] * 5)):
        root, release = corpus(name)
        src = root / "lib/modules" / release / "kernel"
        files = sorted(p for p in src.rglob("*.ko*") if 20_000 < p.stat().st_size < 200_000)
        files = files[:: len(files) // 60]
        exporting = [f for f in files if read_module(str(f)).exports]
        picked = exporting[:12] + [f for f in files if f not in exporting][:3]
        for f, fmt in zip(picked, fmts, strict=True):
            rel = f.relative_to(src)
            out = moddir / "kernel" / name / rel.parent / rel.name.split(".ko")[0]
            out.parent.mkdir(parents=True, exist_ok=True)
            data = f.read_bytes()
            if f.suffix == ".ko" and fmt is not None:
                out = out.with_name(out.name + {"zstd": ".ko.zst", "gzip": ".ko.gz"}[fmt])
                out.write_bytes(compress(data, fmt))
            else:
                out = out.with_name(out.name + (".ko.xz" if fmt == "xz" else ".ko"))
                out.write_bytes(data)
    (moddir / "modules.order").write_text("kernel/a.ko\n")
    (moddir / "build").symlink_to("/usr/src/nowhere")
    return moddir


def _files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in d.rglob("*")
            if p.is_file() and not p.is_symlink()}


def _fastlkm(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fastlkm.cli", *args], env=env,
                          capture_output=True, text=True)


@pytest.mark.corpus
def test_hash_killed_mid_rewrite(corpus, tmp_path: Path) -> None:
    import shutil

    from fastlkm.depmod.modfiles import walk_modules as scan_modules
    from fastlkm.kernel.modname import is_module_path

    orig = _small_tree(corpus, tmp_path / "orig")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    opts = ["hash", "--sort", "--undef-hash", "--strip-signature"]
    old = _files(orig)
    modules = sorted(n for n in old if is_module_path(n))
    assert len(modules) == 30
    # the new version: a complete run on a copy (timed)
    ref = tmp_path / "ref"
    shutil.copytree(orig, ref, symlinks=True)
    t = time.monotonic()
    assert _fastlkm(*opts, str(ref), env=env).returncode == 0
    span = time.monotonic() - t
    new = _files(ref)
    assert all(new[n] != old[n] for n in modules)
    assert all(new[n] == old[n] for n in old if n not in modules)
    # what verify can tell apart: a module without exports holds nothing to check until
    # --undef-hash adds .undef.hash, and is valid either way
    v = _fastlkm("verify", str(orig), env=env)
    tellable = {line.split(": ")[0][len(str(orig)) + 1:] for line in v.stdout.splitlines()}
    assert v.returncode == 1 and len(tellable) == 24
    rng = random.Random(11)
    mixed = 0
    for i in range(8):
        work = tmp_path / f"w{i}"
        shutil.copytree(orig, work, symlinks=True)
        p = subprocess.Popen([sys.executable, "-m", "fastlkm.cli", *opts, str(work)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
        time.sleep(rng.uniform(0.1, 1.0) * span)
        os.killpg(p.pid, signal.SIGKILL)      # the command and its workers at once
        p.wait()
        got = _files(work)
        # every file whole, old or new; anything else is a temporary no scanner takes
        for n, data in got.items():
            if n in old:
                assert data in (old[n], new[n]), n
            else:
                base = os.path.basename(n)
                assert base.startswith(".") and base.endswith(".tmp"), n
                assert not is_module_path(base)
        assert sorted(old) == sorted(n for n in got if n in old)
        assert os.readlink(work / "build") == "/usr/src/nowhere"
        assert sorted(f"{r}" for r in scan_modules(work)) == \
            sorted(n for n in modules)
        done = {n for n in modules if got[n] == new[n]}
        mixed += 0 < len(done) < len(modules)
        # verify agrees: processed files check out, the others are reported as unprocessed
        v = _fastlkm("verify", str(work), env=env)
        todo = {line.split(": ")[0] for line in v.stdout.splitlines()}
        assert all(line.endswith(": not processed by fastlkm hash (no embedded tables)")
                   for line in v.stdout.splitlines()), v.stdout
        assert todo == {str(work / n) for n in tellable - done}
        assert f"30 files checked: 0 with problems, {len(todo)} not processed, " \
               "0 unreadable" in v.stderr
        assert v.returncode == (1 if todo else 0)
        # a rerun completes the job and removes the leftovers
        assert _fastlkm(*opts, str(work), env=env).returncode == 0
        assert _files(work) == new
        v = _fastlkm("verify", str(work), env=env)
        assert v.returncode == 0 and v.stdout == ""
        shutil.rmtree(work)
    assert mixed, f"no kill landed while the tree was being rewritten ({span:.2f} s)"


def test_hash_leftovers_are_ignored_then_removed(tmp_path: Path) -> None:
    """What a hash killed between writing its temporary file and renaming it leaves: no
    scanner takes it for a module, and the next run removes it (and only it)."""
    from fastlkm.cli import main
    from fastlkm.depmod.modfiles import walk_modules as scan_modules
    from fastlkm.embedded.postprocess import plan_paths
    from fastlkm.io.codecs import compress
    from tests.kernel.test_ksymtab import EXPORTS, build_module

    d = tmp_path / "kernel"
    d.mkdir()
    (d / "a.ko.xz").write_bytes(compress(build_module(EXPORTS), "xz"))
    stale = d / ".a.ko.xz.k3x_9q0z.tmp"
    stale.write_bytes(b"\x7fELF half a module")
    mine = d / ".notes.k3x_9q0z.tmp"        # not beside a file hash writes: kept
    mine.write_bytes(b"x")
    assert list(scan_modules(tmp_path)) == ["kernel/a.ko.xz"]
    assert [j.src for j in plan_paths([str(tmp_path)]).jobs] == [str(d / "a.ko.xz")]
    assert main(["verify", str(tmp_path)]) == 1          # not processed; the leftover unseen
    assert main(["hash", "--sort", str(tmp_path)]) == 0
    assert not stale.exists() and mine.exists()
    assert main(["verify", str(tmp_path)]) == 0
