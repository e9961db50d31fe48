"""The command line: exit statuses, one-line errors, JSON, on the shipped snapshot and on
real trees."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fastlkm.cli import main
from fastlkm.target import shipped_snapshot

SNAP = str(shipped_snapshot())


def test_resolve_snapshot_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["resolve", SNAP, "ext4", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    s = doc["summary"]
    assert s["failed"] == 0 and s["loaded"] == s["modules"] >= 2
    assert s["lookups"] == s["resolved"] > 100
    names = [m["name"] for m in doc["modules"]]
    assert names[-1] == "ext4" and "jbd2" in names and names.index("jbd2") < names.index("ext4")


def test_resolve_default_is_snapshot_or_running_kernel(capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    assert main(["resolve", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["summary"]["failed"] == 0


def test_errors_are_one_line_with_status_2(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.ko"
    bad.write_bytes(b"\x7fELF\x02\x01\x01")
    assert main(["check", str(bad), "--kernel", SNAP]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"fastlkm: error: {bad}: truncated ELF identification (7 bytes) "
                   "(at offset 0)"]
    assert main(["resolve", str(tmp_path / "nothing")]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert main(["resolve", SNAP, "no_such_module"]) == 2
    assert "no such module" in capsys.readouterr().err
    trunc = tmp_path / "t.snap"
    trunc.write_bytes(Path(SNAP).read_bytes()[:4000])
    assert main(["resolve", str(trunc)]) == 2
    assert "truncated snapshot" in capsys.readouterr().err


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    from fastlkm.errors import FormatError

    bad = tmp_path / "bad.ko"
    bad.write_bytes(b"junk")
    with pytest.raises(FormatError):
        main(["--debug", "check", str(bad), "--kernel", SNAP])


@pytest.mark.corpus
def test_check_out_of_tree_module(corpus, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A module given as a file is checked against a kernel: with its dependencies it
    loads; with a proprietary license it would not, and the reason is the kernel's."""
    from tests.loader import mutate

    root, release = corpus("6.1-cloud-amd64")
    ko = root / "lib/modules" / release / "kernel/net/8021q/8021q.ko"
    assert main(["check", str(ko), "--kernel", str(root)]) == 0
    out = capsys.readouterr().out
    assert "8021q: would load on" in out and "mrp" in out
    pro = tmp_path / "8021q.ko"
    # still signed: the changed bytes no longer match the signature (EKEYREJECTED, even
    # without enforcement, and the kernel says nothing)
    pro.write_bytes(mutate.set_license(ko.read_bytes(), "Pro"))
    assert main(["check", str(pro), "--kernel", str(root), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert (doc["loads"], doc["error"], doc["messages"]) == (False, "EKEYREJECTED", [])
    pro.write_bytes(mutate.unsigned(mutate.set_license(ko.read_bytes(), "Pro")))
    assert main(["check", str(pro), "--kernel", str(root), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert not doc["loads"]
    assert "8021q: module license 'Pro' taints kernel." in doc["messages"]
    assert any(m.startswith("8021q: Unknown symbol ") and m.endswith("(err -2)")
               for m in doc["messages"])


def test_snapshot_of_a_snapshot_is_the_same_facts(tmp_path: Path) -> None:
    from fastlkm.snapshot import load

    out = tmp_path / "again.snap"
    assert main(["snapshot", SNAP, "-o", str(out)]) == 0
    a, b = load(SNAP), load(out)
    assert a.kernel == b.kernel and a.order == b.order
    assert a.modules == b.modules


def test_hash_styles_are_the_storable_ones() -> None:
    from fastlkm.cli import HASH_STYLES
    from fastlkm.embedded.codec import STORABLE

    assert set(HASH_STYLES) == {*STORABLE, "all"}


def test_only_the_command_run_is_built_and_it_is_whole() -> None:
    import argparse

    from fastlkm.cli import COMMANDS, parser

    def sub(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        action = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
        return dict(action.choices)

    full = sub(parser([]))
    assert sorted(full) == sorted(COMMANDS)
    for name in COMMANDS:
        alone = sub(parser(["--debug", name]))
        assert alone[name].format_help() == full[name].format_help()
        others = [n for n in COMMANDS if n != name]
        assert all(len(alone[n]._actions) == 1 for n in others)   # just -h


def test_resolve_into_a_closed_pipe_ends_quietly() -> None:
    """``fastlkm resolve | head``: no 'Broken pipe' error, the status of a killed writer."""
    import subprocess
    import sys

    # --json: megabytes, far more than a pipe holds, so the writer meets the closed end
    proc = subprocess.Popen([sys.executable, "-m", "fastlkm", "resolve", SNAP, "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()              # the reader goes away, as head does
    err = proc.stderr.read().decode()
    assert proc.wait() == 141
    assert "Broken pipe" not in err and "Traceback" not in err
    assert all(line.startswith("fastlkm: ") for line in err.splitlines())


def test_check_several_kernels_table(tmp_path: Path) -> None:
    """Several answers: one block per kernel, then on a terminal a table of the verdicts."""
    import io

    from fastlkm.verdicts import check_many
    from tests.depmod.test_depmod_cycles import dep_module

    mod = tmp_path / "alien.ko"
    body = bytearray(dep_module(["f_alien"], []))
    body[18:20] = (183).to_bytes(2, "little")       # e_machine: AArch64
    mod.write_bytes(bytes(body))
    c = check_many(str(mod), [SNAP, SNAP])
    out = io.StringIO()
    c.write(out, io.StringIO(), table=True)
    text = out.getvalue()
    blocks = text.split("\n\n")
    assert len(blocks) == 3 and c.status == 1
    for block in blocks[:2]:
        lines = block.splitlines()
        assert lines[0] == "Invalid architecture in ELF header: 183"
        assert lines[-1].startswith("alien: would NOT load (err -8, ENOEXEC) on 6.12")
        assert all(x.startswith("fastlkm: ") for x in lines[1:-1])
    table = blocks[2].splitlines()
    assert table[0].split() == ["kernel", "verdict", "err", "first", "refusal"]
    assert table[1].split()[1:4] == ["refused", "-8", "Invalid"]
