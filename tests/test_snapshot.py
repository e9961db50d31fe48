"""Snapshots keep every fact the loader and depmod use."""

from __future__ import annotations

import dataclasses

import pytest

from fastlkm.depmod.compute import build
from fastlkm.depmod.output import modules_dep, modules_symbols
from fastlkm.errors import FormatError
from fastlkm.kernel.facts import Module
from fastlkm.snapshot import Snapshot, dumps, loads
from fastlkm.target import shipped_snapshot, to_snapshot
from tests.conftest import KERNELS


def _norm(m: Module) -> Module:
    """__versions order is not kept in a snapshot (docs/formats.md)."""
    return dataclasses.replace(m, versions=tuple(sorted(m.versions)))


@pytest.mark.corpus
@pytest.mark.parametrize("name", KERNELS)
def test_round_trip_of_real_trees(system, name: str) -> None:
    s = system(name)
    snap = loads(dumps(to_snapshot(s)))
    assert snap.kernel == s.kernel and snap.order == s.order
    assert [_norm(m) for m in snap.modules] == [_norm(m) for m in s.modules]
    # and depmod from the snapshot writes what it writes from the tree
    a, b = build(s.modules, s.order), build(snap.modules, snap.order)
    assert modules_dep(a) == modules_dep(b) and modules_symbols(a) == modules_symbols(b)


def test_shipped_snapshot_is_small_and_whole() -> None:
    data = shipped_snapshot().read_bytes()
    assert len(data) <= 1_000_000
    snap = loads(data)
    assert len(snap.modules) > 1000 and len(snap.kernel.exports) > 1000
    assert not snap.kernel.source.startswith("/")   # no path of the machine it was made on


def test_corrupt_snapshots_are_format_errors() -> None:
    data = dumps(Snapshot(loads(shipped_snapshot().read_bytes()).kernel, [], []))
    for bad in (b"", b"FLKMSNAP", data[:9] + b"\0" * 20, data[:-10], b"FLKMSNAP\x09" + data[9:]):
        with pytest.raises(FormatError):
            loads(bad)
