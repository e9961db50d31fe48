"""Module signatures: find, strip and append them (kernel/module_signature.c, sign-file).

A signed module is the ELF image followed by ``[signer][key id][signature]``, then
``struct module_signature`` (algo, hash, id_type, signer_len, key_id_len, 3 bytes of
padding, big-endian sig_len) and the magic ``~Module signature appended~\\n``.  Since
Linux 3.13 the signature is a detached PKCS#7 (CMS) message with id_type PKEY_ID_PKCS7
and every other field zero.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
from dataclasses import dataclass
from typing import Any

from fastlkm.errors import FormatError, UsageError

MODULE_SIG_STRING = b"~Module signature appended~\n"
MODULE_SIGNATURE = struct.Struct(">BBBBB3xI")
PKEY_ID_PKCS7 = 2


def split_signature(data: bytes, path: str | None = None) -> tuple[bytes, bytes]:
    """(module image, signature trailer); the trailer is empty for an unsigned module."""
    # the same walk as mod_check_sig() in kernel/module_signature.c
    if not data.endswith(MODULE_SIG_STRING):
        return data, b""
    info = len(data) - len(MODULE_SIG_STRING) - MODULE_SIGNATURE.size
    if info < 0:
        raise FormatError("module signature trailer is truncated", path, 0)
    _, _, id_type, signer_len, key_id_len, sig_len = MODULE_SIGNATURE.unpack_from(data, info)
    start = info - sig_len - signer_len - key_id_len
    if start < 0:
        raise FormatError(f"module signature of {sig_len} bytes is longer than the file",
                          path, info)
    if id_type == PKEY_ID_PKCS7 and (signer_len or key_id_len):
        raise FormatError("PKCS#7 module signature with signer or key id fields", path, info)
    return data[:start], data[start:]


def sign(image: bytes, key: str, cert: str, hash_algo: str = "sha256") -> bytes:
    """*image* with a signature appended as the kernel's scripts/sign-file writes it:
    a detached CMS message in DER without certificates or signed attributes, signed
    with *key* for the X.509 certificate *cert* (both PEM), by ``openssl cms``."""
    import subprocess
    import tempfile

    for what, f in (("key", key), ("certificate", cert)):
        if not os.path.isfile(f):
            raise UsageError(f"signing {what} not found", f)
    with tempfile.TemporaryDirectory(prefix="fastlkm-sign-") as tmp:
        body = os.path.join(tmp, "module")
        with open(body, "wb") as f:
            f.write(image)
        # CMS_NOCERTS | CMS_BINARY | CMS_NOSMIMECAP | CMS_NOATTR, as sign-file.c
        cmd = ["openssl", "cms", "-sign", "-in", body, "-signer", cert, "-inkey", key,
               "-md", hash_algo, "-binary", "-outform", "DER", "-nocerts", "-noattr",
               "-nosmimecap"]
        try:
            r = subprocess.run(cmd, capture_output=True, check=False)
        except FileNotFoundError:
            raise UsageError("signing needs the openssl command") from None
        if r.returncode != 0 or not r.stdout:
            why = r.stderr.decode(errors="replace").strip().splitlines()
            raise UsageError(f"openssl cms failed: {why[-1] if why else r.returncode}", key)
    sig = r.stdout
    return image + sig + MODULE_SIGNATURE.pack(0, 0, PKEY_ID_PKCS7, 0, 0, len(sig)) + \
        MODULE_SIG_STRING


# --- verification, as module_sig_check() and verify_pkcs7_signature() -------------------

# the error codes of the signature check (include/uapi/asm-generic/errno.h)
ENODATA, ENOPKG, EBADMSG, ENOKEY, EKEYREJECTED = 61, 65, 74, 126, 129

# the digests crypto/asymmetric_keys/pkcs7_parser.c maps from their OIDs
_HASHES = ("sha1", "sha224", "sha256", "sha384", "sha512", "sha3_256", "sha3_384",
           "sha3_512")
# the public key algorithms the kernel verifies module signatures with, by the names
# asn1crypto gives them (RSA PKCS#1 v1.5, ECDSA) -> the kernel's names
_PKEY = {"rsassa_pkcs1v15": "rsa", "ecdsa": "ecdsa"}


@dataclass(frozen=True, slots=True)
class SignatureInfo:
    """What the appended PKCS#7 message says of its signer (as kmod's modinfo shows it:
    ``signer``, ``sig_key``, ``sig_hashalgo``)."""

    signer: str       # the common name of the signing certificate's issuer (or "")
    key_id: str       # its serial number, or its subject key identifier, in hex
    hash_algo: str    # sha256, sha512, ...
    pkey_algo: str    # rsa, ecdsa, ...


@dataclass(frozen=True, slots=True)
class SigCheck:
    """The outcome of module_sig_check()'s verification of one module file."""

    err: int                           # 0, or -ENODATA, -ENOPKG, -ENOKEY, -EKEYREJECTED, ...
    info: SignatureInfo | None = None  # None when unsigned or unreadable
    key: str | None = None             # the subject of the certificate that verified it
    lines: tuple[str, ...] = ()        # what the kernel prints on the way (pr_err/pr_warn)
    why: str = ""                      # fastlkm's explanation of a failure

    @property
    def ok(self) -> bool:
        return self.err == 0

    def as_dict(self) -> dict[str, object]:
        i = self.info
        return {"signed": self.err != -ENODATA, "verified": self.ok, "err": self.err,
                "signer": i.signer if i else None, "key_id": i.key_id if i else None,
                "hash_algo": i.hash_algo if i else None,
                "pkey_algo": i.pkey_algo if i else None, "key": self.key, "why": self.why}


def _certificate_at(data: bytes, offset: int) -> bytes | None:
    """The DER certificate starting at *offset*, or None if none does."""
    from cryptography import x509

    length = int.from_bytes(data[offset + 2:offset + 4], "big") + 4
    der = data[offset:offset + length]
    try:
        x509.load_der_x509_certificate(der)
    except ValueError:
        return None
    return der


# a DER certificate: SEQUENCE { SEQUENCE (tbsCertificate) { [0] { INTEGER 2 } ...
_CERT_START = re.compile(rb"\x30\x82..\x30\x82..\xa0\x03\x02\x01\x02", re.S)


def system_certificates(vmlinux: bytes) -> tuple[bytes, ...]:
    """The X.509 certificates compiled into a kernel image (certs/system_certificates.S:
    the DER certificates of ``system_certificate_list``, which load_system_certificate_list()
    puts in the builtin trusted keyring), found by their DER shape and kept if they parse."""
    out = []
    for m in _CERT_START.finditer(vmlinux):
        der = _certificate_at(vmlinux, m.start())
        if der is not None and der not in out:
            out.append(der)
    return tuple(out)


def _verify_with(cert_der: bytes, signature: bytes, digest: bytes, hash_name: str) -> bool:
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

    key = x509.load_der_x509_certificate(cert_der).public_key()
    algo = utils.Prehashed(getattr(hashes, hash_name.upper())())
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, digest, padding.PKCS1v15(), algo)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, digest, ec.ECDSA(algo))
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _matches(cert_der: bytes, sid: Any) -> bool:
    """Is *cert_der* the key the signer identifier names (issuer and serial, or subject
    key identifier, as find_asymmetric_key() matches a key's ids)?"""
    from cryptography import x509

    cert = x509.load_der_x509_certificate(cert_der)
    if sid.name == "issuer_and_serial_number":
        return cert.serial_number == sid.chosen["serial_number"].native and \
            cert.issuer.public_bytes() == sid.chosen["issuer"].dump()
    try:
        skid = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound:
        return False
    return bool(skid.value.digest == sid.chosen.native)


def verify_module(data: bytes, certificates: tuple[bytes, ...] | list[bytes]) -> SigCheck:
    """Check the signature appended to the (decompressed) module *data* against the
    trusted *certificates* (DER) as the kernel does: mod_verify_sig(), then
    verify_pkcs7_signature() for a module (detached data, no authenticated attributes).
    The error codes are the kernel's; which are forgiven is the loader's business."""
    from asn1crypto import cms

    if not data.endswith(MODULE_SIG_STRING):
        return SigCheck(-ENODATA, why="the module carries no signature")
    modlen = len(data) - len(MODULE_SIG_STRING)
    if modlen <= MODULE_SIGNATURE.size:
        return SigCheck(-EBADMSG, why="the signature trailer is truncated")
    algo, hash_, id_type, signer_len, key_id_len, sig_len = \
        MODULE_SIGNATURE.unpack_from(data, modlen - MODULE_SIGNATURE.size)
    pad = data[modlen - 8:modlen - 5]
    # mod_check_sig()
    if sig_len >= modlen - MODULE_SIGNATURE.size:
        return SigCheck(-EBADMSG, why=f"the signature length {sig_len} exceeds the file")
    if id_type != PKEY_ID_PKCS7:
        return SigCheck(-ENOPKG, lines=("module: not signed with expected PKCS#7 message",),
                        why=f"signature id_type {id_type} is not PKCS#7")
    if algo or hash_ or signer_len or key_id_len or any(pad):
        return SigCheck(-EBADMSG,
                        lines=("module: PKCS#7 signature info has unexpected non-zero params",),
                        why="the signature trailer has fields PKCS#7 leaves zero")
    end = modlen - MODULE_SIGNATURE.size
    image, sig = data[:end - sig_len], data[end - sig_len:end]
    try:
        ci = cms.ContentInfo.load(sig, strict=True)
        if ci["content_type"].native != "signed_data":
            raise ValueError("not SignedData")
        sd = ci["content"]
        encap = sd["encap_content_info"]
        infos = list(sd["signer_infos"])
        if not infos:
            raise ValueError("no signer")
        parsed = [(si, si["sid"], si["digest_algorithm"]["algorithm"].native,
                   _PKEY.get(si["signature_algorithm"].signature_algo,
                             si["signature_algorithm"].signature_algo), si["signature"].native,
                   si["signed_attrs"]) for si in infos]
        issuer = parsed[0][1].chosen["issuer"] if parsed[0][1].name == \
            "issuer_and_serial_number" else None
    except (ValueError, TypeError, KeyError) as e:
        return SigCheck(-EBADMSG, why=f"the PKCS#7 message does not parse ({e})")
    _, sid0, hash0, pkey0, _, _ = parsed[0]
    info = SignatureInfo(
        signer=(issuer.native.get("common_name", "") if issuer is not None else ""),
        key_id=(format(sid0.chosen["serial_number"].native, "X") if issuer is not None
                else sid0.chosen.native.hex().upper()),
        hash_algo=hash0, pkey_algo=pkey0)
    if encap["content"].native is not None:
        return SigCheck(-EBADMSG, info, lines=("PKCS#7 signature with non-detached data",),
                        why="the PKCS#7 message carries its own data")
    # pkcs7_verify() for VERIFYING_MODULE_SIGNATURE
    if encap["content_type"].native != "data":
        return SigCheck(-EKEYREJECTED, info, lines=("PKCS7: Invalid module sig (not pkcs7-data)",),
                        why="the signed content is not pkcs7-data")
    if any(len(p[5]) for p in parsed if p[5].native is not None):
        return SigCheck(-EKEYREJECTED, info,
                        lines=("PKCS7: Invalid module sig (has authattrs)",),
                        why="a module signature must have no authenticated attributes")
    err, key, why = -ENOPKG, None, "no signer uses a digest and key type the kernel has"
    digests: dict[str, bytes] = {}
    usable = []
    for _, sid, hname, pkey, signature, _ in parsed:
        if hname not in _HASHES or pkey not in _PKEY.values():
            continue                  # -ENOPKG: unsupported crypto for this signer
        if hname not in digests:
            digests[hname] = hashlib.new(hname, image).digest()
        usable.append((sid, hname, signature))
    # pkcs7_validate_trust(): each signer's key is looked up in the trusted keyring
    for sid, hname, signature in usable:
        cert = next((c for c in certificates if _matches(c, sid)), None)
        if cert is None:
            if err == -ENOPKG:
                err, why = -ENOKEY, "no trusted key matches the signer " \
                    f"({info.signer or '?'}, key {info.key_id})"
            continue
        from cryptography import x509

        subject = x509.load_der_x509_certificate(cert).subject.rfc4514_string()
        if not _verify_with(cert, signature, digests[hname], hname):
            return SigCheck(-EKEYREJECTED, info, subject,
                            why=f"the signature does not match the module's {hname} digest "
                                f"under the key {subject}: the module changed after signing")
        err, key, why = 0, subject, ""
        break
    return SigCheck(err, info, key, why=why)
