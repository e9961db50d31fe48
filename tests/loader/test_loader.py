"""The loader model: kernel semantics on small facts, and zero failures on real trees."""

from __future__ import annotations

import dataclasses

import pytest

from fastlkm.depmod.probe import probe_order
from fastlkm.kernel.facts import Export, Import, Kernel, License, Module
from fastlkm.loader.loader import Loader, module_match, same_magic
from tests.conftest import KERNELS

GPL = (("license", "GPL"), ("intree", "Y"))


def kernel(*exports: Export, modversions: bool = False, **config: str) -> Kernel:
    return Kernel("test", tuple(exports), "test", modversions=modversions,
                  config={"CONFIG_MODULE_FORCE_LOAD": "y", **config})


def mod(name: str, imports: tuple[str, ...] = (), exports: tuple[Export, ...] = (),
        info: tuple[tuple[str, str], ...] = GPL, **kw: object) -> Module:
    return Module(name, f"{name}.ko", exports=exports,
                  imports=tuple(Import(i) for i in imports),
                  modinfo=(*info, ("intree", "Y"), ("vermagic", "6.0 SMP mod_unload")),
                  **kw)  # type: ignore


def texts(r: object) -> list[str]:
    return [m.text for m in r.messages]  # type: ignore[attr-defined]


def test_vmlinux_then_newest_module_first() -> None:
    L = Loader(kernel(Export("a")))
    assert L.load(mod("m1", exports=(Export("b"),))).ok
    assert L.load(mod("m2", exports=(Export("c"),))).ok
    r = L.load(mod("user", ("a", "b", "c")))
    assert r.ok and r.lookups == 3 and r.resolved == 3
    owner, _ = L.find_symbol("b", gplok=True)  # type: ignore[misc]
    assert owner is not None and owner.name == "m1"


def test_unknown_symbol_every_one_reported_last_error_kept() -> None:
    L = Loader(kernel(Export("a")))
    r = L.load(mod("m", ("x", "a", "y")))
    assert not r.ok and r.err == -2
    assert texts(r) == ["m: Unknown symbol x (err -2)", "m: Unknown symbol y (err -2)"]


def test_weak_and_arch_ignored_symbols_are_fine() -> None:
    L = Loader(kernel())
    m = dataclasses.replace(mod("m"), imports=(Import("w", weak=True),
                                               Import("_GLOBAL_OFFSET_TABLE_")), machine=62)
    assert L.load(m).ok
    m386 = dataclasses.replace(m, name="n", machine=40)  # ARM does not ignore it
    assert texts(L.load(m386)) == ["n: Unknown symbol _GLOBAL_OFFSET_TABLE_ (err -2)"]


def test_gpl_only_invisible_to_proprietary_module() -> None:
    L = Loader(kernel(Export("g", License.GPL_ONLY), Export("p")))
    r = L.load(mod("prop", ("g", "p"), info=(("license", "Proprietary"),)))
    assert texts(r) == ["prop: module license 'Proprietary' taints kernel.",
                        "Disabling lock debugging due to kernel taint",
                        "prop: Unknown symbol g (err -2)"]
    # the taint message is printed once per boot
    r = L.load(mod("prop2", ("p",), info=()))
    assert r.ok and texts(r) == []


def test_gpl_only_flag_of_kflagstab_kernel() -> None:
    k = kernel(Export("g", License.GPL_ONLY, flags=1), Export("p"))
    r = Loader(k).load(mod("prop", ("g",), info=(("license", "BSD"),)))
    assert texts(r)[-1] == "prop: Unknown symbol g (err -2)"


def test_dual_licenses_are_gpl_compatible() -> None:
    L = Loader(kernel(Export("g", License.GPL_ONLY)))
    for i, lic in enumerate(("Dual BSD/GPL", "Dual MIT/GPL", "Dual MPL/GPL", "GPL v2",
                             "GPL and additional rights")):
        assert L.load(mod(f"m{i}", ("g",), info=(("license", lic),))).ok


def test_namespace_must_be_imported() -> None:
    k = kernel(Export("s", namespace="CXL"))
    L = Loader(k)
    r = L.load(mod("m", ("s",)))
    assert texts(r) == [
        "m: module uses symbol (s) from namespace CXL, but does not import it.",
        "m: Unknown symbol s (err -22)",
    ]
    assert L.load(mod("n", ("s",), info=(*GPL, ("import_ns", "CXL")))).ok


def test_module_namespace_names_its_users() -> None:
    k = kernel(Export("s", namespace="module:kvm-amd,kvm-intel"),
               Export("t", namespace="module:foo-*"))
    L = Loader(k)
    assert L.load(mod("kvm_amd", ("s",))).ok
    assert L.load(mod("foo_bar", ("t",))).ok
    assert not L.load(mod("kvm", ("s",))).ok
    assert module_match("kvm_intel", "kvm-amd,kvm-intel")
    assert not module_match("kvm_intel2", "kvm-amd,kvm-intel")


def test_modversions_crc_mismatch() -> None:
    k = kernel(Export("s", crc=0x1234), Export("t", crc=7), modversions=True)
    L = Loader(k)
    m = dataclasses.replace(mod("m"), imports=(Import("s", crc=0x1235), Import("t", crc=7)),
                            versions=(("s", 0x1235), ("t", 7)), has_versions=True)
    r = L.load(m)
    assert texts(r) == ["m: disagrees about version of symbol s",
                        "m: Unknown symbol s (err -22)"]
    # without modversions in the kernel, CRCs are not compared
    assert Loader(dataclasses.replace(k, modversions=False)).load(m).ok


def test_no_versions_forces_load_with_taint_or_fails() -> None:
    k = kernel(Export("s", crc=1), modversions=True)
    r = Loader(k).load(mod("m", ("s",)))
    assert r.ok and texts(r) == ["m: s: kernel tainted.",
                                 "Disabling lock debugging due to kernel taint"]
    k2 = dataclasses.replace(k, config={"CONFIG_MODULE_FORCE_LOAD": "n"})
    r = Loader(k2).load(mod("m", ("s",)))
    assert not r.ok and texts(r)[-1] == "m: Unknown symbol s (err -22)"


def test_duplicate_export_fails() -> None:
    L = Loader(kernel(Export("a")))
    assert L.load(mod("m1", exports=(Export("b"),))).ok
    r = L.load(mod("m2", exports=(Export("b"),)))
    assert texts(r) == ["m2: exports duplicate symbol b (owned by m1)"] and r.err == -8
    r = L.load(mod("m3", exports=(Export("a"),)))
    assert texts(r) == ["m3: exports duplicate symbol a (owned by kernel)"]


def test_already_loaded_and_unload() -> None:
    L = Loader(kernel())
    assert L.load(mod("m", exports=(Export("b"),))).ok
    assert L.load(mod("m")).err == -17
    L.unload("m")
    assert L.find_symbol("b", True) is None


def test_proprietary_owner_taint_inheritance() -> None:
    L = Loader(kernel(Export("g", License.GPL_ONLY)))
    assert L.load(mod("prop", exports=(Export("p"),), info=(("license", "Pro"),))).ok
    r = L.load(mod("user", ("p",)))
    assert r.ok and "user: module uses symbols p from proprietary module prop, inheriting " \
        "taint." in texts(r)
    r = L.load(mod("gpluser", ("g", "p")))
    assert not r.ok and "gpluser: module using GPL-only symbols uses symbols p from " \
        "proprietary module prop." in texts(r)


def test_common_symbols_refused() -> None:
    r = Loader(kernel()).load(dataclasses.replace(mod("m"), common=("buf",)))
    assert texts(r) == ["m: please compile with -fno-common"] and r.err == -8


def test_vermagic() -> None:
    k = dataclasses.replace(kernel(), vermagic="6.0 SMP mod_unload")
    L = Loader(k)
    bad = dataclasses.replace(mod("m"), modinfo=(*GPL, ("vermagic", "6.0 SMP preempt")))
    assert texts(L.load(bad)) == [
        "m: version magic '6.0 SMP preempt' should be '6.0 SMP mod_unload'"]
    assert same_magic("6.1 SMP x", "6.2 SMP x", has_crcs=True)
    assert not same_magic("6.1 SMP x", "6.2 SMP x", has_crcs=False)


# --- load_module()'s checks before symbols, in the kernel's order ----------------------

SIGNED = {"CONFIG_MODULE_SIG": "y"}


def oot(name: str, info: tuple[tuple[str, str], ...] = (("license", "GPL"),),
        **kw: object) -> Module:
    """An out-of-tree module (no intree=Y), unsigned, with the .modinfo *info*."""
    return Module(name, f"{name}.ko", modinfo=(("name", name), *info,
                                              ("vermagic", "6.0 SMP mod_unload")),
                  **kw)  # type: ignore[arg-type]


def test_taint_lines_once_per_boot_in_the_kernels_order() -> None:
    L = Loader(kernel(**SIGNED))
    first = L.load(oot("a", (("license", "Pro"), ("staging", "Y"), ("test", "Y"))))
    assert texts(first) == [
        "a: loading out-of-tree module taints kernel.",
        "a: module is from the staging directory, the quality is unknown, you have been "
        "warned.",
        "a: module license 'Pro' taints kernel.",
        "Disabling lock debugging due to kernel taint",
        "a: loading test module taints kernel.",
        "a: module verification failed: signature and/or required key missing - tainting "
        "kernel"]
    # 6.4 on (the release "test" says no version: the older load_module())
    L = Loader(dataclasses.replace(kernel(**SIGNED), release="6.12.1"))
    assert texts(L.load(oot("a", (("license", "Pro"),))))[-1] == \
        "a: module license taints kernel."
    # the taints are set: a second module says only what is not once per boot
    assert texts(L.load(oot("b", (("staging", "Y"),)))) == [
        "b: module is from the staging directory, the quality is unknown, you have been "
        "warned."]


def test_signature_forgiven_unless_enforced_and_a_bad_one_is_fatal() -> None:
    from fastlkm.kernel.signature import SigCheck

    k = kernel(**SIGNED)
    for err, reason in ((-61, "unsigned module"), (-65, "module with unsupported crypto"),
                        (-126, "module with unavailable key")):
        assert Loader(k).load(oot("m"), SigCheck(err)).ok
        r = Loader(k, sig_enforce=True).load(oot("m"), SigCheck(err))
        assert (r.ok, r.err, texts(r)) == (False, -129, [f"Loading of {reason} is rejected"])
    r = Loader(k).load(oot("m"), SigCheck(-129))
    assert (r.ok, r.err, texts(r)) == (False, -129, [])
    ok = Loader(k, sig_enforce=True).load(oot("m"), SigCheck(0))
    assert ok.ok and texts(ok) == ["m: loading out-of-tree module taints kernel."]
    # without CONFIG_MODULE_SIG: no check, no taint
    assert texts(Loader(kernel(), sig_enforce=True).load(oot("m"))) == [
        "m: loading out-of-tree module taints kernel."]
    # CONFIG_MODULE_SIG_FORCE enforces by itself
    r = Loader(kernel(**SIGNED, CONFIG_MODULE_SIG_FORCE="y")).load(oot("m"))
    assert texts(r) == ["Loading of unsigned module is rejected"]


def test_another_architecture_is_refused_first() -> None:
    k = dataclasses.replace(kernel(Export("x")), machine=62)
    r = Loader(k).load(oot("m", machine=183, imports=(Import("nope"),)))
    assert (r.err, texts(r)) == (-8, ["Invalid architecture in ELF header: 183"])
    i386 = dataclasses.replace(k, machine=3)
    assert Loader(i386).load(oot("m", machine=6)).ok      # EM_486 is fine on i386


def test_struct_module_size_since_6_4() -> None:
    from fastlkm.kernel.facts import ThisModule

    k = dataclasses.replace(kernel(), release="6.12.1", struct_module_size=0x500)
    small = oot("m", this_module=ThisModule(1, 1, 2, 0x380))
    r = Loader(k).load(small)
    assert (r.err, texts(r)) == (-8, [
        "module m: .gnu.linkonce.this_module section size must match the kernel's built "
        "struct module size at run time"])
    assert Loader(k).load(oot("m", this_module=ThisModule(1, 1, 2, 0x500))).ok
    for tm, why in ((ThisModule(2, 1, 2, 0x500), "Exactly one .gnu.linkonce.this_module "
                     "section must exist."),
                    (ThisModule(1, 8, 2, 0x500), ".gnu.linkonce.this_module section must "
                     "have a size set"),
                    (ThisModule(1, 1, 0, 0x500), ".gnu.linkonce.this_module must occupy "
                     "memory during process execution")):
        assert texts(Loader(k).load(oot("m", this_module=tm))) == [f"module m: {why}"]
    # no modinfo name: the kernel says so in the name's place
    nameless = Module("m", "m.ko", this_module=ThisModule(0, 0, 0, 0))
    assert texts(Loader(k).load(nameless)) == [
        "module (missing .modinfo section or name field): Exactly one "
        ".gnu.linkonce.this_module section must exist."]
    # before 6.4 only a missing section is refused (and module_layout catches the rest)
    old = dataclasses.replace(k, release="6.1.0")
    assert Loader(old).load(small).ok
    assert texts(Loader(old).load(nameless))[0] == \
        "(missing .modinfo section or name field): No module found in object"


def test_module_layout_checked_before_vermagic() -> None:
    k = dataclasses.replace(kernel(Export("module_layout", crc=0x1234), modversions=True),
                            vermagic="6.0 SMP mod_unload")
    other = dataclasses.replace(oot("m"), has_versions=True,
                                versions=(("module_layout", 0x9999),),
                                modinfo=(("vermagic", "7.0 SMP preempt"),))
    r = Loader(k).load(other)
    assert (r.err, texts(r)) == (-8, ["m: disagrees about version of symbol module_layout"])
    missing = dataclasses.replace(other, versions=())
    assert texts(Loader(k).load(missing)) == ["m: no symbol version for module_layout"]
    same = dataclasses.replace(other, versions=(("module_layout", 0x1234),))
    assert texts(Loader(k).load(same)) == [
        "m: version magic '7.0 SMP preempt' should be '6.0 SMP mod_unload'"]


def test_an_elf_header_refused_outright_after_the_signature() -> None:
    from fastlkm.kernel.signature import SigCheck

    exe = b"\x7fELF\x02\x01\x01" + bytes(9) + (2).to_bytes(2, "little") + bytes(46)
    L = Loader(kernel(**SIGNED))
    r = L.load_image(exe, "dir/m.ko", SigCheck(-61))
    assert (r.module, r.err, texts(r)) == ("m", -8, ["Invalid ELF header type: 2 != 1"])
    assert L.load_image(exe.replace(b"\x02\x00", b"\x01\x00", 1)[:64], "m.ko", SigCheck(-61)
                        ).err == -8     # relocatable: read further (here: no sections)
    r = L.load_image(exe, "m.ko", SigCheck(-129))     # the signature is checked first
    assert (r.err, texts(r)) == (-129, [])


def test_livepatch_needs_support() -> None:
    r = Loader(kernel(CONFIG_LIVEPATCH="n")).load(oot("m", (("livepatch", "Y"),)))
    assert (r.err, texts(r)) == (-8, [
        "m: module is marked as livepatch module, but livepatch support is disabled"])
    r = Loader(kernel(CONFIG_LIVEPATCH="y")).load(oot("m", (("livepatch", "Y"),)))
    assert r.ok and "m: tainting kernel with TAINT_LIVEPATCH" in texts(r)


# --- real kernels -------------------------------------------------------------------------


@pytest.mark.corpus
@pytest.mark.parametrize("name", KERNELS)
@pytest.mark.parametrize("source", ["vmlinuz", "Module.symvers"])
def test_every_module_of_real_tree_loads(system, name: str, source: str) -> None:
    s = system(name, source)
    assert s.kernel.source.startswith(source)
    L = Loader(s.kernel)
    results = [L.load(m) for m in probe_order(s.modules, s.order)]
    failures = [m.text for r in results for m in r.failures]
    assert len(results) == len(s.modules) and not failures, failures[:10]
    assert sum(r.lookups for r in results) == sum(len(m.imports) for m in s.modules)


@pytest.mark.corpus
@pytest.mark.parametrize("name", KERNELS)
def test_vmlinuz_and_symvers_agree(corpus, system, name: str) -> None:
    """vmlinux's exports read from the image and from the headers' Module.symvers: the
    same names, licenses and namespaces, and each source's CRCs those the headers list
    (the text read here, not by fastlkm), all of them where MODVERSIONS is on."""
    a, b = system(name, "vmlinuz").kernel, system(name, "Module.symvers").kernel
    assert {e.name: (e.gpl_only, e.namespace) for e in a.exports} == \
        {e.name: (e.gpl_only, e.namespace) for e in b.exports}
    root, release = corpus(name)
    lines = [line.split("\t") for line in
             (root / f"usr/src/linux-headers-{release}/Module.symvers").read_text().splitlines()]
    listed = {f[1]: int(f[0], 16) for f in lines if f[2] == "vmlinux"}
    assert {e.name for e in a.exports} == set(listed)
    if any(listed.values()):   # MODVERSIONS: every export has its CRC in both sources
        assert a.modversions and b.modversions
        assert {e.name: e.crc for e in a.exports} == listed
        assert {e.name: e.crc for e in b.exports} == listed
    else:                      # no __kcrctab: the image has no CRC, the headers list zeros
        assert not a.modversions
        assert {e.crc for e in a.exports} == {None}
