"""What the benchmark scripts share: the corpus script (scripts/corpus.py) and the
description of the machine a measurement was taken on."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from fastlkm.bench.run import machine

__all__ = ["corpus", "machine"]


def _load_corpus() -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "scripts/corpus.py"
    spec = importlib.util.spec_from_file_location("fastlkm_corpus", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # its dataclasses look their module up when made
    spec.loader.exec_module(module)
    return module


corpus = _load_corpus()
