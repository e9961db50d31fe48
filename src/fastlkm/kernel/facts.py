"""The facts fastlkm knows about a kernel: small frozen dataclasses, no ELF in sight.

The loader model, the lookup strategies, the depmod writer and the snapshot all work on
these, so a snapshot of a kernel serves every command that a live tree does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum


class License(IntEnum):
    """Which modules may use an export (enum mod_license in the kernel)."""

    NOT_GPL_ONLY = 0
    GPL_ONLY = 1
    WILL_BE_GPL_ONLY = 2  # __ksymtab_gpl_future, gone since Linux 5.13


# __kflagstab bits (enum ksym_flags, include/linux/module_symbol.h, Linux 7.x)
KSYM_FLAG_GPL_ONLY = 1 << 0
KSYM_FLAG_PROTECTED = 1 << 1


@dataclass(frozen=True, slots=True)
class Export:
    """One entry of an export table (struct kernel_symbol plus its CRC and flags)."""

    name: str
    license: License = License.NOT_GPL_ONLY
    namespace: str = ""
    crc: int | None = None
    table: str = "__ksymtab"   # the section the entry lives in
    flags: int = 0             # the __kflagstab byte on 7.x kernels, else 0

    @property
    def gpl_only(self) -> bool:
        return self.license == License.GPL_ONLY


@dataclass(frozen=True, slots=True)
class Import:
    """An undefined symbol of a module: what simplify_symbols() must resolve."""

    name: str
    weak: bool = False
    crc: int | None = None     # the CRC the module expects, from its __versions


@dataclass(frozen=True, slots=True)
class ThisModule:
    """The ``.gnu.linkonce.this_module`` section(s) of a module: its ``struct module``, which
    the kernel's elf_validity_cache_index_mod() checks (count, type, flags, size)."""

    count: int = 1             # how many sections of that name
    type: int = 1              # sh_type of the last one (SHT_PROGBITS, SHT_NOBITS, ...)
    flags: int = 2             # sh_flags (SHF_ALLOC)
    size: int = 0              # sh_size: the module's idea of sizeof(struct module)


@dataclass(frozen=True, slots=True)
class Module:
    """What the kernel's loader and depmod need to know about one module file."""

    name: str                              # the module name (dashes become underscores)
    path: str                              # the file, relative to the modules dir if inside
    exports: tuple[Export, ...] = ()
    imports: tuple[Import, ...] = ()       # in symbol-table order
    modinfo: tuple[tuple[str, str], ...] = ()
    versions: tuple[tuple[str, int], ...] = ()   # __versions / extended modversions
    has_versions: bool = False             # the module carries a __versions section
    signed: bool = False
    machine: int = 0                       # e_machine
    # the exported names as kmod's depmod reads them (__crc_* symbols, else every string
    # of __ksymtab_strings); None when they are the real export table's names
    kmod_symbols: tuple[str, ...] | None = None
    # SHN_COMMON symbols: the kernel refuses these ("Please compile with -fno-common")
    common: tuple[str, ...] = ()
    # the struct module section (count 0: the module has none); None when not known
    this_module: ThisModule | None = None

    def info(self, key: str) -> list[str]:
        """Every value of a .modinfo key, in file order."""
        return [v for k, v in self.modinfo if k == key]

    def info1(self, key: str) -> str | None:
        """The first value of a .modinfo key (as get_modinfo() in the kernel)."""
        for k, v in self.modinfo:
            if k == key:
                return v
        return None

    @property
    def license(self) -> str | None:
        return self.info1("license")

    @property
    def depends(self) -> list[str]:
        d = self.info1("depends")
        return [x for x in d.split(",") if x] if d else []

    @property
    def import_ns(self) -> list[str]:
        return self.info("import_ns")


@dataclass(frozen=True, slots=True)
class Kernel:
    """The kernel proper: vmlinux's exports and the facts the loader checks against."""

    release: str
    exports: tuple[Export, ...]
    source: str                       # where the exports came from, for messages
    machine: int = 0
    vermagic: str | None = None
    modversions: bool = False         # CONFIG_MODVERSIONS
    config: dict[str, str] = field(default_factory=dict, compare=False)
    # sizeof(struct module) of this build, as its own modules' this_module sections say
    struct_module_size: int | None = None
    # the X.509 certificates compiled into vmlinux (DER): the keys of the builtin keyring
    certificates: tuple[bytes, ...] = field(default=(), compare=False)
