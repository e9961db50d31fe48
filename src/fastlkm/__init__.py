"""fastlkm: fast symbol resolution for Linux loadable kernel modules.

The public API is what ``__all__`` names (README, "Python API"); each name is imported on
first use, so that ``import fastlkm`` stays as cheap as the command line needs.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = {
    # facts (kernel/facts.py)
    "Export": "fastlkm.kernel.facts",
    "Import": "fastlkm.kernel.facts",
    "Kernel": "fastlkm.kernel.facts",
    "License": "fastlkm.kernel.facts",
    "Module": "fastlkm.kernel.facts",
    # reading kernels and modules
    "System": "fastlkm.target",
    "open_system": "fastlkm.target",
    "read_module": "fastlkm.kernel.module",
    # the loader model
    "Loader": "fastlkm.loader.loader",
    "LoadResult": "fastlkm.loader.loader",
    "verify_module": "fastlkm.kernel.signature",
    "probe_order": "fastlkm.depmod.probe",
    # one function per command
    "resolve": "fastlkm.verdicts",
    "check": "fastlkm.verdicts",
    "check_many": "fastlkm.verdicts",
    "DepmodOptions": "fastlkm.depmod.run",
    "run_depmod": "fastlkm.depmod.run",
    "run_bench": "fastlkm.bench.run",
    "HashOptions": "fastlkm.embedded.postprocess",
    "hash_files": "fastlkm.embedded.postprocess",
    "verify_files": "fastlkm.embedded.postprocess",
    "save_snapshot": "fastlkm.target",
    "build_kernel": "fastlkm.kbuild.build",
    "run_kernel_bench": "fastlkm.kbuild.bench",
    # the lookup strategies
    "STRATEGIES": "fastlkm.lookup.strategies",
    # limits and errors
    "decompression_cap": "fastlkm.io.codecs",
    "FastlkmError": "fastlkm.errors",
    "FormatError": "fastlkm.errors",
    "NotFoundError": "fastlkm.errors",
    "UsageError": "fastlkm.errors",
    "CycleError": "fastlkm.errors",
}
_RENAMED = {"run_depmod": "depmod", "run_kernel_bench": "run_bench"}   # the name inside its module

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'fastlkm' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(module), _RENAMED.get(name, name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
