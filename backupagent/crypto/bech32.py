"""Bech32 (BIP-173) as age uses it for keys: no 90-character length limit.

age keys are Bech32 strings (``age1...``, ``AGE-SECRET-KEY-1...``); the checksum
catches a mistyped or truncated key before it silently encrypts to nobody.
"""

from __future__ import annotations

from typing import Iterable, List, Tuple

CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_CHARSET_REV = {c: i for i, c in enumerate(CHARSET)}
_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


class Bech32Error(ValueError):
    """A string is not valid Bech32; the message says what is wrong, never the string."""


def _polymod(values: Iterable[int]) -> int:
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            if (top >> i) & 1:
                chk ^= _GENERATOR[i]
    return chk


def _hrp_expand(hrp: str) -> List[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _convert_bits(data: Iterable[int], frombits: int, tobits: int, pad: bool) -> List[int]:
    acc = 0
    bits = 0
    out: List[int] = []
    maxv = (1 << tobits) - 1
    for value in data:
        acc = (acc << frombits) | value
        bits += frombits
        while bits >= tobits:
            bits -= tobits
            out.append((acc >> bits) & maxv)
    if pad:
        if bits:
            out.append((acc << (tobits - bits)) & maxv)
    elif bits >= frombits or ((acc << (tobits - bits)) & maxv):
        raise Bech32Error("invalid padding in the data part")
    return out


def encode(hrp: str, data: bytes) -> str:
    """Encode ``data`` under the human-readable part ``hrp``.

    The result is lowercase unless ``hrp`` is all uppercase, in which case the
    whole string is uppercase (age writes secret keys that way); the checksum
    is always computed over the lowercase form, as BIP-173 requires.
    """
    if not hrp:
        raise Bech32Error("empty human-readable part")
    for c in hrp:
        if not 33 <= ord(c) <= 126:
            raise Bech32Error("invalid character in the human-readable part")
    upper = hrp.upper() == hrp and hrp.lower() != hrp
    if hrp.lower() != hrp and not upper:
        raise Bech32Error("mixed-case human-readable part")
    lhrp = hrp.lower()
    values = _convert_bits(data, 8, 5, pad=True)
    poly = _polymod([*_hrp_expand(lhrp), *values, 0, 0, 0, 0, 0, 0]) ^ 1
    checksum = [(poly >> 5 * (5 - i)) & 31 for i in range(6)]
    out = lhrp + "1" + "".join(CHARSET[v] for v in values + checksum)
    return out.upper() if upper else out


def decode(s: str) -> Tuple[str, bytes]:
    """Return ``(hrp, data)``; ``hrp`` keeps the case of the input.

    Mixed case is refused (BIP-173), there is no overall length limit (age).
    """
    if s.lower() != s and s.upper() != s:
        raise Bech32Error("mixed case")
    pos = s.rfind("1")
    if pos < 1:
        raise Bech32Error("missing separator '1' or empty human-readable part")
    if pos + 7 > len(s):
        raise Bech32Error("data part too short")
    hrp = s[:pos]
    for c in hrp:
        if not 33 <= ord(c) <= 126:
            raise Bech32Error("invalid character in the human-readable part")
    lower = s.lower()
    try:
        values = [_CHARSET_REV[c] for c in lower[pos + 1 :]]
    except KeyError:
        raise Bech32Error("invalid character in the data part") from None
    if _polymod(_hrp_expand(lower[:pos]) + values) != 1:
        raise Bech32Error("checksum mismatch (a typo or a truncated string)")
    data = bytes(_convert_bits(values[:-6], 5, 8, pad=False))
    return hrp, data
