"""The section header checks of load_module(), each kernel generation's, on a small
module and on every kind of damage (tests/loader/test_foreign_modules.py holds the same
damage against the kernels themselves under QEMU)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastlkm.elf.reader import ElfFile
from fastlkm.kernel.elfcheck import elf_validity
from tests.elf.elfbuild import EM_X86_64, SHF_ALLOC, SHF_EXECINSTR, SHF_WRITE, ElfBuilder
from tests.loader import mutate

V6_1, V6_6, V6_12 = (6, 1), (6, 6), (6, 12)
SIZE = 64      # this tiny module's struct module


def module(name: str = "m") -> bytes:
    b = ElfBuilder(True, True, EM_X86_64)
    b.add(".text", b"\xc3" * 16, flags=SHF_ALLOC | SHF_EXECINSTR, align=16)
    b.add(".modinfo", f"license=GPL\0name={name}\0".encode(), flags=SHF_ALLOC)
    b.add(".comment", b"GCC\0")
    b.add(".gnu.linkonce.this_module", bytes(SIZE), flags=SHF_ALLOC | SHF_WRITE, align=64)
    b.sym("printk")
    return b.build()


def shstrndx(d: bytes) -> int:
    return mutate.ehdr_field(d, "shstrndx")


def index(d: bytes, name: str) -> int:
    sec = ElfFile(d).section(name)
    assert sec is not None
    return sec.index


def test_a_sound_module_passes_every_generation() -> None:
    for v in (V6_1, V6_6, V6_12):
        assert elf_validity(module(), v, SIZE) is None
    assert elf_validity(b"not an ELF file at all" * 4, V6_12) is None   # not a verdict


def test_what_every_generation_refuses() -> None:
    d = module()
    n = len(ElfFile(d).sections)
    text = index(d, ".text")
    for v in (V6_1, V6_6, V6_12):
        assert elf_validity(mutate.set_ehdr(d, "shentsize", 65), v) == \
            "Invalid ELF section header size"
        assert elf_validity(mutate.set_ehdr(d, "shoff", len(d)), v) == \
            "Invalid ELF section header overflow"
        assert elf_validity(mutate.set_shdr(d, 0, "type", 1), v) == \
            "ELF Spec violation: section 0 type(1)!=SH_NULL or non-zero len or addr"
        assert elf_validity(mutate.set_shdr(d, text, "offset", len(d)), v) == \
            f"Invalid ELF section in module (section {text} type 1)"
        assert elf_validity(mutate.set_ehdr(d, "shstrndx", n), v) == \
            f"Invalid ELF section name index: {n} || e_shstrndx ({n}) >= e_shnum ({n})"
        assert elf_validity(mutate.unterminated_shstrtab(d), v) == \
            "ELF Spec violation: section name table isn't null terminated"
        size = ElfFile(d).sections[shstrndx(d)].size
        assert elf_validity(mutate.set_shdr(d, text, "name", size + 10), v) == \
            f"Invalid ELF section name in module (section {text} type 1)"
        assert elf_validity(mutate.set_shdr(d, ".symtab", "type", 1), v) == \
            "m: module has no symbols (stripped?)"
        assert elf_validity(mutate.set_shdr(d, ".symtab", "link", 0), v) == \
            f"Invalid ELF sh_link!=SHN_UNDEF(0) or (sh_link(0) >= hdr->e_shnum({n})"


def test_what_changed_between_generations() -> None:
    d = module()
    name_table = mutate.set_shdr(d, shstrndx(d), "type", 1)
    strtab = mutate.set_shdr(d, ".strtab", "type", 1)
    two_modinfo = mutate.set_shdr(d, ".comment", "name",
                                  mutate.shdr_field(d, ".modinfo", "name"))
    no_struct = mutate.set_shdr(d, ".gnu.linkonce.this_module", "name",
                                mutate.shdr_field(d, ".comment", "name"))
    nobits = mutate.set_shdr(d, ".gnu.linkonce.this_module", "type", 8)
    # 6.12: elf_validity_cache_*()
    assert elf_validity(name_table, V6_12) == "Invalid ELF section name table type: 1"
    assert elf_validity(strtab, V6_12) == "Invalid ELF symbol string table type: 1"
    assert elf_validity(two_modinfo, V6_12) == "Only one .modinfo section must exist."
    assert elf_validity(no_struct, V6_12) == \
        "module m: Exactly one .gnu.linkonce.this_module section must exist."
    assert elf_validity(nobits, V6_12) == \
        "module m: .gnu.linkonce.this_module section must have a size set"
    assert elf_validity(d, V6_12, SIZE + 8) == ("module m: .gnu.linkonce.this_module "
                                                "section size must match the kernel's built "
                                                "struct module size at run time")
    # 6.4-6.11: the same checks of this_module and .modinfo, other words
    assert elf_validity(no_struct, V6_6) == \
        "module m: Only one .gnu.linkonce.this_module section must exist."
    assert elf_validity(two_modinfo, V6_6) == "Only one .modinfo section must exist."
    assert elf_validity(name_table, V6_6) is None
    assert elf_validity(strtab, V6_6) is None
    # 6.1: setup_load_info() finds the first of a name; no size, no NOBITS check
    assert elf_validity(no_struct, V6_1) == "m: No module found in object"
    for unchecked in (name_table, strtab, two_modinfo, nobits):
        assert elf_validity(unchecked, V6_1, SIZE + 8) is None


def test_a_signature_trailer_is_not_part_of_the_image() -> None:
    """The loader checks the image without the trailer, as module_sig_check() cut it."""
    from fastlkm.kernel.facts import Kernel
    from fastlkm.kernel.signature import MODULE_SIG_STRING, MODULE_SIGNATURE, SigCheck
    from fastlkm.loader.loader import Loader

    d = module()
    trailer = bytes(1000) + MODULE_SIGNATURE.pack(0, 0, 2, 0, 0, 1000) + MODULE_SIG_STRING
    signed = mutate.set_ehdr(d, "shoff", len(d)) + trailer
    r = Loader(Kernel("6.12.0", (), "test"), sig_enforce=False).load_image(
        signed, "m.ko", SigCheck(0))
    assert [m.text for m in r.messages] == ["Invalid ELF section header overflow"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), max_size=12),
       st.sampled_from([V6_1, V6_6, V6_12]))
def test_any_damage_gives_a_line_or_none(edits: list[tuple[int, int]],
                                         version: tuple[int, int]) -> None:
    d = bytearray(module())
    for at, value in edits:
        if at < len(d):
            d[at] = value
    got = elf_validity(bytes(d), version, SIZE)
    assert got is None or (isinstance(got, str) and "\n" not in got)


@pytest.mark.parametrize("cut", [10, 63, 64, 200])
def test_cut_images(cut: int) -> None:
    got = elf_validity(module()[:cut], V6_12)
    assert got in (None, "Invalid ELF section header overflow")
