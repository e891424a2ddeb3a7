"""Parsing age X25519 recipients (``age1...``) without loading any cryptography.

Why a module of its own: a backup checks its recipients before the dump
starts, and importing ``cryptography`` (~20 ms) there would delay the dump's
start by as much; the encryption itself loads it once the dump runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from backupagent.crypto import bech32
from backupagent.crypto.errors import AgeKeyError, AgeUnsupportedError

if TYPE_CHECKING:
    from backupagent.crypto.header import Stanza

RECIPIENT_HRP = "age"


def _describe(value: str) -> str:
    """A recipient as it can be shown: shortened so a pasted blob stays readable."""
    return repr(value if len(value) <= 80 else value[:70] + "...")


class Recipient:
    """An X25519 recipient (``age1...``): encrypting to it needs no secret."""

    type_name = "X25519"

    def __init__(self, public_key: bytes) -> None:
        if len(public_key) != 32:
            raise AgeKeyError("an X25519 recipient is 32 bytes")
        self.public_key = bytes(public_key)

    def __str__(self) -> str:
        return bech32.encode(RECIPIENT_HRP, self.public_key)

    def __repr__(self) -> str:
        return f"Recipient({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Recipient) and other.public_key == self.public_key

    def __hash__(self) -> int:
        return hash(self.public_key)

    def wrap(self, file_key: bytes) -> Stanza:
        from backupagent.crypto.keys import wrap_x25519

        return wrap_x25519(self.public_key, file_key)


def parse_recipient(value: str) -> Recipient:
    """Parse ``age1...``; the error names the value (public) and what to do."""
    text = value.strip() if isinstance(value, str) else ""
    fix = "use the public key printed by `age-keygen -y KEYFILE` or `backupagent keygen`"
    if text.startswith(("AGE-SECRET-KEY-", "age-secret-key-")):
        raise AgeKeyError(
            "recipient: got a secret key (AGE-SECRET-KEY-...) where a public recipient "
            f"(age1...) belongs; never share it, and {fix}"
        )
    if text.lower().startswith("age1pq1"):
        raise AgeUnsupportedError(
            f"recipient {_describe(text)}: post-quantum (age1pq) recipients are not "
            "supported yet; use an X25519 recipient (age1...)"
        )
    try:
        hrp, data = bech32.decode(text)
    except bech32.Bech32Error as exc:
        raise AgeKeyError(
            f"recipient {_describe(text)}: not a valid age recipient ({exc}); {fix}"
        ) from None
    if hrp.lower() != RECIPIENT_HRP:
        if text.startswith("ssh-"):
            raise AgeUnsupportedError(
                f"recipient {_describe(text)}: SSH recipients are not supported; {fix}"
            )
        raise AgeKeyError(f"recipient {_describe(text)}: expected the prefix 'age1'; {fix}")
    if len(data) != 32:
        raise AgeKeyError(f"recipient {_describe(text)}: wrong key length {len(data)}; {fix}")
    return Recipient(data)
