"""The kernel's ``.config`` (``/boot/config-RELEASE``): ``CONFIG_X=y`` lines."""

from __future__ import annotations


def parse_config(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if line.startswith("CONFIG_"):
            k, _, v = line.partition("=")
            out[k] = v.strip('"') if v.startswith('"') else v
    return out
