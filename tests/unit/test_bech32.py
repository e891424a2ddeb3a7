"""Bech32 as age uses it: BIP-173 vectors, but no 90-character limit."""

from __future__ import annotations

import pytest

from backupagent.crypto import bech32

VALID = [
    "A12UEL5L",
    "a12uel5l",
    "an83characterlonghumanreadablepartthatcontainsthenumber1andtheexcludedcharactersbio1tt5tgs",
    "abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxw",
    "11" + "q" * 82 + "c8247j",
    "split1checkupstagehandshakeupstreamerranterredcaperred2y9e3w",
    "?1ezyfcl",
    # BIP-173 rejects this one only for exceeding 90 characters; age has no such limit.
    "an84characterslonghumanreadablepartthatcontainsthenumber1andtheexcludedcharactersbio1569pvx",
]

INVALID = [
    "\x201nwldj5",  # HRP character out of range
    "\x7f1axkwrx",  # HRP character out of range
    "pzry9x8gf2tvdw0s3jn54khce6mua7l",  # no separator
    "1pzry9x8gf2tvdw0s3jn54khce6mua7l",  # empty HRP
    "x1b4n0q5v",  # invalid data character
    "li1dgmt3",  # too short checksum
    "de1lg7wt\xff",  # invalid character in checksum
    "A1G7SGD8",  # checksum computed with uppercase HRP
    "10a06t8",  # empty HRP
    "1qzzfhee",  # empty HRP
    "a12UEL5L",  # mixed case
    "abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxx",  # checksum mismatch
]


@pytest.mark.parametrize("s", VALID)
def test_valid_vectors_decode_and_reencode(s: str) -> None:
    hrp, data = bech32.decode(s)
    assert hrp == s[: s.rfind("1")]
    assert bech32.encode(hrp, data) == s


@pytest.mark.parametrize("s", INVALID)
def test_invalid_vectors_are_rejected(s: str) -> None:
    with pytest.raises(bech32.Bech32Error):
        bech32.decode(s)


def test_age_spec_key_pair() -> None:
    hrp, data = bech32.decode(
        "AGE-SECRET-KEY-1GFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPQ4EGAEX"
    )
    assert hrp == "AGE-SECRET-KEY-"
    assert data == b"\x42" * 32
    assert bech32.encode("AGE-SECRET-KEY-", data).startswith("AGE-SECRET-KEY-1GFPYY")


@pytest.mark.parametrize("n", [0, 1, 31, 32, 33, 1000])
def test_round_trip_lengths_beyond_bip173_limit(n: int) -> None:
    data = bytes((i * 7) & 0xFF for i in range(n))
    s = bech32.encode("age", data)
    assert s == s.lower()
    assert bech32.decode(s) == ("age", data)
    assert bech32.decode(s.upper()) == ("AGE", data)


def test_nonzero_padding_is_rejected() -> None:
    # 'l' = 31: one 5-bit value with 5 data bits set cannot be padding of zero bytes.
    good = bech32.encode("age", b"")
    values = "l"
    # Recompute a valid checksum over a data part whose padding bits are non-zero.
    poly = bech32._polymod([*bech32._hrp_expand("age"), 31, 0, 0, 0, 0, 0, 0]) ^ 1
    check = "".join(bech32.CHARSET[(poly >> 5 * (5 - i)) & 31] for i in range(6))
    assert good != "age1" + values + check
    with pytest.raises(bech32.Bech32Error, match="padding"):
        bech32.decode("age1" + values + check)


def test_encode_rejects_mixed_case_hrp() -> None:
    with pytest.raises(bech32.Bech32Error):
        bech32.encode("Age", b"x")
