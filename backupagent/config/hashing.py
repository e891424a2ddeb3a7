"""The configHash the agent reports in every heartbeat (protocol.md).

The server compares it with the hash of the config it stores, so both sides
must hash the same bytes: the RAW document as received (not our parsed view
of it, which drops unknown fields and fills defaults), as canonical JSON.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

# Reported before any config has been applied.
EMPTY_HASH = ""


def canonical_json(raw: Any) -> bytes:
    """Keys sorted, no insignificant whitespace, UTF-8 rather than ``\\u`` escapes.

    ``surrogatepass`` only matters for a lone surrogate (an invalid ``\\ud800``
    escape in received JSON): it gives stable bytes instead of an exception,
    and is the same as plain UTF-8 for every valid string.
    """
    text = json.dumps(raw, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8", "surrogatepass")


def config_hash(raw: Any) -> str:
    """Lowercase hex SHA-256 of :func:`canonical_json` of ``raw``."""
    return hashlib.sha256(canonical_json(raw)).hexdigest()
