"""age v1 (age-encryption.org/v1): streaming encryption and decryption.

Backups are encrypted on the way out of ``pg_dump | zstd`` and decrypted on
the way into a restore, so both directions stream with memory bounded by a
few 64 KiB chunks whatever the size of the database. Output is byte-for-byte
the reference format: ``age -d -i key.txt`` reads it, and we read ``age``'s.
"""

from __future__ import annotations

import secrets
from typing import Any, Iterator, List, Optional, Sequence, Union

from backupagent.crypto.armor import ArmorReader, ArmorWriter, looks_armored
from backupagent.crypto.bufsource import BufferedSource
from backupagent.crypto.errors import (
    AgeArmorError,
    AgeDecryptError,
    AgeEncryptError,
    AgeError,
    AgeHeaderError,
    AgeHMACError,
    AgeKeyError,
    AgeNoIdentityMatchError,
    AgePayloadError,
    AgeUnsupportedError,
)
from backupagent.crypto.header import Stanza, encode_header, read_header
from backupagent.crypto.keys import (
    DEFAULT_MAX_WORK_FACTOR,
    FILE_KEY_SIZE,
    Identity,
    Recipient,
    ScryptIdentity,
    ScryptRecipient,
    generate_identity,
    load_identities,
    parse_identity,
    parse_recipient,
    recipient_fingerprint,
    write_identity_file,
)
from backupagent.crypto.stream import (
    CHUNK_SIZE,
    NONCE_SIZE,
    StreamOpener,
    StreamSealer,
    payload_key,
)

__all__ = [
    "CHUNK_SIZE",
    "AgeArmorError",
    "AgeDecryptError",
    "AgeEncryptError",
    "AgeError",
    "AgeHMACError",
    "AgeHeaderError",
    "AgeKeyError",
    "AgeNoIdentityMatchError",
    "AgePayloadError",
    "AgeUnsupportedError",
    "Decryptor",
    "Encryptor",
    "Identity",
    "Recipient",
    "ScryptIdentity",
    "ScryptRecipient",
    "decrypt_stream",
    "encrypt_stream",
    "generate_identity",
    "load_identities",
    "open_decrypting_reader",
    "parse_identity",
    "parse_recipient",
    "recipient_fingerprint",
    "write_identity_file",
]

RecipientLike = Union[str, Recipient, ScryptRecipient]
IdentityLike = Union[str, Identity, ScryptIdentity]
_COPY_SIZE = 1024 * 1024


def _to_recipients(recipients: Sequence[RecipientLike]) -> List[Union[Recipient, ScryptRecipient]]:
    if isinstance(recipients, (str, bytes)):
        raise AgeKeyError("recipients: expected a list of age1... strings, got a single string")
    out: List[Union[Recipient, ScryptRecipient]] = []
    for r in recipients:
        out.append(r if isinstance(r, (Recipient, ScryptRecipient)) else parse_recipient(r))
    if not out:
        raise AgeKeyError(
            "recipients: empty; give at least one age1... recipient (or store the "
            "backup unencrypted on purpose instead of calling the encryptor)"
        )
    if any(isinstance(r, ScryptRecipient) for r in out) and len(out) > 1:
        raise AgeKeyError("recipients: a passphrase (scrypt) recipient must be the only recipient")
    return out


class Encryptor:
    """Encrypts a stream written to it into ``sink`` (anything with ``.write``).

    ``close()`` must be called exactly once after the last ``write``: it emits
    the final chunk that marks the end. Used as a context manager it closes on
    success only, so an exception leaves a truncated file that fails to
    decrypt instead of a complete-looking one holding a partial dump.

    ``armor=True`` writes PEM (``age -a``) text instead of binary.
    """

    def __init__(self, recipients: Sequence[RecipientLike], sink: Any, *, armor: bool = False):
        recips = _to_recipients(recipients)
        self._armor: Optional[ArmorWriter] = ArmorWriter(sink) if armor else None
        self._sink = self._armor if self._armor is not None else sink
        file_key = secrets.token_bytes(FILE_KEY_SIZE)
        stanzas: List[Stanza] = [r.wrap(file_key) for r in recips]
        nonce = secrets.token_bytes(NONCE_SIZE)
        self._sealer = StreamSealer(payload_key(file_key, nonce))
        head = encode_header(stanzas, file_key) + nonce
        del file_key
        self._buf = bytearray()
        self._closed = False
        self.plaintext_bytes = 0
        self.ciphertext_bytes = len(head)
        self._sink.write(head)

    def _emit(self, chunk: Any, last: bool) -> None:
        out = self._sealer.seal(chunk, last)
        self.ciphertext_bytes += len(out)
        self._sink.write(out)

    def write(self, data: Any) -> None:
        if self._closed:
            raise AgeEncryptError("age encryptor: write after close()")
        view = memoryview(data)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        n = len(view)
        if not n:
            return
        self.plaintext_bytes += n
        buf = self._buf
        # Invariant: the buffer holds the not-yet-sealed tail, 0..CHUNK_SIZE
        # bytes; a full chunk stays buffered until we know whether more data
        # follows, because the last chunk must carry the "last" flag.
        if buf:
            take = min(CHUNK_SIZE - len(buf), n)
            buf += view[:take]
            view = view[take:]
            if not len(view):
                return
            self._emit(buf, last=False)
            buf.clear()
        pos = 0
        remaining = len(view)
        while remaining > CHUNK_SIZE:
            self._emit(view[pos : pos + CHUNK_SIZE], last=False)
            pos += CHUNK_SIZE
            remaining -= CHUNK_SIZE
        buf += view[pos:]

    def close(self) -> None:
        """Seal the final chunk (empty only if nothing was written) and finish armor."""
        if self._closed:
            raise AgeEncryptError("age encryptor: close() called twice")
        self._closed = True
        self._emit(self._buf, last=True)
        self._buf.clear()
        if self._armor is not None:
            self._armor.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Encryptor:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None and not self._closed:
            self.close()


def encrypt_stream(
    src: Any, sink: Any, recipients: Sequence[RecipientLike], *, armor: bool = False
) -> int:
    """Encrypt everything readable from ``src`` into ``sink``; returns plaintext bytes."""
    enc = Encryptor(recipients, sink, armor=armor)
    while True:
        data = src.read(_COPY_SIZE)
        if not data:
            break
        enc.write(data)
    enc.close()
    return enc.plaintext_bytes


def _to_identities(
    identities: Sequence[IdentityLike],
    passphrase: Optional[Union[str, bytes]],
    max_work_factor: int,
) -> List[Union[Identity, ScryptIdentity]]:
    if isinstance(identities, (str, bytes)):
        raise AgeKeyError("identities: expected a list of identities, got a single string")
    out: List[Union[Identity, ScryptIdentity]] = []
    for i in identities:
        out.append(i if isinstance(i, (Identity, ScryptIdentity)) else parse_identity(i))
    if passphrase is not None:
        out.append(ScryptIdentity(passphrase, max_work_factor=max_work_factor))
    return out


def _describe_stanzas(stanzas: Sequence[Stanza]) -> str:
    counts: dict = {}
    for s in stanzas:
        counts[s.type] = counts.get(s.type, 0) + 1
    return ", ".join(f"{n} {t}" for t, n in counts.items())


class Decryptor:
    """Reads an age file (binary or armored) from ``src`` and yields its plaintext.

    The header is read and the file key unwrapped in the constructor, so a
    wrong key fails before anything downstream (a restore) starts. Reading is
    file-like (``read(n)``) or chunk-wise (``chunks()``, no extra copies).
    """

    def __init__(
        self,
        src: Any,
        identities: Sequence[IdentityLike],
        *,
        passphrase: Optional[Union[str, bytes]] = None,
        max_work_factor: int = DEFAULT_MAX_WORK_FACTOR,
    ) -> None:
        idents = _to_identities(identities, passphrase, max_work_factor)
        raw = BufferedSource(src)
        self.armored = looks_armored(raw.peek(1024 + 64))
        source = BufferedSource(ArmorReader(raw)) if self.armored else raw
        header = read_header(source)
        stanzas = header.stanzas
        if any(s.type == "scrypt" for s in stanzas) and len(stanzas) != 1:
            raise AgeHeaderError(
                "invalid age header: a passphrase (scrypt) stanza must be the only stanza"
            )
        file_key: Optional[bytes] = None
        for ident in idents:
            file_key = ident.unwrap(stanzas)
            if file_key is not None:
                break
        if file_key is None and not idents:
            raise AgeNoIdentityMatchError(
                f"no identity matched: no identity or passphrase was given, and the file is "
                f"encrypted to {_describe_stanzas(stanzas)} recipient(s); pass the identity "
                "file (AGE-SECRET-KEY-1...) matching the backup's recipient"
            )
        if file_key is None:
            raise AgeNoIdentityMatchError(
                f"no identity matched: the file is encrypted to {_describe_stanzas(stanzas)} "
                f"recipient(s) and none of the {len(idents)} given identities/passphrases "
                "opens it; use the identity file whose public key is among the backup's "
                "recipients (see the manifest's recipient fingerprints)"
            )
        if len(file_key) != FILE_KEY_SIZE:
            raise AgeHeaderError("invalid age header: the wrapped file key is not 16 bytes")
        if not header.verify_mac(file_key):
            raise AgeHMACError("age header MAC mismatch: the header was altered or corrupted")
        nonce = bytearray()
        while len(nonce) < NONCE_SIZE:
            data = source.read(NONCE_SIZE - len(nonce))
            if not data:
                raise AgeHeaderError("age file truncated: the payload nonce is missing or short")
            nonce += data
        self._opener = StreamOpener(source, payload_key(file_key, bytes(nonce)))
        self._cur = b""
        self._pos = 0
        self._eof = False
        self.plaintext_bytes = 0

    def chunks(self) -> Iterator[bytes]:
        """Yield verified plaintext chunks (up to 64 KiB each) until the end."""
        if self._pos < len(self._cur):
            rest = self._cur[self._pos :]
            self._cur, self._pos = b"", 0
            yield rest
        while not self._eof:
            chunk = self._opener.next_chunk()
            if chunk is None:
                self._eof = True
                return
            self.plaintext_bytes += len(chunk)
            if chunk:
                yield chunk

    def read(self, n: int = -1) -> bytes:
        """Exactly ``n`` bytes unless the end is reached (``-1``: everything)."""
        if n is None or n < 0:
            return b"".join(self.chunks())
        if self._pos + n <= len(self._cur):
            out = self._cur[self._pos : self._pos + n]
            self._pos += n
            return out
        parts = [self._cur[self._pos :]]
        have = len(parts[0])
        self._cur, self._pos = b"", 0
        while have < n and not self._eof:
            chunk = self._opener.next_chunk()
            if chunk is None:
                self._eof = True
                break
            self.plaintext_bytes += len(chunk)
            need = n - have
            if len(chunk) > need:
                parts.append(chunk[:need])
                self._cur, self._pos = chunk, need
                have = n
            else:
                parts.append(chunk)
                have += len(chunk)
        return b"".join(parts)

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._eof = True
        self._cur = b""


def open_decrypting_reader(
    src: Any,
    identities: Sequence[IdentityLike],
    *,
    passphrase: Optional[Union[str, bytes]] = None,
    max_work_factor: int = DEFAULT_MAX_WORK_FACTOR,
) -> Decryptor:
    """A file-like object (``read(n)``) over the plaintext of an age stream."""
    return Decryptor(src, identities, passphrase=passphrase, max_work_factor=max_work_factor)


def decrypt_stream(
    src: Any,
    sink: Any,
    identities: Sequence[IdentityLike],
    *,
    passphrase: Optional[Union[str, bytes]] = None,
    max_work_factor: int = DEFAULT_MAX_WORK_FACTOR,
) -> int:
    """Decrypt ``src`` into ``sink``; returns plaintext bytes.

    Plaintext is written chunk by chunk as it verifies; on an error the sink
    has received a verified prefix only, and the error says what was wrong.
    """
    dec = Decryptor(src, identities, passphrase=passphrase, max_work_factor=max_work_factor)
    for chunk in dec.chunks():
        sink.write(chunk)
    return dec.plaintext_bytes
