"""Snapshots: the facts of one kernel and its modules in one small file.

Layout: the 8-byte magic ``FLKMSNAP``, a format version byte, then an xz stream (CRC32
check) holding one JSON document.  Every symbol name is stored once in a sorted string
table and referred to by index; an import's CRC is stored only where it differs from the
CRC of the export of that name (in a consistent tree it never does), so a snapshot of
Debian's 6.12 kernel (4,230 modules, ~200k imports) stays under a megabyte.  The
``__versions`` entries are kept in import order, not file order (the loader looks them
up by name, so the order carries no meaning).
"""

from __future__ import annotations

import base64
import binascii
import json
import lzma
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastlkm.errors import FormatError
from fastlkm.io.atomic import atomic_write
from fastlkm.kernel.facts import Export, Import, Kernel, License, Module, ThisModule

MAGIC = b"FLKMSNAP"
VERSION = 1
# the kernel configuration a loader decision depends on
CONFIG_KEYS = ("CONFIG_MODVERSIONS", "CONFIG_MODULE_FORCE_LOAD",
               "CONFIG_MODULE_ALLOW_MISSING_NAMESPACE_IMPORTS", "CONFIG_MODULE_SIG",
               "CONFIG_MODULE_SIG_FORCE", "CONFIG_EXTENDED_MODVERSIONS", "CONFIG_RETPOLINE",
               "CONFIG_MITIGATION_RETPOLINE", "CONFIG_LIVEPATCH")


@dataclass
class Snapshot:
    """A kernel, its modules (in the order depmod's walk finds them) and modules.order."""

    kernel: Kernel
    modules: list[Module]
    order: list[str] = field(default_factory=list)


def is_snapshot(path: str | Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def _enc_export(e: Export, s: dict[str, int]) -> list[Any]:
    return [s[e.name], int(e.license), e.namespace, e.crc, e.table, e.flags]


def _dec_export(x: list[Any], names: list[str]) -> Export:
    return Export(names[x[0]], License(x[1]), x[2], x[3], x[4], x[5])


def dumps(snap: Snapshot) -> bytes:
    k = snap.kernel
    names = sorted({e.name for e in k.exports}
                   | {e.name for m in snap.modules for e in m.exports}
                   | {i.name for m in snap.modules for i in m.imports}
                   | {n for m in snap.modules for n, _ in m.versions})
    s = {n: i for i, n in enumerate(names)}
    export_crc: dict[str, int | None] = {}
    for e in k.exports:
        export_crc.setdefault(e.name, e.crc)
    for m in snap.modules:
        for e in m.exports:
            export_crc.setdefault(e.name, e.crc)
    mods = []
    for m in snap.modules:
        vcrc = dict(m.versions)
        imported = {i.name for i in m.imports}
        # versions: which imports have one (their CRC being the exporter's unless listed),
        # then the entries no import names (module_layout), with their CRCs
        vmiss = [j for j, i in enumerate(m.imports) if i.name not in vcrc]
        vexpl = {str(j): vcrc[i.name] for j, i in enumerate(m.imports)
                 if i.name in vcrc and export_crc.get(i.name) != vcrc[i.name]}
        vextra = [[n, c] for n, c in m.versions if n not in imported]
        imports_crc_odd = {
            str(j): i.crc for j, i in enumerate(m.imports)
            if i.crc != (vcrc.get(i.name) if m.has_versions else None)
        }
        mods.append({
            "p": m.path, "n": m.name,
            "x": [_enc_export(e, s) for e in m.exports],
            "u": [s[i.name] for i in m.imports],
            "w": [j for j, i in enumerate(m.imports) if i.weak],
            "ic": imports_crc_odd,
            "i": [list(kv) for kv in m.modinfo],
            "vm": vmiss, "vc": vexpl, "vx": vextra, "hv": m.has_versions,
            "sg": m.signed, "em": m.machine,
            "ks": list(m.kmod_symbols) if m.kmod_symbols is not None else None,
            "c": list(m.common),
            "tm": None if (t := m.this_module) is None else [t.count, t.type, t.flags, t.size],
        })
    doc = {
        "names": names,
        "kernel": {
            "release": k.release, "source": k.source, "machine": k.machine,
            "vermagic": k.vermagic, "modversions": k.modversions,
            "config": {c: k.config[c] for c in CONFIG_KEYS if c in k.config},
            "exports": [_enc_export(e, s) for e in k.exports],
            "smod": k.struct_module_size,
            "certs": [base64.b64encode(c).decode() for c in k.certificates],
        },
        "modules": mods,
        "order": snap.order,
    }
    raw = json.dumps(doc, separators=(",", ":")).encode()
    return MAGIC + bytes([VERSION]) + lzma.compress(
        raw, check=lzma.CHECK_CRC32, preset=9 | lzma.PRESET_EXTREME)


def loads(data: bytes, path: str = "snapshot") -> Snapshot:
    if data[:len(MAGIC)] != MAGIC:
        raise FormatError("not a fastlkm snapshot (bad magic)", path, 0)
    if len(data) <= len(MAGIC):
        raise FormatError("truncated snapshot", path, len(data))
    if data[len(MAGIC)] != VERSION:
        raise FormatError(f"snapshot format {data[len(MAGIC)]} not supported", path, 8)
    try:
        dec = lzma.LZMADecompressor()
        raw = dec.decompress(data[len(MAGIC) + 1:], max_length=1 << 30)
        if not dec.eof:
            raise FormatError("truncated snapshot", path, len(data))
        doc = json.loads(raw)
        names: list[str] = doc["names"]
        kd = doc["kernel"]
        kernel = Kernel(
            release=kd["release"], exports=tuple(_dec_export(x, names) for x in kd["exports"]),
            source=kd["source"], machine=kd["machine"], vermagic=kd["vermagic"],
            modversions=kd["modversions"], config=dict(kd["config"]),
            # both absent from snapshots written before the loader checked them
            struct_module_size=kd.get("smod"),
            certificates=tuple(base64.b64decode(c) for c in kd.get("certs", [])),
        )
        export_crc: dict[str, int | None] = {}
        for e in kernel.exports:
            export_crc.setdefault(e.name, e.crc)
        mods_raw = doc["modules"]
        exports_of = [[_dec_export(x, names) for x in md["x"]] for md in mods_raw]
        for ex in exports_of:
            for e in ex:
                export_crc.setdefault(e.name, e.crc)
        modules = []
        for md, ex in zip(mods_raw, exports_of, strict=True):
            vmiss = set(md["vm"])
            vlist: list[tuple[str, int | None]] = []
            seen: set[str] = set()
            for j, ni in enumerate(md["u"]):
                n = names[ni]
                if j not in vmiss and n not in seen:
                    seen.add(n)
                    vlist.append((n, md["vc"].get(str(j), export_crc.get(n))))
            vlist.extend((n, c) for n, c in md["vx"])
            versions = tuple((n, c if c is not None else 0) for n, c in vlist)
            vcrc = dict(versions)
            weak = set(md["w"])
            odd = md["ic"]
            imports = []
            for j, ni in enumerate(md["u"]):
                n = names[ni]
                crc = odd[str(j)] if str(j) in odd else (vcrc.get(n) if md["hv"] else None)
                imports.append(Import(n, j in weak, crc))
            modules.append(Module(
                name=md["n"], path=md["p"], exports=tuple(ex), imports=tuple(imports),
                modinfo=tuple((a, b) for a, b in md["i"]), versions=versions,
                has_versions=md["hv"], signed=md["sg"], machine=md["em"],
                kmod_symbols=tuple(md["ks"]) if md["ks"] is not None else None,
                common=tuple(md["c"]),
                this_module=ThisModule(*md["tm"]) if md.get("tm") else None,
            ))
        return Snapshot(kernel, modules, list(doc["order"]))
    except FormatError:
        raise
    except (lzma.LZMAError, ValueError, KeyError, IndexError, TypeError, binascii.Error) as e:
        raise FormatError(f"corrupt snapshot ({type(e).__name__}: {e})", path) from None


def load(path: str | Path) -> Snapshot:
    return loads(Path(path).read_bytes(), str(path))


def save(snap: Snapshot, path: str | Path) -> int:
    data = dumps(snap)
    atomic_write(Path(path), data)
    return len(data)
