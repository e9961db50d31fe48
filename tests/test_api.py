"""The public API: every name of fastlkm.__all__ is there, and importing fastlkm imports
none of them until asked."""

from __future__ import annotations

import subprocess
import sys

import fastlkm


def test_every_public_name_resolves() -> None:
    for name in fastlkm.__all__:
        assert getattr(fastlkm, name) is not None, name
    assert fastlkm.run_depmod.__name__ == "depmod"


def test_import_is_light() -> None:
    code = ("import sys, fastlkm; "
            "print(sorted(m for m in sys.modules if m.startswith('fastlkm.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
