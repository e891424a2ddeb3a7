"""The JSON manifest stored beside every backup (``<object>.manifest.json``).

It is what lets a backup be trusted and restored without the agent or the
control plane: which engine and versions made it, how to undo each layer
(zstd level, age recipients' fingerprints), the SHA-256 of the stored object
to check before restoring, and the row counts and schema hash at dump time
that verification compares against. Every field is documented in
``docs/manifest.md``; readers must ignore fields they do not know, and a
change that would make old readers misread a manifest bumps
``formatVersion``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from typing import Any, Dict, Mapping, Optional, Sequence

from backupagent import __version__
from backupagent.errors import AgentError

FORMAT_VERSION = 1
UNENCRYPTED_WARNING = (
    "this backup is NOT encrypted: anyone who can read the storage target can read "
    "the data; add age recipients to the target's encryption settings"
)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_RESTORE_HINTS = {
    "postgresql": "pg_restore --no-owner -d DBNAME",
    "mysql": "mysql DBNAME",
    "mariadb": "mariadb DBNAME",
    "redis": "stop redis, place the file as dump.rdb in its dir, start redis",
    "sqlite": "cat > restored.db",
}


class ManifestError(AgentError):
    """A manifest is missing, not JSON, or lacks a field a restore needs."""

    code = "MANIFEST_INVALID"


def schema_hash(snapshot: Optional[Mapping[str, Any]]) -> Optional[str]:
    """``sha256:<hex>`` of a schema snapshot's canonical JSON, or None.

    Canonical = keys sorted, no whitespace, UTF-8; engines already sort the
    tables, so the same schema always hashes the same.
    """
    if snapshot is None:
        return None
    canon = json.dumps(snapshot, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canon.encode("utf-8")).hexdigest()


def _iso(when: Optional[dt.datetime]) -> str:
    when = when or dt.datetime.now(dt.timezone.utc)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    when = when.astimezone(dt.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _fingerprints(recipients: Sequence[Any]) -> list:
    from backupagent.crypto.age import recipient_fingerprint

    return sorted({recipient_fingerprint(r) for r in recipients})


def build_manifest(
    *,
    engine: Any,
    conn: Any,
    plan: Any,
    result: Any,
    job_id: str,
    object_key: str,
    recipients: Sequence[Any] = (),
    compression_level: Optional[int] = None,
    schedule_id: Optional[str] = None,
    database_id: Optional[str] = None,
    server_version: Optional[str] = None,
    tool_version: Optional[str] = None,
    started_at: Optional[dt.datetime] = None,
    duration_ms: Optional[int] = None,
    schema_snapshot: Optional[Mapping[str, Any]] = None,
    extra: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """The manifest of one finished backup, as a JSON-ready dict.

    ``engine`` gives ``db_type``/``dump_format``; ``conn`` the database's
    location (never its credentials); ``plan`` the dump plan (row counts and
    its ``extra`` facts such as the exact tool version used); ``result`` the
    :class:`~backupagent.pipeline.run.PipelineResult`. Versions in
    ``plan.extra`` win over the arguments because they describe the tool that
    actually ran. ``extra`` is kept under the ``extra`` key, never overriding
    a documented field.
    """
    plan_extra: Dict[str, Any] = dict(getattr(plan, "extra", None) or {})
    encrypted = bool(recipients)
    level = compression_level if compression_level is not None else result.compression_level
    db_type = getattr(engine, "db_type", None) or getattr(conn, "db_type", "")
    snapshot_hash = schema_hash(schema_snapshot) if schema_snapshot is not None else None
    if snapshot_hash is None:
        snapshot_hash = plan_extra.get("schemaHash")
    encryption: Dict[str, Any]
    if encrypted:
        encryption = {"format": "age-v1", "recipientFingerprints": _fingerprints(recipients)}
    else:
        encryption = {"format": "none", "warning": UNENCRYPTED_WARNING}
    row_counts = {str(k): int(v) for k, v in (getattr(plan, "row_counts", None) or {}).items()}
    stages = dict(getattr(result, "durations_ms", {}) or {})
    created = _iso(started_at)
    manifest: Dict[str, Any] = {
        "formatVersion": FORMAT_VERSION,
        "objectKey": object_key,
        "createdAt": created,
        "jobId": job_id,
        "scheduleId": schedule_id,
        "databaseId": database_id,
        "agentVersion": __version__,
        "engine": db_type,
        "database": {
            "type": db_type,
            "name": getattr(conn, "database_name", ""),
            "host": getattr(conn, "host", "") or getattr(conn, "socket", "") or "",
            "port": str(getattr(conn, "port", "") or ""),
        },
        "serverVersion": plan_extra.get("serverVersion") or server_version,
        "dumpToolVersion": plan_extra.get("toolVersion") or tool_version,
        "dumpFormat": getattr(engine, "dump_format", None),
        "compression": {"algorithm": "zstd", "level": level},
        "encryption": encryption,
        "sizes": {
            "dump": int(result.dump_size),
            "compressed": int(result.compressed_size),
            "stored": int(result.stored_size),
        },
        "sha256": result.sha256,
        "rowCounts": row_counts,
        "rowCountsExact": bool(getattr(plan, "row_counts_exact", False)),
        "schemaHash": snapshot_hash,
        "timings": {
            "startedAt": created,
            "durationMs": int(duration_ms) if duration_ms is not None else stages.get("total"),
            "stagesMs": stages,
        },
        "restoreHint": _restore_hint(db_type, encrypted),
    }
    if getattr(result, "dump_sha256", None):
        manifest["dumpSha256"] = result.dump_sha256
    for key in ("rowCountsSource", "rowCountsCaveat"):
        if plan_extra.get(key):
            manifest[key] = plan_extra[key]
    if extra:
        manifest["extra"] = dict(extra)
    return manifest


def _restore_hint(db_type: str, encrypted: bool) -> str:
    steps = (["age -d -i KEY.txt FILE"] if encrypted else ["cat FILE"]) + ["zstd -d"]
    steps.append(_RESTORE_HINTS.get(db_type, "the engine's restore tool"))
    return " | ".join(steps)


def manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    """The stored form: pretty, key-sorted UTF-8 JSON with a final newline."""
    return (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def _need(m: Mapping[str, Any], key: str, kind: Any, where: str = "") -> Any:
    path = f"{where}{key}"
    if key not in m:
        raise ManifestError(
            f"manifest: missing field {path!r}; the file is not a complete backupagent manifest"
        )
    value = m[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ManifestError(f"manifest: field {path!r} should be {name}, got {value!r}")
    return value


def parse_manifest(data: bytes) -> Dict[str, Any]:
    """Parse and check a stored manifest; unknown fields are kept, not rejected.

    Raises :class:`ManifestError` naming the first field that is missing or
    of the wrong type, or a ``formatVersion`` newer than this agent reads.
    """
    try:
        m = json.loads(data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"manifest is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(m, dict):
        raise ManifestError("manifest: the top level must be a JSON object")
    version = _need(m, "formatVersion", int)
    if version > FORMAT_VERSION or version < 1:
        raise ManifestError(
            f"manifest formatVersion {version} is not supported by agent {__version__} "
            f"(it reads version {FORMAT_VERSION}); upgrade backupagent"
        )
    _need(m, "objectKey", str)
    _need(m, "createdAt", str)
    _need(m, "engine", str)
    db = _need(m, "database", dict)
    _need(db, "type", str, "database.")
    _need(db, "name", str, "database.")
    sha = _need(m, "sha256", str)
    if not _SHA256.match(sha):
        raise ManifestError(f"manifest: field 'sha256' is not 64 lowercase hex digits: {sha!r}")
    sizes = _need(m, "sizes", dict)
    for key in ("dump", "compressed", "stored"):
        if _need(sizes, key, int, "sizes.") < 0:
            raise ManifestError(f"manifest: field 'sizes.{key}' is negative")
    comp = _need(m, "compression", dict)
    if _need(comp, "algorithm", str, "compression.") not in ("zstd", "none"):
        raise ManifestError(
            f"manifest: compression.algorithm {comp['algorithm']!r} is unknown (zstd or none)"
        )
    enc = _need(m, "encryption", dict)
    fmt = _need(enc, "format", str, "encryption.")
    if fmt == "age-v1":
        fps = _need(enc, "recipientFingerprints", list, "encryption.")
        if not all(isinstance(f, str) for f in fps):
            raise ManifestError("manifest: encryption.recipientFingerprints must be strings")
    elif fmt != "none":
        raise ManifestError(f"manifest: encryption.format {fmt!r} is unknown (age-v1 or none)")
    counts = m.get("rowCounts", {})
    if not isinstance(counts, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in counts.values()
    ):
        raise ManifestError("manifest: rowCounts must map table names to integers")
    return m


def is_encrypted(manifest: Mapping[str, Any]) -> bool:
    return manifest.get("encryption", {}).get("format") == "age-v1"


def is_compressed(manifest: Mapping[str, Any]) -> bool:
    return manifest.get("compression", {}).get("algorithm") == "zstd"
