"""Every C2SP CCTV age test vector (tests/data/age-testkit, see its README).

Each vector expects success with a payload hash or one failure class. The
post-quantum (ML-KEM-768+X25519 hybrid) vectors are not implemented: they are
listed explicitly below and must fail with AgeUnsupportedError when their
identities are parsed, so a new vector can never be skipped silently.
"""

from __future__ import annotations

import hashlib
import io
import zlib
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from backupagent.crypto import age

TESTKIT = Path(__file__).resolve().parent.parent / "data" / "age-testkit"

KNOWN_KEYS = {
    "expect",
    "payload",
    "identity",
    "passphrase",
    "armored",
    "compressed",
    "file key",
    "comment",
}

EXPECTED_UNSUPPORTED = {
    "armor_hybrid",
    "hybrid",
    "hybrid_and_x25519",
    "hybrid_bad_tag",
    "hybrid_currupted_enc_mlkem",
    "hybrid_currupted_enc_x25519",
    "hybrid_extra_argument",
    "hybrid_grease",
    "hybrid_identity",
    "hybrid_long_file_key",
    "hybrid_long_share",
    "hybrid_low_order",
    "hybrid_multiple_recipients",
    "hybrid_no_match",
    "hybrid_not_canonical_body",
    "hybrid_not_canonical_enc",
    "hybrid_short_share",
    "hybrid_uppercase",
    "hybrid_x25519_arg",
}

ERROR_CLASS = {
    "no match": age.AgeNoIdentityMatchError,
    "HMAC failure": age.AgeHMACError,
    "header failure": age.AgeHeaderError,
    "payload failure": age.AgePayloadError,
    "armor failure": age.AgeArmorError,
}


def _vectors() -> List[str]:
    return sorted(p.name for p in TESTKIT.iterdir() if p.is_file() and p.name != "README.md")


def _parse(name: str) -> Tuple[Dict[str, List[str]], bytes]:
    raw = (TESTKIT / name).read_bytes()
    head, sep, body = raw.partition(b"\n\n")
    assert sep, f"{name}: no blank line after the vector header"
    fields: Dict[str, List[str]] = {}
    for line in head.decode("utf-8").split("\n"):
        key, colon, value = line.partition(": ")
        assert colon, f"{name}: bad header line {line!r}"
        assert key in KNOWN_KEYS, f"{name}: unknown key {key!r}"
        fields.setdefault(key, []).append(value)
    if fields.get("compressed") == ["zlib"]:
        body = zlib.decompress(body)
    return fields, body


class _Collect:
    """A sink that hashes what was released, like the reference harness."""

    def __init__(self) -> None:
        self.sha = hashlib.sha256()
        self.n = 0

    def write(self, data: bytes) -> None:
        self.sha.update(data)
        self.n += len(data)


def test_vector_set_is_complete() -> None:
    names = set(_vectors())
    assert len(names) == 143
    pq = {n for n in names if b"AGE-SECRET-KEY-PQ-" in (TESTKIT / n).read_bytes()}
    assert pq == EXPECTED_UNSUPPORTED


@pytest.mark.parametrize("name", _vectors())
def test_vector(name: str) -> None:
    fields, body = _parse(name)
    expect = fields["expect"][0]
    secrets = fields.get("identity", [])
    if name in EXPECTED_UNSUPPORTED:
        with pytest.raises(age.AgeUnsupportedError):
            for s in secrets:
                age.parse_identity(s)
        return
    identities: list = [age.parse_identity(s) for s in secrets]
    identities += [age.ScryptIdentity(p) for p in fields.get("passphrase", [])]
    sink = _Collect()
    if expect == "success":
        dec = age.Decryptor(io.BytesIO(body), identities)
        assert dec.armored == (fields.get("armored") == ["yes"])
        for chunk in dec.chunks():
            sink.write(chunk)
        assert sink.sha.hexdigest() == fields["payload"][0]
        return
    with pytest.raises(ERROR_CLASS[expect]) as info:
        age.decrypt_stream(io.BytesIO(body), sink, identities)
    # Failure messages are for humans but must never leak an identity.
    for s in secrets:
        assert s not in str(info.value)
    if expect == "payload failure" and "payload" in fields:
        assert sink.sha.hexdigest() == fields["payload"][0]
