"""One module file -> its :class:`~fastlkm.kernel.facts.Module` facts."""

from __future__ import annotations

from fastlkm.elf.reader import ElfFile
from fastlkm.elf.structs import (
    EM_SPARC,
    EM_SPARCV9,
    ET_REL,
    SHN_COMMON,
    SHN_UNDEF,
    STB_WEAK,
    STT_SPARC_REGISTER,
)
from fastlkm.errors import FastlkmError
from fastlkm.io.codecs import decompress_file
from fastlkm.kernel.facts import Import, Module, ThisModule
from fastlkm.kernel.ksymtab import kmod_symbols, read_exports
from fastlkm.kernel.modinfo import read_modinfo
from fastlkm.kernel.modname import modname
from fastlkm.kernel.modversions import read_versions
from fastlkm.kernel.signature import MODULE_SIG_STRING

THIS_MODULE = ".gnu.linkonce.this_module"


def elf_header_problem(data: bytes) -> str | None:
    """What the kernel's elf_validity_ehdr() says of an ELF image that is not a
    relocatable object (it refuses it before reading anything else), or None.  A file
    that is no ELF at all (too short, bad magic) is bad input, left to parse_module();
    the machine is checked against the kernel's in the loader, from the facts."""
    if len(data) < 64 or data[:4] != b"\x7fELF":
        return None
    e_type = int.from_bytes(data[16:18], "big" if data[5] == 2 else "little")
    if e_type != ET_REL:
        return f"Invalid ELF header type: {e_type} != {ET_REL}"
    return None


def parse_module(data: bytes, path: str, relpath: str | None = None) -> Module:
    """Decode the facts of one (decompressed) module image."""
    signed = data.endswith(MODULE_SIG_STRING)
    elf = ElfFile(data, path)
    if elf.e_type != ET_REL:
        raise elf.error(f"not a relocatable object (e_type {elf.e_type})", 16)
    exports = read_exports(elf)
    versions, has_versions = read_versions(elf)
    crc_of: dict[str, int] = {}
    for n, c in versions:
        crc_of.setdefault(n, c)
    sparc = elf.machine in (EM_SPARC, EM_SPARCV9)
    imports = []
    for s in elf.symbols_where(shndx=SHN_UNDEF):
        if not s.name or (sparc and s.type == STT_SPARC_REGISTER):
            continue
        imports.append(Import(s.name, s.bind == STB_WEAK, crc_of.get(s.name)))
    common = [s.name for s in elf.symbols_where(shndx=SHN_COMMON)]
    ks = kmod_symbols(elf)
    mods = [sec for sec in elf.sections if sec.name == THIS_MODULE]
    this = ThisModule(len(mods), mods[-1].type, mods[-1].flags, mods[-1].size) if mods \
        else ThisModule(0, 0, 0, 0)
    names = {e.name for e in exports}
    return Module(
        name=modname(path),
        path=relpath if relpath is not None else path,
        exports=tuple(exports),
        imports=tuple(imports),
        modinfo=read_modinfo(elf),
        versions=versions,
        has_versions=has_versions,
        signed=signed,
        machine=elf.machine,
        kmod_symbols=None if set(ks) == names and len(ks) == len(names) else tuple(ks),
        common=tuple(common),
        this_module=this,
    )


def read_module(path: str, relpath: str | None = None) -> Module:
    """Read, decompress and decode one module file."""
    try:
        return parse_module(decompress_file(path), path, relpath)
    except FastlkmError as e:
        raise e.with_path(path) from None
