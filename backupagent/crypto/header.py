"""The age v1 text header: version line, recipient stanzas, MAC line.

Parsing is strict (canonical unpadded base64, 64-column body lines, exactly
one short final line per stanza) because every laxness is a malleability the
spec forbids and the public test vectors check for.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass, field
from typing import List

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from backupagent.crypto.bufsource import BufferedSource, LineTooLong
from backupagent.crypto.errors import AgeHeaderError

VERSION_PREFIX = b"age-encryption.org/"
VERSION_LINE = b"age-encryption.org/v1\n"
COLUMNS = 64
MAC_PREFIX = b"---"
STANZA_PREFIX = b"-> "
# A hybrid post-quantum stanza argument is ~1.5 KB; nothing legitimate is near this.
_LINE_LIMIT = 64 * 1024
# Generous (thousands of recipients) yet bounded against a hostile endless header.
_HEADER_LIMIT = 4 * 1024 * 1024


def b64encode_raw(data: bytes) -> bytes:
    """Unpadded standard base64, as the header uses."""
    return base64.b64encode(data).rstrip(b"=")


def b64decode_raw(text: bytes) -> bytes:
    """Decode unpadded base64, refusing padding and non-canonical encodings.

    Raises ValueError; round-tripping the result is the canonical check (it
    also catches characters outside the alphabet, which binascii skips).
    """
    if b"=" in text:
        raise ValueError("base64 padding is not allowed")
    pad = -len(text) % 4
    if pad == 3:
        raise ValueError("invalid base64 length")
    try:
        data = binascii.a2b_base64(text + b"=" * pad)
    except binascii.Error:
        raise ValueError("invalid base64") from None
    if b64encode_raw(data) != text:
        raise ValueError("non-canonical base64")
    return data


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


@dataclass
class Stanza:
    """One recipient stanza: ``-> type args...`` and a binary body."""

    type: str
    args: List[str] = field(default_factory=list)
    body: bytes = b""

    def encode(self) -> bytes:
        line = STANZA_PREFIX + " ".join([self.type, *self.args]).encode("ascii") + b"\n"
        text = b64encode_raw(self.body)
        lines = [text[i : i + COLUMNS] for i in range(0, len(text), COLUMNS)]
        if not lines or len(lines[-1]) == COLUMNS:
            lines.append(b"")
        return line + b"".join(x + b"\n" for x in lines)


@dataclass
class Header:
    stanzas: List[Stanza]
    mac: bytes = b""
    # The exact bytes the MAC covers: everything up to and including "---".
    mac_input: bytes = b""

    def verify_mac(self, file_key: bytes) -> bool:
        return hmac.compare_digest(compute_mac(file_key, self.mac_input), self.mac)


def compute_mac(file_key: bytes, mac_input: bytes) -> bytes:
    key = hkdf_sha256(file_key, b"", b"header")
    return hmac.new(key, mac_input, hashlib.sha256).digest()


def encode_header(stanzas: List[Stanza], file_key: bytes) -> bytes:
    body = VERSION_LINE + b"".join(s.encode() for s in stanzas) + MAC_PREFIX
    return body + b" " + b64encode_raw(compute_mac(file_key, body)) + b"\n"


def _is_vchar_arg(arg: bytes) -> bool:
    return bool(arg) and all(0x21 <= c <= 0x7E for c in arg)


def read_header(src: BufferedSource) -> Header:
    """Consume and parse the header; the source is left at the payload nonce."""
    raw = bytearray()

    def line() -> bytes:
        try:
            text = src.readline(_LINE_LIMIT)
        except LineTooLong:
            raise AgeHeaderError("invalid age header: a header line is too long") from None
        if not text.endswith(b"\n"):
            raise AgeHeaderError(
                "invalid age header: unexpected end of input inside the header"
                " (the file is truncated or not an age file)"
            )
        raw.extend(text)
        if len(raw) > _HEADER_LIMIT:
            raise AgeHeaderError("invalid age header: header larger than 4 MiB")
        return text

    first = line() if src.peek(1) else b""
    if first != VERSION_LINE:
        if first.startswith(VERSION_PREFIX):
            version = first[len(VERSION_PREFIX) :].strip()[:32].decode("ascii", "replace")
            raise AgeHeaderError(
                f"unsupported age format version {version!r}: only v1 is supported"
            )
        raise AgeHeaderError(
            "not an age file: it does not start with 'age-encryption.org/v1'"
            " (is it unencrypted, or still compressed?)"
        )
    stanzas: List[Stanza] = []
    while True:
        text = line()
        if text.startswith(MAC_PREFIX):
            if not stanzas:
                raise AgeHeaderError("invalid age header: no recipient stanza")
            mac_input = bytes(raw[: len(raw) - len(text) + len(MAC_PREFIX)])
            rest = text[len(MAC_PREFIX) :]
            if not rest.startswith(b" ") or len(rest) != 1 + 43 + 1:
                raise AgeHeaderError("invalid age header: malformed MAC line")
            try:
                mac = b64decode_raw(rest[1:-1])
            except ValueError as exc:
                raise AgeHeaderError(f"invalid age header: MAC line: {exc}") from None
            return Header(stanzas=stanzas, mac=mac, mac_input=mac_input)
        if not text.startswith(STANZA_PREFIX):
            raise AgeHeaderError(
                "invalid age header: expected a '-> ' stanza or the '---' MAC line"
            )
        args = text[len(STANZA_PREFIX) : -1].split(b" ")
        if not all(_is_vchar_arg(a) for a in args):
            raise AgeHeaderError("invalid age header: empty or invalid stanza argument")
        body = bytearray()
        while True:
            body_line = line()[:-1]
            if len(body_line) > COLUMNS:
                raise AgeHeaderError("invalid age header: stanza body line exceeds 64 columns")
            body += body_line
            if len(body_line) < COLUMNS:
                break
        try:
            decoded = b64decode_raw(bytes(body))
        except ValueError as exc:
            raise AgeHeaderError(f"invalid age header: stanza body: {exc}") from None
        stanza_args = [a.decode("ascii") for a in args]
        stanzas.append(Stanza(type=stanza_args[0], args=stanza_args[1:], body=decoded))
