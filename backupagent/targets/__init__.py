"""Storage targets: where finished backups are stored.

One small interface (``base.Target``) with a local-directory and an S3
implementation, chosen by URL scheme (``registry.open_target_url``) or from a
config target (``registry.target_from_config``). Importing this package is
cheap: boto3 is only imported when an S3 target is actually constructed.
"""

from __future__ import annotations

from backupagent.targets.base import (
    ObjectInfo,
    ObjectNotFound,
    ObjectWriter,
    Reader,
    Target,
    TargetError,
)
from backupagent.targets.registry import open_target_url, target_from_config

__all__ = [
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectWriter",
    "Reader",
    "Target",
    "TargetError",
    "open_target_url",
    "target_from_config",
]
