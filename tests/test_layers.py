"""The layers of the package are a contract (pyproject.toml, [tool.importlinter]): an
import that looks up, or a strategy that reads ELF, fails here."""

from __future__ import annotations

from pathlib import Path

import pytest
from importlinter import cli

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def test_layers_only_look_down(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = cli.lint_imports(config_filename=str(PYPROJECT), no_cache=True, no_logo=True)
    assert status == 0, capsys.readouterr().out
