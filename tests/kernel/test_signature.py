"""Module signatures checked as module_sig_check() checks them: a module signed here (the
kernel's sign-file format, by openssl) with a throwaway key, against that key's
certificate, another one, none; changed bytes; broken trailers; and the certificates
compiled into a real Debian kernel image."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from fastlkm.kernel.signature import (
    EBADMSG,
    EKEYREJECTED,
    ENODATA,
    ENOKEY,
    ENOPKG,
    MODULE_SIG_STRING,
    MODULE_SIGNATURE,
    sign,
    split_signature,
    system_certificates,
    verify_module,
)
from tests.conftest import require_tools

IMAGE = b"\x7fELF" + bytes(range(256)) * 64


def _key(where: Path, cn: str, *newkey: str) -> tuple[Path, bytes]:
    """A throwaway key and its certificate (PEM path, DER bytes); RSA unless *newkey*
    says otherwise (openssl req's -newkey and -pkeyopt)."""
    require_tools("openssl")
    pem = where / f"{cn.replace(' ', '_')}.pem"
    subprocess.run(["openssl", "req", "-new", "-nodes", "-x509", "-days", "2", "-batch",
                    "-subj", f"/CN={cn}", "-newkey", *(newkey or ("rsa:2048",)),
                    "-keyout", str(pem), "-out", str(pem)], check=True, capture_output=True)
    der = subprocess.run(["openssl", "x509", "-in", str(pem), "-outform", "DER"],
                         check=True, capture_output=True).stdout
    return pem, der


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, bytes]]:
    d = tmp_path_factory.mktemp("keys")
    return {"rsa": _key(d, "fastlkm rsa"), "other": _key(d, "fastlkm other")}


def test_signed_module_verifies_with_its_key_only(keys) -> None:
    pem, der = keys["rsa"]
    signed = sign(IMAGE, str(pem), str(pem), "sha512")
    ok = verify_module(signed, [keys["other"][1], der])
    assert ok.ok and ok.key == "CN=fastlkm rsa"
    assert ok.info is not None
    assert (ok.info.signer, ok.info.hash_algo, ok.info.pkey_algo) == \
        ("fastlkm rsa", "sha512", "rsa")
    assert verify_module(signed, [keys["other"][1]]).err == -ENOKEY
    assert verify_module(signed, []).err == -ENOKEY
    assert split_signature(signed)[0] == IMAGE


def test_one_changed_byte_is_rejected(keys) -> None:
    pem, der = keys["rsa"]
    signed = bytearray(sign(IMAGE, str(pem), str(pem)))
    signed[100] ^= 1
    r = verify_module(bytes(signed), [der])
    assert r.err == -EKEYREJECTED and "changed after signing" in r.why
    # with no trusted key the kernel never gets to compare: the key is unavailable
    assert verify_module(bytes(signed), []).err == -ENOKEY


def test_ecdsa_signature(tmp_path: Path) -> None:
    pem, der = _key(tmp_path, "fastlkm ec", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1")
    signed = sign(IMAGE, str(pem), str(pem))
    r = verify_module(signed, [der])
    assert r.ok and r.info is not None and r.info.pkey_algo == "ecdsa"
    changed = signed.replace(b"\x7fELF", b"\x7fELG", 1)
    assert verify_module(changed, [der]).err == -EKEYREJECTED


def _trailer(sig: bytes, algo: int = 0, id_type: int = 2, pad: int = 0) -> bytes:
    ms = bytearray(MODULE_SIGNATURE.pack(algo, 0, id_type, 0, 0, len(sig)))
    ms[5] = pad
    return IMAGE + sig + bytes(ms) + MODULE_SIG_STRING


def test_broken_trailers_as_mod_check_sig() -> None:
    assert verify_module(IMAGE, []).err == -ENODATA
    r = verify_module(_trailer(b"x" * 8, id_type=1), [])
    assert (r.err, r.lines) == (-ENOPKG, ("module: not signed with expected PKCS#7 message",))
    r = verify_module(_trailer(b"x" * 8, algo=1), [])
    assert (r.err, r.lines) == (
        -EBADMSG, ("module: PKCS#7 signature info has unexpected non-zero params",))
    assert verify_module(_trailer(b"x" * 8, pad=1), []).err == -EBADMSG
    assert verify_module(_trailer(b"\x30\x03\x02\x01\x05"), []).err == -EBADMSG
    # a length longer than the file
    huge = IMAGE[:8] + MODULE_SIGNATURE.pack(0, 0, 2, 0, 0, 1 << 20) + MODULE_SIG_STRING
    assert verify_module(huge, []).err == -EBADMSG


def test_certificates_found_in_an_image(keys) -> None:
    a, b = keys["rsa"][1], keys["other"][1]
    blob = b"\0" * 999 + a + b + b"\x30\x82\x00\x10\x30\x82junk" + b"\0" * 77 + a
    assert system_certificates(blob) == (a, b)
    assert system_certificates(b"\0" * 4096) == ()


@pytest.mark.corpus
def test_debian_kernel_trusts_its_own_modules(system: Callable[..., object]) -> None:
    """Debian's kernels carry their build key in vmlinux; their modules verify with it,
    and not with the other generation's."""
    from fastlkm.io.codecs import decompress_file

    s61, s612 = system("6.1-cloud-amd64"), system("6.12-amd64")
    for s, other in ((s61, s612), (s612, s61)):
        certs = s.kernel.certificates  # type: ignore[attr-defined]
        assert certs
        m = next(m for m in s.modules if m.signed)  # type: ignore[attr-defined]
        data = decompress_file(str(s.tree.moddir / m.path))  # type: ignore[attr-defined]
        assert verify_module(data, certs).ok, m.name
        assert verify_module(data, other.kernel.certificates).err == -ENOKEY  # type: ignore[attr-defined]
