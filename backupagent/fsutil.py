"""Crash-safe file writes.

Settings, keys and state are rewritten while the agent runs; a crash or a full
disk mid-write must leave either the old file or the new one, never half of
each, and a secret file must never exist, even briefly, with loose permissions.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Union

PathLike = Union[str, "os.PathLike[str]"]


def fsync_dir(path: PathLike) -> None:
    """Persist a rename: without it a power cut can forget the new name."""
    fd = os.open(os.fspath(path), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: PathLike, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` via a same-directory temp file and a rename.

    The temp file is created with ``mode`` from the start (mkstemp gives
    0600, then fchmod), so a secret is never readable by others. A file
    that is replaced keeps its owner and group when we may set them (root):
    ``sudo backupagent register --force`` must leave the api-key readable by
    the service user it belonged to, not turn it into root's.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        old = os.stat(target)
    except OSError:
        old = None
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        if old is not None and (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
            with contextlib.suppress(PermissionError):
                os.fchown(fd, old.st_uid, old.st_gid)
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)


def loose_permissions(path: PathLike) -> bool:
    """True when group or others may read or write the file."""
    return bool(os.stat(path).st_mode & 0o077)
