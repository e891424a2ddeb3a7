"""What to back up: the config document, parsed once into validated, immutable objects.

``parse_config`` (parse.py) turns a raw document into an ``AgentConfig``
(model.py) or raises ``ConfigInvalid`` naming every bad field; ``config_hash``
(hashing.py) is the heartbeat's configHash; load.py reads standalone YAML files
and keeps the last good config on disk. docs/config.md is the user reference.
"""

from __future__ import annotations

from backupagent.config.hashing import EMPTY_HASH, config_hash
from backupagent.config.model import (
    AgentConfig,
    AlertChannel,
    Compression,
    DatabaseRef,
    Encryption,
    LocalSettings,
    Retention,
    S3Credentials,
    S3Settings,
    Schedule,
    SmtpSettings,
    Target,
    Verification,
    VerificationCheckSpec,
)
from backupagent.config.parse import parse_config

__all__ = [
    "EMPTY_HASH",
    "AgentConfig",
    "AlertChannel",
    "Compression",
    "DatabaseRef",
    "Encryption",
    "LocalSettings",
    "Retention",
    "S3Credentials",
    "S3Settings",
    "Schedule",
    "SmtpSettings",
    "Target",
    "Verification",
    "VerificationCheckSpec",
    "config_hash",
    "parse_config",
]
