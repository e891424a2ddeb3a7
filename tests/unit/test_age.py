"""age encryption: round trips at chunk boundaries, keys, errors, bounded memory."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import stat
import tracemalloc
from pathlib import Path
from typing import List

import pytest

from backupagent.crypto import age, bech32

K = age.CHUNK_SIZE
SIZES = [0, 1, K - 1, K, K + 1, 2 * K, 1024 * 1024 + 3]

# From the age spec (c2sp.org/age): a fixed identity and its recipient.
SPEC_IDENTITY = "AGE-SECRET-KEY-1GFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPQ4EGAEX"
SPEC_RECIPIENT = "age1zvkyg2lqzraa2lnjvqej32nkuu0ues2s82hzrye869xeexvn73equnujwj"


def _data(n: int) -> bytes:
    block = hashlib.sha256(str(n).encode()).digest() * 64
    return (block * (n // len(block) + 1))[:n]


def _encrypt(data: bytes, recipients: List[str], pieces: int = 1, **kw: object) -> bytes:
    out = io.BytesIO()
    enc = age.Encryptor(recipients, out, **kw)  # type: ignore[arg-type]
    step = max(1, len(data) // pieces + 1)
    for i in range(0, len(data), step):
        enc.write(data[i : i + step])
    enc.close()
    return out.getvalue()


def _header_len(ct: bytes) -> int:
    return ct.index(b"\n", ct.index(b"\n--- ") + 1) + 1


def _payload_len(ct: bytes) -> int:
    """Ciphertext bytes after the header and the 16-byte nonce."""
    return len(ct) - _header_len(ct) - 16


@pytest.fixture(scope="module")
def ident() -> age.Identity:
    return age.generate_identity()


def test_spec_identity_gives_spec_recipient() -> None:
    assert age.parse_identity(SPEC_IDENTITY).recipient == SPEC_RECIPIENT
    assert age.parse_identity(SPEC_IDENTITY).secret == SPEC_IDENTITY


def test_generated_identity_round_trips_through_strings(ident: age.Identity) -> None:
    assert ident.secret.startswith("AGE-SECRET-KEY-1") and ident.secret == ident.secret.upper()
    assert ident.recipient.startswith("age1")
    again = age.parse_identity(ident.secret)
    assert again.recipient == ident.recipient
    assert str(age.parse_recipient(ident.recipient)) == ident.recipient
    assert ident.secret not in repr(ident)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("pieces", [1, 7])
def test_round_trip_at_chunk_boundaries(ident: age.Identity, n: int, pieces: int) -> None:
    data = _data(n)
    ct = _encrypt(data, [ident.recipient], pieces=pieces)
    chunks = max(1, -(-n // K))
    assert _payload_len(ct) == n + 16 * chunks  # one tag per chunk, never an extra empty chunk
    assert age.Decryptor(io.BytesIO(ct), [ident]).read() == data
    sink = io.BytesIO()
    assert age.decrypt_stream(io.BytesIO(ct), sink, [ident]) == n
    assert sink.getvalue() == data


@pytest.mark.parametrize("n", [0, K, 3 * K + 5])
def test_byte_by_byte_and_exact_chunk_writes(ident: age.Identity, n: int) -> None:
    data = _data(n)
    out = io.BytesIO()
    enc = age.Encryptor([ident.recipient], out)
    if n < 1000:
        for b in data:
            enc.write(bytes([b]))
    else:
        for i in range(0, n, K):
            enc.write(memoryview(data)[i : i + K])
    enc.close()
    assert enc.plaintext_bytes == n
    assert enc.ciphertext_bytes == len(out.getvalue())
    assert age.Decryptor(io.BytesIO(out.getvalue()), [ident]).read() == data


def test_accepts_bytearray_and_memoryview(ident: age.Identity) -> None:
    out = io.BytesIO()
    enc = age.Encryptor([ident.recipient], out)
    enc.write(bytearray(b"abc"))
    enc.write(memoryview(b"defg")[1:])
    enc.write(b"")
    enc.close()
    assert age.Decryptor(io.BytesIO(out.getvalue()), [ident]).read() == b"abcefg"


@pytest.mark.parametrize("size", [1, 100, K - 1, K, K + 1, 10**6])
def test_reader_read_sizes(ident: age.Identity, size: int) -> None:
    data = _data(3 * K + 17)
    ct = _encrypt(data, [ident.recipient])
    reader = age.open_decrypting_reader(io.BytesIO(ct), [ident])
    got = bytearray()
    while True:
        part = reader.read(size)
        if not part:
            break
        assert len(part) == size or len(got) + len(part) == len(data)
        got += part
    assert bytes(got) == data
    assert reader.read(10) == b""


def test_multiple_recipients_each_decrypt(ident: age.Identity) -> None:
    others = [age.generate_identity() for _ in range(3)]
    data = _data(K + 9)
    ct = _encrypt(data, [ident.recipient] + [o.recipient for o in others])
    for who in [ident, *others]:
        assert age.Decryptor(io.BytesIO(ct), [who]).read() == data
    # An identity list where only the last one matches also works.
    stranger = age.generate_identity()
    assert age.Decryptor(io.BytesIO(ct), [stranger, others[-1]]).read() == data


def test_wrong_identity_is_a_clear_no_match(ident: age.Identity) -> None:
    ct = _encrypt(b"secret dump", [ident.recipient])
    wrong = age.generate_identity()
    with pytest.raises(age.AgeNoIdentityMatchError, match="no identity matched") as info:
        age.Decryptor(io.BytesIO(ct), [wrong])
    assert wrong.secret not in str(info.value)
    assert info.value.code == "DECRYPT_FAIL"
    with pytest.raises(age.AgeNoIdentityMatchError, match="no identity or passphrase"):
        age.Decryptor(io.BytesIO(ct), [])


def test_identities_given_as_strings(ident: age.Identity) -> None:
    ct = _encrypt(b"x" * 10, [ident.recipient])
    assert age.Decryptor(io.BytesIO(ct), [ident.secret]).read() == b"x" * 10


def test_tampering_is_detected(ident: age.Identity) -> None:
    data = _data(2 * K + 100)
    ct = bytearray(_encrypt(data, [ident.recipient]))
    header_len = _header_len(bytes(ct))
    # Payload bit flip in the second chunk: the first chunk is released, then failure.
    flipped = bytearray(ct)
    flipped[header_len + 16 + K + 16 + 5] ^= 1
    sink = io.BytesIO()
    with pytest.raises(age.AgePayloadError, match="chunk 1"):
        age.decrypt_stream(io.BytesIO(bytes(flipped)), sink, [ident])
    assert sink.getvalue() == data[:K]
    # Nonce flip: every chunk key changes.
    flipped = bytearray(ct)
    flipped[header_len + 3] ^= 1
    with pytest.raises(age.AgePayloadError):
        age.decrypt_stream(io.BytesIO(bytes(flipped)), io.BytesIO(), [ident])
    # MAC flip.
    text = bytes(ct[:header_len])
    mac_at = text.index(b"--- ") + 4
    other = b"A" if ct[mac_at : mac_at + 1] != b"A" else b"B"
    tampered = ct[:mac_at] + other + ct[mac_at + 1 :]
    with pytest.raises(age.AgeHMACError):
        age.Decryptor(io.BytesIO(bytes(tampered)), [ident])


@pytest.mark.parametrize("cut", [0, 10, "header", "nonce", "chunk", "boundary", "tag"])
def test_truncation_is_detected(ident: age.Identity, cut: object) -> None:
    data = _data(2 * K + 100)
    ct = _encrypt(data, [ident.recipient])
    header_len = _header_len(ct)
    end = {
        "header": header_len - 5,
        "nonce": header_len + 8,
        "chunk": header_len + 16 + 1000,
        "boundary": header_len + 16 + 2 * (K + 16),
        "tag": len(ct) - 3,
    }.get(cut, cut)  # type: ignore[call-overload]
    with pytest.raises((age.AgeHeaderError, age.AgePayloadError)) as info:
        age.decrypt_stream(io.BytesIO(ct[:end]), io.BytesIO(), [ident])
    if cut in ("chunk", "boundary", "tag"):
        assert isinstance(info.value, age.AgePayloadError)
    if cut == "boundary":
        assert "truncated" in str(info.value)


def test_trailing_data_is_rejected(ident: age.Identity) -> None:
    ct = _encrypt(_data(K), [ident.recipient])
    sink = io.BytesIO()
    with pytest.raises(age.AgePayloadError, match="after the final chunk"):
        age.decrypt_stream(io.BytesIO(ct + b"\0" * (K + 100)), sink, [ident])
    with pytest.raises(age.AgePayloadError):
        age.decrypt_stream(io.BytesIO(ct + b"x"), io.BytesIO(), [ident])


def test_not_an_age_file_says_so(ident: age.Identity) -> None:
    with pytest.raises(age.AgeHeaderError, match="not an age file"):
        age.Decryptor(io.BytesIO(b"\x28\xb5\x2f\xfd zstd frame"), [ident])
    with pytest.raises(age.AgeHeaderError, match="version"):
        age.Decryptor(io.BytesIO(b"age-encryption.org/v2\n"), [ident])


def test_armored_round_trip(ident: age.Identity) -> None:
    for n in [0, 47, 48, 49, K + 1]:
        data = _data(n)
        ct = _encrypt(data, [ident.recipient], armor=True)
        assert ct.startswith(b"-----BEGIN AGE ENCRYPTED FILE-----\n")
        assert ct.endswith(b"-----END AGE ENCRYPTED FILE-----\n")
        assert all(len(line) <= 64 for line in ct.split(b"\n"))
        dec = age.Decryptor(io.BytesIO(b"\n  \n" + ct.replace(b"\n", b"\r\n") + b"\n"), [ident])
        assert dec.armored
        assert dec.read() == data


def test_scrypt_round_trip_and_cap() -> None:
    data = _data(K + 1)
    ct = _encrypt(data, [age.ScryptRecipient("correct horse", work_factor=10)])  # type: ignore[list-item]
    assert age.Decryptor(io.BytesIO(ct), [], passphrase="correct horse").read() == data
    with pytest.raises(age.AgeNoIdentityMatchError):
        age.Decryptor(io.BytesIO(ct), [], passphrase="wrong")
    with pytest.raises(age.AgeHeaderError, match="exceeds the limit 9"):
        age.Decryptor(io.BytesIO(ct), [], passphrase="correct horse", max_work_factor=9)


def test_scrypt_recipient_must_be_alone(ident: age.Identity) -> None:
    with pytest.raises(age.AgeKeyError, match="only recipient"):
        age.Encryptor([age.ScryptRecipient("pw", 10), ident.recipient], io.BytesIO())


def test_encryptor_misuse() -> None:
    with pytest.raises(age.AgeKeyError, match="empty"):
        age.Encryptor([], io.BytesIO())
    with pytest.raises(age.AgeKeyError, match="single string"):
        age.Encryptor(SPEC_RECIPIENT, io.BytesIO())  # type: ignore[arg-type]
    enc = age.Encryptor([SPEC_RECIPIENT], io.BytesIO())
    enc.close()
    with pytest.raises(age.AgeEncryptError, match="after close"):
        enc.write(b"x")
    with pytest.raises(age.AgeEncryptError, match="twice"):
        enc.close()


def test_context_manager_does_not_finish_on_error(ident: age.Identity) -> None:
    out = io.BytesIO()
    with pytest.raises(RuntimeError), age.Encryptor([ident.recipient], out) as enc:
        enc.write(b"partial dump")
        raise RuntimeError("dump failed")
    # No final chunk was written: the result must not decrypt as complete.
    with pytest.raises(age.AgePayloadError):
        age.decrypt_stream(io.BytesIO(out.getvalue()), io.BytesIO(), [ident])
    out = io.BytesIO()
    with age.Encryptor([ident.recipient], out) as enc:
        enc.write(b"whole dump")
    assert age.Decryptor(io.BytesIO(out.getvalue()), [ident]).read() == b"whole dump"


def test_encrypt_stream_convenience(ident: age.Identity) -> None:
    data = _data(3 * 1024 * 1024 + 1)
    out = io.BytesIO()
    assert age.encrypt_stream(io.BytesIO(data), out, [ident.recipient]) == len(data)
    assert age.Decryptor(io.BytesIO(out.getvalue()), [ident]).read() == data


class _Gen:
    """A readable producing ``total`` bytes without holding them."""

    def __init__(self, total: int) -> None:
        self.left = total
        self.block = os.urandom(256 * 1024)

    def read(self, n: int = -1) -> bytes:
        n = min(self.left, len(self.block) if n < 0 else n, len(self.block))
        self.left -= n
        return self.block[:n]


class _Null:
    def __init__(self) -> None:
        self.n = 0

    def write(self, b: bytes) -> None:
        self.n += len(b)


def test_memory_is_bounded_both_ways(ident: age.Identity, tmp_path: Path) -> None:
    total = 48 * 1024 * 1024
    path = tmp_path / "big.age"
    tracemalloc.start()
    try:
        with path.open("wb") as fh:
            age.encrypt_stream(_Gen(total), fh, [ident.recipient])
        _, enc_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        sink = _Null()
        with path.open("rb") as fh:
            age.decrypt_stream(fh, sink, [ident])
        _, dec_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sink.n == total
    # A few chunks and the 1 MiB copy buffer, not the 48 MiB stream.
    assert enc_peak < 4 * 1024 * 1024, enc_peak
    assert dec_peak < 4 * 1024 * 1024, dec_peak


def test_parse_recipient_errors_name_value_and_fix() -> None:
    bad = SPEC_RECIPIENT[:-1] + ("q" if SPEC_RECIPIENT[-1] != "q" else "p")
    with pytest.raises(age.AgeKeyError, match="checksum") as info:
        age.parse_recipient(bad)
    assert bad in str(info.value) and "age-keygen -y" in str(info.value)
    assert info.value.code == "KEY_INVALID"
    with pytest.raises(age.AgeKeyError, match="prefix 'age1'"):
        age.parse_recipient(bech32.encode("npub", b"\x01" * 32))
    with pytest.raises(age.AgeKeyError) as info:
        age.parse_recipient(SPEC_IDENTITY)
    assert SPEC_IDENTITY not in str(info.value) and "secret key" in str(info.value)
    with pytest.raises(age.AgeUnsupportedError):
        age.parse_recipient("age1pq1" + "q" * 60)
    assert str(age.parse_recipient("  " + SPEC_RECIPIENT.upper() + "\n")) == SPEC_RECIPIENT


@pytest.mark.parametrize(
    "value",
    [
        SPEC_IDENTITY[:-1] + "Y",  # checksum
        SPEC_IDENTITY[:-10],  # truncated
        SPEC_IDENTITY.replace("AGE-SECRET-KEY-", "AGE-PUBLIC-KEY-"),
        SPEC_IDENTITY[:20] + SPEC_IDENTITY[20:].lower(),  # mixed case
    ],
)
def test_parse_identity_errors_never_echo_the_secret(value: str) -> None:
    with pytest.raises(age.AgeKeyError) as info:
        age.parse_identity(value)
    msg = str(info.value)
    assert value not in msg and value[16:40] not in msg
    assert "identity" in msg


def test_parse_identity_refuses_a_recipient() -> None:
    with pytest.raises(age.AgeKeyError, match="public recipient"):
        age.parse_identity(SPEC_RECIPIENT)


def test_recipient_fingerprint_is_short_and_stable(ident: age.Identity) -> None:
    fp = age.recipient_fingerprint(SPEC_RECIPIENT)
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert fp == hashlib.sha256(SPEC_RECIPIENT.encode()).hexdigest()[:16]
    assert age.recipient_fingerprint(" " + SPEC_RECIPIENT.upper()) == fp
    assert age.recipient_fingerprint(age.parse_recipient(SPEC_RECIPIENT)) == fp
    assert age.recipient_fingerprint(ident.recipient) != fp


def test_identity_file_write_and_load(tmp_path: Path, ident: age.Identity) -> None:
    path = tmp_path / "keys" / "agent.key"
    age.write_identity_file(path, ident)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert f"# public key: {ident.recipient}\n" in text
    assert text.endswith(ident.secret + "\n")
    assert [i.recipient for i in age.load_identities(path)] == [ident.recipient]
    with pytest.raises(age.AgeKeyError, match="already exists"):
        age.write_identity_file(path, age.generate_identity())
    assert path.read_text() == text
    other = age.generate_identity()
    age.write_identity_file(path, other, overwrite=True)
    assert age.load_identities(path)[0].recipient == other.recipient
    assert not [p for p in path.parent.iterdir() if p.name != "agent.key"]


def test_load_identities_comments_blank_lines_and_errors(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = age.generate_identity(), age.generate_identity()
    path = tmp_path / "ids.txt"
    path.write_text(f"# first\n\n{a.secret}\n   \n# second\n{b.secret}\n")
    os.chmod(path, 0o600)
    with caplog.at_level(logging.WARNING):
        got = age.load_identities(path)
    assert [i.recipient for i in got] == [a.recipient, b.recipient]
    assert not caplog.records
    os.chmod(path, 0o644)
    with caplog.at_level(logging.WARNING):
        age.load_identities(path)
    assert any("chmod 600" in r.getMessage() for r in caplog.records)
    assert all(a.secret not in r.getMessage() for r in caplog.records)

    broken = a.secret[:-1] + ("Q" if a.secret[-1] != "Q" else "P")
    path.write_text(f"# keys\n{broken}\n")
    with pytest.raises(age.AgeKeyError, match="line 2") as info:
        age.load_identities(path)
    assert broken not in str(info.value)
    path.write_text("# only comments\n")
    with pytest.raises(age.AgeKeyError, match="no identity"):
        age.load_identities(path)
    with pytest.raises(age.AgeKeyError, match="not found"):
        age.load_identities(tmp_path / "missing.txt")
    path.write_text("AGE-SECRET-KEY-PQ-1" + "Q" * 58 + "\n")
    with pytest.raises(age.AgeUnsupportedError, match="post-quantum"):
        age.load_identities(path)


def test_large_armor_strictness_deep_inside(ident: age.Identity) -> None:
    data = _data(5 * K + 3)
    ct = _encrypt(data, [ident.recipient], armor=True)
    lines = ct.split(b"\n")
    # Mixed LF / CRLF line ends are accepted (the spec allows either).
    mixed = b"\n".join(x + (b"\r" if i % 3 == 0 and x else b"") for i, x in enumerate(lines))
    assert age.Decryptor(io.BytesIO(mixed), [ident]).read() == data
    cases = {
        "bad character": (3000, lambda x: x[:10] + b"!" + x[11:]),
        "short line": (4000, lambda x: x[:-4]),
        "trailing space": (5000, lambda x: x + b" "),
        "padding inside": (6000, lambda x: x[:-2] + b"=="),
    }
    for at, change in cases.values():
        broken = list(lines)
        broken[at] = change(broken[at])
        with pytest.raises(age.AgeArmorError):
            age.decrypt_stream(io.BytesIO(b"\n".join(broken)), io.BytesIO(), [ident])
