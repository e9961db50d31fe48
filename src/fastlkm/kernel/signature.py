"""Module signatures: find, strip and append them (kernel/module_signature.c, sign-file).

A signed module is the ELF image followed by ``[signer][key id][signature]``, then
``struct module_signature`` (algo, hash, id_type, signer_len, key_id_len, 3 bytes of
padding, big-endian sig_len) and the magic ``~Module signature appended~\\n``.  Since
Linux 3.13 the signature is a detached PKCS#7 (CMS) message with id_type PKEY_ID_PKCS7
and every other field zero.
"""

from __future__ import annotations

import os
import struct

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
