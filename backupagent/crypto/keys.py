"""age keys: X25519 identities/recipients, scrypt passphrases, identity files.

Recipients (``age1...``) are public and go into configs and manifests;
identities (``AGE-SECRET-KEY-1...``) are secrets and never appear in an error,
a log line or a repr.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
from pathlib import Path
from typing import List, Optional, Sequence, Union

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from backupagent.crypto import bech32
from backupagent.crypto.errors import AgeHeaderError, AgeKeyError, AgeUnsupportedError
from backupagent.crypto.header import Stanza, b64decode_raw, b64encode_raw, hkdf_sha256
from backupagent.crypto.recipient import (  # noqa: F401 - re-exported
    RECIPIENT_HRP,
    Recipient,
    _describe,
    parse_recipient,
)
from backupagent.fsutil import PathLike, atomic_write, loose_permissions

log = logging.getLogger(__name__)

IDENTITY_HRP = "AGE-SECRET-KEY-"
PQ_IDENTITY_PREFIX = "AGE-SECRET-KEY-PQ-1"
X25519_LABEL = b"age-encryption.org/v1/X25519"
SCRYPT_LABEL = b"age-encryption.org/v1/scrypt"
FILE_KEY_SIZE = 16
_ZERO_NONCE = bytes(12)
# The reference implementation refuses more than 2**22 on decryption (about
# 4 GiB of memory and many seconds): a file from a stranger must not be able
# to exhaust the host.
DEFAULT_MAX_WORK_FACTOR = 22
DEFAULT_SCRYPT_WORK_FACTOR = 18
_WORK_FACTOR_RE = re.compile(r"^[1-9][0-9]*$")


def _raw_public(key: X25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _raw_private(key: X25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
    )

    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def wrap_x25519(public_key: bytes, file_key: bytes) -> Stanza:
    """The X25519 stanza that wraps ``file_key`` for ``public_key`` (age spec)."""
    ephemeral = X25519PrivateKey.generate()
    share = _raw_public(ephemeral.public_key())
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(public_key))
    wrap_key = hkdf_sha256(shared, share + public_key, X25519_LABEL)
    body = ChaCha20Poly1305(wrap_key).encrypt(_ZERO_NONCE, file_key, None)
    return Stanza(type="X25519", args=[b64encode_raw(share).decode("ascii")], body=body)


class Identity:
    """An X25519 identity (secret key). ``repr`` never shows the secret."""

    def __init__(self, private_key: bytes) -> None:
        if len(private_key) != 32:
            raise AgeKeyError("an X25519 identity is 32 bytes")
        self._key = X25519PrivateKey.from_private_bytes(bytes(private_key))
        self._public = _raw_public(self._key.public_key())

    @property
    def secret(self) -> str:
        """The ``AGE-SECRET-KEY-1...`` string (uppercase, as age-keygen writes it)."""
        return bech32.encode(IDENTITY_HRP, _raw_private(self._key))

    @property
    def recipient(self) -> str:
        return str(Recipient(self._public))

    def to_recipient(self) -> Recipient:
        return Recipient(self._public)

    def __repr__(self) -> str:
        return f"Identity(recipient={self.recipient!r})"

    def unwrap(self, stanzas: Sequence[Stanza]) -> Optional[bytes]:
        """The file key if a stanza is ours, None if none is, error if one is malformed."""
        for s in stanzas:
            if s.type != "X25519":
                continue
            if len(s.args) != 1:
                raise AgeHeaderError("invalid X25519 stanza: it must have exactly one argument")
            try:
                share = b64decode_raw(s.args[0].encode("ascii"))
            except ValueError as exc:
                raise AgeHeaderError(f"invalid X25519 stanza share: {exc}") from None
            if len(share) != 32:
                raise AgeHeaderError("invalid X25519 stanza: the share is not 32 bytes")
            if len(s.body) != 32:
                raise AgeHeaderError("invalid X25519 stanza: the body is not 32 bytes")
            try:
                shared = self._key.exchange(X25519PublicKey.from_public_bytes(share))
            except ValueError:
                # cryptography refuses the all-zero shared secret of low-order points.
                raise AgeHeaderError(
                    "invalid X25519 stanza: low-order share (all-zero shared secret)"
                ) from None
            if shared == bytes(32):
                raise AgeHeaderError("invalid X25519 stanza: all-zero shared secret")
            wrap_key = hkdf_sha256(shared, share + self._public, X25519_LABEL)
            try:
                return ChaCha20Poly1305(wrap_key).decrypt(_ZERO_NONCE, s.body, None)
            except InvalidTag:
                continue
        return None


class ScryptRecipient:
    """Encrypt to a passphrase (what ``age -p`` does); must be the only recipient."""

    type_name = "scrypt"

    def __init__(
        self, passphrase: Union[str, bytes], work_factor: int = DEFAULT_SCRYPT_WORK_FACTOR
    ):
        if not passphrase:
            raise AgeKeyError("passphrase: must not be empty")
        if not 1 <= work_factor <= 30:
            raise AgeKeyError(f"scrypt work factor {work_factor}: must be between 1 and 30")
        self._passphrase = passphrase.encode("utf-8") if isinstance(passphrase, str) else passphrase
        self.work_factor = work_factor

    def __repr__(self) -> str:
        return f"ScryptRecipient(work_factor={self.work_factor})"

    def wrap(self, file_key: bytes) -> Stanza:
        salt = secrets.token_bytes(16)
        key = _scrypt(self._passphrase, salt, self.work_factor)
        body = ChaCha20Poly1305(key).encrypt(_ZERO_NONCE, file_key, None)
        return Stanza(
            type="scrypt",
            args=[b64encode_raw(salt).decode("ascii"), str(self.work_factor)],
            body=body,
        )


def _scrypt(passphrase: bytes, salt: bytes, work_factor: int) -> bytes:
    kdf = Scrypt(salt=SCRYPT_LABEL + salt, length=32, n=1 << work_factor, r=8, p=1)
    return kdf.derive(passphrase)


class ScryptIdentity:
    """Decrypt a passphrase-encrypted file; refuses work factors above the cap."""

    def __init__(
        self, passphrase: Union[str, bytes], max_work_factor: int = DEFAULT_MAX_WORK_FACTOR
    ) -> None:
        self._passphrase = passphrase.encode("utf-8") if isinstance(passphrase, str) else passphrase
        self.max_work_factor = max_work_factor

    def __repr__(self) -> str:
        return f"ScryptIdentity(max_work_factor={self.max_work_factor})"

    def unwrap(self, stanzas: Sequence[Stanza]) -> Optional[bytes]:
        if len(stanzas) != 1 or stanzas[0].type != "scrypt":
            return None
        s = stanzas[0]
        if len(s.args) != 2:
            raise AgeHeaderError("invalid scrypt stanza: it must have exactly two arguments")
        try:
            salt = b64decode_raw(s.args[0].encode("ascii"))
        except ValueError as exc:
            raise AgeHeaderError(f"invalid scrypt stanza salt: {exc}") from None
        if len(salt) != 16:
            raise AgeHeaderError("invalid scrypt stanza: the salt is not 16 bytes")
        if not _WORK_FACTOR_RE.match(s.args[1]):
            raise AgeHeaderError(
                f"invalid scrypt stanza: work factor {s.args[1][:20]!r} is not a plain decimal"
            )
        # int() of thousands of digits is refused by Python itself; any such value is huge.
        work_factor = int(s.args[1]) if len(s.args[1]) <= 6 else 1 << 30
        if work_factor > self.max_work_factor:
            raise AgeHeaderError(
                f"scrypt work factor {work_factor} exceeds the limit {self.max_work_factor}: "
                "decrypting would take very long and much memory; raise max_work_factor "
                "only if you trust this file"
            )
        if len(s.body) != 32:
            raise AgeHeaderError("invalid scrypt stanza: the body is not 32 bytes")
        key = _scrypt(self._passphrase, salt, work_factor)
        try:
            return ChaCha20Poly1305(key).decrypt(_ZERO_NONCE, s.body, None)
        except InvalidTag:
            return None


def generate_identity() -> Identity:
    """A fresh X25519 identity from the OS CSPRNG (what ``age-keygen`` makes)."""
    return Identity(_raw_private(X25519PrivateKey.generate()))


def parse_identity(value: str) -> Identity:
    """Parse ``AGE-SECRET-KEY-1...``; errors never contain the value (it is a secret)."""
    text = value.strip() if isinstance(value, str) else ""
    fix = "use a line from an identity file written by `age-keygen` or `backupagent keygen`"
    if text.upper().startswith(PQ_IDENTITY_PREFIX):
        raise AgeUnsupportedError(
            "identity: post-quantum (AGE-SECRET-KEY-PQ-1...) identities are not supported "
            "yet; use an X25519 identity (AGE-SECRET-KEY-1...)"
        )
    if text.startswith("age1"):
        raise AgeKeyError(
            "identity: got a public recipient (age1...) where a secret identity "
            f"(AGE-SECRET-KEY-1...) is needed; {fix}"
        )
    try:
        hrp, data = bech32.decode(text)
    except bech32.Bech32Error as exc:
        raise AgeKeyError(f"identity: not a valid age secret key ({exc}); {fix}") from None
    if hrp.upper() != IDENTITY_HRP:
        raise AgeKeyError(f"identity: expected the prefix 'AGE-SECRET-KEY-1'; {fix}")
    if len(data) != 32:
        raise AgeKeyError(f"identity: wrong key length {len(data)}; {fix}")
    return Identity(data)


def load_identities(path: PathLike) -> List[Identity]:
    """Read an age identity file: one key per line, '#' comments, blank lines.

    A file readable by group or others is used but warned about: refusing
    would break restores in an emergency, which is worse than the warning.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AgeKeyError(
            f"identity file {str(p)!r}: not found; create one with `backupagent keygen` "
            "or pass the path of your age key file"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AgeKeyError(
            f"identity file {str(p)!r}: cannot be read ({type(exc).__name__})"
        ) from None
    if loose_permissions(p):
        log.warning("identity file %s is readable by group or others; run `chmod 600 %s`", p, p)
    identities: List[Identity] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            identities.append(parse_identity(line))
        except AgeKeyError as exc:
            raise type(exc)(f"identity file {str(p)!r} line {lineno}: {exc}") from None
    if not identities:
        raise AgeKeyError(f"identity file {str(p)!r}: contains no identity (AGE-SECRET-KEY-1...)")
    return identities


def write_identity_file(path: PathLike, identity: Identity, *, overwrite: bool = False) -> None:
    """Write an identity file in age-keygen's layout, 0600, atomically.

    Refuses to replace an existing file unless asked: overwriting a key file
    would make every backup encrypted to it unrecoverable.
    """
    p = Path(path)
    if p.exists() and not overwrite:
        raise AgeKeyError(
            f"identity file {str(p)!r}: already exists; refusing to overwrite a key "
            "(move it away first if you really mean to replace it)"
        )
    import datetime as dt

    created = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
    content = f"# created: {created}\n# public key: {identity.recipient}\n{identity.secret}\n"
    atomic_write(p, content.encode("ascii"), mode=0o600)
    os.chmod(p, 0o600)


def recipient_fingerprint(recipient: Union[str, Recipient]) -> str:
    """First 16 hex digits of SHA-256 of the canonical ``age1...`` string.

    Stable across spellings (case, whitespace) because the recipient is parsed
    and re-encoded first; short enough for a manifest, long enough to tell
    keys apart.
    """
    r = recipient if isinstance(recipient, Recipient) else parse_recipient(recipient)
    return hashlib.sha256(str(r).encode("ascii")).hexdigest()[:16]
