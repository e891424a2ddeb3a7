"""Object keys for backups and their manifests.

Layout (relative to the target's root, which already includes an S3 target's
own prefix)::

    <prefix>/<hostname>/<dbType>/<databaseName>/<YYYYmmddTHHMMSSZ>-<jobId>.<ext>
    <same>.manifest.json

Every component comes from config or from the database server, so none is
trusted. Each is cleaned by ``sanitize_segment`` with these rules, chosen so
that no input can climb out of the prefix or the target directory, and so
that the result is the same on every run (retention finds old backups by
rebuilding the same directory):

* allowed characters are ASCII letters, digits, ``_``, ``-`` and ``.``;
  anything else (``/``, ``\\``, NUL, control characters, spaces, non-ASCII)
  becomes ``_``;
* leading dots become ``_`` (so ``..`` and hidden names are impossible, and
  dot-led names stay reserved for temporary files);
* in the job id, dots become ``_`` too (the first dot starts the extension);
* a leading ``-`` becomes ``_`` (a name is never mistaken for a CLI option);
* empty becomes ``_``; longer than ``MAX_SEGMENT`` characters is cut;
* whenever any rule changed the input, ``-`` and the first 8 hex digits of
  the SHA-256 of the original text are appended, so two different names
  that clean to the same text (``a/b`` and ``a_b``) still get different keys.

A name that is already clean is kept exactly as it is.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from typing import List, NamedTuple, Optional

MAX_SEGMENT = 100
MAX_JOB_ID = 64
MAX_EXT = 40
MANIFEST_SUFFIX = ".manifest.json"
TIMESTAMP_FORMAT = "%Y%m%dT%H%M%SZ"

_BAD_CHAR = re.compile(r"[^A-Za-z0-9_.\-]")
_BAD_JOB_CHAR = re.compile(r"[^A-Za-z0-9_\-]")  # no dot: the first dot starts the extension
_NAME_RE = re.compile(r"^(?P<ts>\d{8}T\d{6}Z)-(?P<job>[A-Za-z0-9_\-]+)\.(?P<ext>[A-Za-z0-9_.\-]+)$")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def sanitize_segment(value: object, max_len: int = MAX_SEGMENT, bad: re.Pattern = _BAD_CHAR) -> str:
    """One path segment that is safe on S3 and on any POSIX filesystem."""
    original = "" if value is None else str(value)
    cleaned = bad.sub("_", original)
    stripped = cleaned.lstrip(".")
    cleaned = "_" * (len(cleaned) - len(stripped)) + stripped
    if cleaned.startswith("-"):
        cleaned = "_" + cleaned[1:]
    if not cleaned:
        cleaned = "_"
    if cleaned != original or len(cleaned) > max_len:
        tag = "-" + _digest(original)
        cleaned = cleaned[: max_len - len(tag)] + tag
    return cleaned


def sanitize_prefix(prefix: Optional[str]) -> str:
    """A ``/``-separated prefix with every segment sanitized; empty segments dropped.

    ``"backups/prod/"`` stays ``"backups/prod"``; ``"../etc"`` becomes
    ``"__-<hash>/etc"``. Empty means "no prefix".
    """
    if not prefix:
        return ""
    parts = [p for p in str(prefix).replace("\\", "/").split("/") if p != ""]
    return "/".join(sanitize_segment(p) for p in parts)


def sanitize_ext(ext: str) -> str:
    """A file extension like ``dump.zst.age``: dot-separated clean parts."""
    parts = [p for p in str(ext).split(".") if p != ""] or ["bin"]
    clean = ".".join(sanitize_segment(p, max_len=MAX_EXT) for p in parts)
    return clean[:MAX_EXT].rstrip(".")


def format_timestamp(timestamp: dt.datetime) -> str:
    """UTC, second resolution; a naive datetime is refused (its zone is unknown)."""
    if timestamp.tzinfo is None or timestamp.utcoffset() is None:
        raise ValueError("backup timestamp must be timezone-aware (use datetime.now(timezone.utc))")
    t = timestamp.astimezone(dt.timezone.utc)
    # not strftime: its %Y is not zero-padded for years < 1000 on glibc
    return f"{t.year:04d}{t.month:02d}{t.day:02d}T{t.hour:02d}{t.minute:02d}{t.second:02d}Z"


def database_prefix(prefix: Optional[str], hostname: str, db_type: str, database_name: str) -> str:
    """The directory holding every backup of one database (what retention lists)."""
    parts: List[str] = []
    clean_prefix = sanitize_prefix(prefix)
    if clean_prefix:
        parts.append(clean_prefix)
    parts += [
        sanitize_segment(hostname),
        sanitize_segment(db_type),
        sanitize_segment(database_name),
    ]
    return "/".join(parts)


def object_key(
    prefix: Optional[str],
    hostname: str,
    db_type: str,
    database_name: str,
    timestamp: dt.datetime,
    job_id: str,
    ext: str,
) -> str:
    """The key of one backup object; see the module docstring for the rules.

    Targets already apply their own root (an S3 target's prefix, a local
    target's directory), so the backup job passes ``prefix=""``; ``prefix`` is
    for callers that address a bare bucket.
    """
    name = (
        f"{format_timestamp(timestamp)}-{sanitize_segment(job_id, MAX_JOB_ID, _BAD_JOB_CHAR)}"
        f".{sanitize_ext(ext)}"
    )
    return database_prefix(prefix, hostname, db_type, database_name) + "/" + name


def manifest_key(key: str) -> str:
    """The manifest lives beside its backup: same key plus ``.manifest.json``."""
    return key + MANIFEST_SUFFIX


def is_manifest_key(key: str) -> bool:
    return key.endswith(MANIFEST_SUFFIX)


class BackupName(NamedTuple):
    timestamp: dt.datetime
    job_id: str
    ext: str


def parse_backup_name(key: str) -> Optional[BackupName]:
    """Split the last segment of a backup key back into its parts (None if foreign).

    Used by listing and retention; a job id in a key built here never
    contains a dot (dots in it become ``_``), so the first dot after it
    starts the extension.
    """
    name = key.rsplit("/", 1)[-1]
    if is_manifest_key(name):
        return None
    match = _NAME_RE.match(name)
    if not match:
        return None
    ts = dt.datetime.strptime(match["ts"], TIMESTAMP_FORMAT).replace(tzinfo=dt.timezone.utc)
    return BackupName(ts, match["job"], match["ext"])
