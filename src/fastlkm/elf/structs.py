"""ELF constants and struct layouts, described once per class and byte order."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

ELFMAG = b"\x7fELF"
ELFCLASS32, ELFCLASS64 = 1, 2
ELFDATA2LSB, ELFDATA2MSB = 1, 2

ET_REL, ET_EXEC, ET_DYN = 1, 2, 3

SHT_NULL, SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB, SHT_RELA = 0, 1, 2, 3, 4
SHT_HASH, SHT_DYNAMIC, SHT_NOTE, SHT_NOBITS, SHT_REL = 5, 6, 7, 8, 9
SHT_DYNSYM = 11
SHT_GNU_HASH = 0x6FFFFFF6
SHF_ALLOC = 0x2

SHN_UNDEF = 0
SHN_LORESERVE = 0xFF00
SHN_ABS = 0xFFF1
SHN_COMMON = 0xFFF2
SHN_XINDEX = 0xFFFF
SHN_LIVEPATCH = 0xFF20

STB_LOCAL, STB_GLOBAL, STB_WEAK = 0, 1, 2
STT_NOTYPE, STT_OBJECT, STT_FUNC, STT_SECTION = 0, 1, 2, 3
STT_SPARC_REGISTER = 13

EM_386 = 3
EM_SPARC = 2
EM_MIPS = 8
EM_PPC = 20
EM_PPC64 = 21
EM_S390 = 22
EM_ARM = 40
EM_SPARCV9 = 43
EM_X86_64 = 62
EM_AARCH64 = 183
EM_RISCV = 243
EM_LOONGARCH = 258

MACHINE_NAMES = {
    EM_386: "i386", EM_SPARC: "sparc", EM_MIPS: "mips", EM_PPC: "powerpc",
    EM_PPC64: "powerpc64", EM_S390: "s390", EM_ARM: "arm", EM_SPARCV9: "sparc64",
    EM_X86_64: "x86_64", EM_AARCH64: "aarch64", EM_RISCV: "riscv", EM_LOONGARCH: "loongarch",
}


class Ehdr(NamedTuple):
    """The ELF header (Elf32_Ehdr / Elf64_Ehdr), field by field."""

    ident: bytes
    type: int
    machine: int
    version: int
    entry: int
    phoff: int
    shoff: int
    flags: int
    ehsize: int
    phentsize: int
    phnum: int
    shentsize: int
    shnum: int
    shstrndx: int


class Shdr(NamedTuple):
    """A section header (Elf32_Shdr / Elf64_Shdr), field by field."""

    name: int
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    info: int
    addralign: int
    entsize: int


@dataclass(frozen=True, slots=True)
class Layout:
    """The struct formats of one ELF class and byte order."""

    elfclass: int
    little: bool
    ehdr: struct.Struct
    shdr: struct.Struct
    sym: struct.Struct
    rel: struct.Struct
    rela: struct.Struct
    word: struct.Struct      # an address-sized unsigned integer
    u32: struct.Struct
    s32: struct.Struct
    u16: struct.Struct

    @property
    def is64(self) -> bool:
        return self.elfclass == ELFCLASS64

    @property
    def ptr_size(self) -> int:
        return 8 if self.is64 else 4

    def read_ehdr(self, data: bytes) -> Ehdr:
        return Ehdr._make(self.ehdr.unpack_from(data, 0))

    def read_shdr(self, data: bytes, offset: int) -> Shdr:
        return Shdr._make(self.shdr.unpack_from(data, offset))


def _layout(elfclass: int, little: bool) -> Layout:
    e = "<" if little else ">"
    if elfclass == ELFCLASS64:
        return Layout(
            elfclass, little,
            # e_ident[16] e_type e_machine e_version e_entry e_phoff e_shoff e_flags
            # e_ehsize e_phentsize e_phnum e_shentsize e_shnum e_shstrndx
            ehdr=struct.Struct(e + "16sHHIQQQIHHHHHH"),
            # sh_name sh_type sh_flags sh_addr sh_offset sh_size sh_link sh_info
            # sh_addralign sh_entsize
            shdr=struct.Struct(e + "IIQQQQIIQQ"),
            # st_name st_info st_other st_shndx st_value st_size
            sym=struct.Struct(e + "IBBHQQ"),
            rel=struct.Struct(e + "QQ"),
            rela=struct.Struct(e + "QQq"),
            word=struct.Struct(e + "Q"),
            u32=struct.Struct(e + "I"), s32=struct.Struct(e + "i"), u16=struct.Struct(e + "H"),
        )
    return Layout(
        elfclass, little,
        ehdr=struct.Struct(e + "16sHHIIIIIHHHHHH"),
        shdr=struct.Struct(e + "IIIIIIIIII"),
        # st_name st_value st_size st_info st_other st_shndx
        sym=struct.Struct(e + "IIIBBH"),
        rel=struct.Struct(e + "II"),
        rela=struct.Struct(e + "IIi"),
        word=struct.Struct(e + "I"),
        u32=struct.Struct(e + "I"), s32=struct.Struct(e + "i"), u16=struct.Struct(e + "H"),
    )


LAYOUTS = {
    (c, little): _layout(c, little)
    for c in (ELFCLASS32, ELFCLASS64)
    for little in (True, False)
}
