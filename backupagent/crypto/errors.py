"""Error classes for age: one per failure kind of the spec.

Restore tooling and tests need to tell "wrong key" from "corrupt file" from
"truncated upload" without parsing messages, so each kind is its own class.
No message ever contains a secret key or a passphrase.
"""

from __future__ import annotations

from backupagent.errors import AgentError


class AgeError(AgentError):
    """Base of every age error."""

    code = "DECRYPT_FAIL"


class AgeKeyError(AgeError):
    """A recipient, identity or identity file is unusable."""

    code = "KEY_INVALID"


class AgeUnsupportedError(AgeKeyError):
    """A valid age key or feature that this implementation does not implement."""


class AgeEncryptError(AgeError):
    """Encryption was used wrongly (e.g. written after close)."""

    code = "ENCRYPT_FAIL"


class AgeDecryptError(AgeError):
    """Base of the failures met while reading an age file."""


class AgeArmorError(AgeDecryptError):
    """The ASCII armor (PEM) wrapper is malformed."""


class AgeHeaderError(AgeDecryptError):
    """The header is malformed or a stanza addressed to us is invalid."""


class AgeNoIdentityMatchError(AgeDecryptError):
    """None of the given identities can open the file: wrong key or passphrase."""


class AgeHMACError(AgeDecryptError):
    """The header MAC does not verify: the header was altered."""


class AgePayloadError(AgeDecryptError):
    """The encrypted payload is corrupt, truncated or has trailing data."""
