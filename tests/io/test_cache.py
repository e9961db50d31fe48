"""The persistent cache: served only while every file is unchanged, and a damaged cache is
a miss, never an error."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from fastlkm.cli import main
from fastlkm.depmod.cache import load_outputs, save_outputs
from fastlkm.io.cache import HEADER, SUFFIX, FactsCache, cache_dir, file_key


def test_facts_served_only_for_the_same_file(tmp_path: Path) -> None:
    f = tmp_path / "a.ko"
    f.write_bytes(b"one")
    c = FactsCache("x")
    c.put(str(f), file_key(str(f)), "facts-one")
    c.save()
    c = FactsCache("x")
    assert c.get(str(f), file_key(str(f))) == "facts-one"
    f.write_bytes(b"two!")                 # another size, another mtime
    assert FactsCache("x").get(str(f), file_key(str(f))) is None


def test_damaged_cache_files_are_misses() -> None:
    save_outputs("y", "k", {"modules.dep": b"x"})
    assert load_outputs("y", "k") == {"modules.dep": b"x"}
    assert load_outputs("y", "other") is None
    for p in cache_dir().glob("*" + SUFFIX):
        p.write_bytes(HEADER + b"\x80\x05garbage")   # a valid header, damaged contents
    assert load_outputs("y", "k") is None
    assert FactsCache("x").entries == {}


@pytest.mark.corpus
def test_warm_depmod_is_identical_and_notices_changes(corpus, tmp_path: Path) -> None:
    from tests.depmod.test_depmod import _shadow_root

    root, release = corpus("6.1-cloud-amd64")
    sh = _shadow_root(root, release, tmp_path / "r")
    moddir = sh / "lib/modules" / release
    # a module of our own, so that changing it leaves the cached corpus alone
    kernel = Path(os.readlink(moddir / "kernel"))
    (moddir / "kernel").unlink()
    shutil.copytree(kernel / "lib", moddir / "kernel/lib")
    outs = []
    for i in range(3):
        out = tmp_path / f"o{i}"
        assert main(["depmod", "-b", str(sh), release, "--into", str(out)]) == 0
        outs.append({p.name: p.read_bytes() for p in out.iterdir()})
    assert outs[0] == outs[1] == outs[2]
    assert len(list(cache_dir().glob("outputs-*" + SUFFIX))) == 1
    victim = moddir / "kernel/lib/crc7.ko"
    os.unlink(victim)
    out = tmp_path / "after"
    assert main(["depmod", "-b", str(sh), release, "--into", str(out)]) == 0
    assert b"crc7.ko" in outs[0]["modules.dep"]
    assert b"crc7.ko" not in (out / "modules.dep").read_bytes()
    nocache = tmp_path / "nocache"
    assert main(["depmod", "-b", str(sh), release, "--no-cache", "--into", str(nocache)]) == 0
    assert (nocache / "modules.dep").read_bytes() == (out / "modules.dep").read_bytes()


def test_outputs_key_depends_on_values_only() -> None:
    from fastlkm.depmod.cache import outputs_key

    shared = "kernel/a.ko"
    one = ["v", [(shared, shared, (1, 2, 3, 4, 5))], None]
    two = ["v", [("kernel/" + "a.ko", "kernel/a" + ".ko", (1, 2, 3, 4, 5))], None]
    assert outputs_key(one) == outputs_key(two)      # object sharing does not matter
    assert outputs_key(one) != outputs_key(["v", [(shared, shared, (1, 2, 3, 4, 6))], None])
