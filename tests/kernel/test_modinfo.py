"""The .modinfo decoder."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fastlkm.kernel.modinfo import parse_modinfo

piece = st.one_of(
    st.sampled_from([b"alias=pci:v*d*", b"softdep=pre: crc32c", b"license=GPL", b"alias",
                     b"alias=", b"alias==", b"=alias=1", b"alias=\xff\xfe", b""]),
    st.binary(max_size=12))


def test_parse_skips_strings_without_a_value() -> None:
    assert parse_modinfo(b"license=GPL\0\0junk\0alias=a=b\0") == (
        ("license", "GPL"), ("alias", "a=b"))


@given(st.lists(piece, max_size=12))
def test_every_string_with_an_equals_sign_is_a_pair(pieces: list[bytes]) -> None:
    data = b"\0".join(pieces)
    want = [p.partition(b"=") for p in data.split(b"\0") if b"=" in p]
    assert parse_modinfo(data) == tuple((k.decode("utf-8", "replace"),
                                         v.decode("utf-8", "replace")) for k, _, v in want)
