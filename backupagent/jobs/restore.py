"""One restore: a stored backup streamed back into a database, with checks.

download -> SHA-256 check -> age decrypt -> zstd -> native restore tool, then
(PostgreSQL, where the manifest's counts come from the dump's own snapshot)
every table's row count compared with the manifest, exactly.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from backupagent.errors import AgentError

log = logging.getLogger(__name__)

RESTORE_MISMATCH = "RESTORE_MISMATCH"


@dataclass
class RestoreOutcome:
    stored_size: int
    dump_size: int
    sha256: str
    duration_ms: int
    row_counts_checked: int = 0
    mismatches: List[str] = field(default_factory=list)


def read_backup_manifest(target: Any, key: str) -> Optional[Dict[str, Any]]:
    """The manifest beside ``key``, or None when there is none (a foreign or old object)."""
    from backupagent.pipeline.manifest import parse_manifest
    from backupagent.targets.base import ObjectNotFound
    from backupagent.targets.keys import manifest_key

    try:
        reader = target.open_reader(manifest_key(key))
    except ObjectNotFound:
        return None
    try:
        return parse_manifest(reader.read())
    finally:
        reader.close()


def restore_backup(
    target: Any,
    key: str,
    conn: Any,
    *,
    identities: Sequence[Any] = (),
    force: bool = False,
    cancel: Any = None,
    workdir: Optional[Path] = None,
    progress: Optional[Callable[[str, int, int, Optional[int]], None]] = None,
) -> RestoreOutcome:
    """Restore ``key`` into ``conn``.

    ``progress(stage, stored_bytes_read, dump_bytes_fed, stored_total)`` is
    for a display: stage ``restoring`` about twice a second, then
    ``checking`` while row counts are compared; ``stored_total`` is None
    without a manifest.
    """
    from backupagent.engines.registry import get_engine
    from backupagent.pipeline.manifest import is_compressed, is_encrypted
    from backupagent.pipeline.restore import run_restore_pipeline

    engine = get_engine(conn.db_type)
    manifest = read_backup_manifest(target, key)
    if manifest is None:
        log.warning("%s has no manifest: restoring without SHA-256 or row-count checks", key)
    else:
        _check_engine(manifest, conn.db_type)
    encrypted = is_encrypted(manifest) if manifest else None
    if encrypted and not identities:
        raise AgentError(
            "this backup is encrypted: pass --identity FILE (the age key whose "
            "recipient the target encrypts to)",
            code="KEY_MISSING",
        )
    if not force and not engine.is_empty(conn):
        raise AgentError(
            f"database {conn.redacted_url()} is not empty: restoring into it could "
            "mix old and restored data. Restore into an empty database, or pass "
            "--force",
            code="TARGET_NOT_EMPTY",
        )
    scratch = Path(tempfile.mkdtemp(prefix="restore-", dir=str(workdir) if workdir else None))
    try:
        with engine.prepare_restore(conn, scratch) as plan:
            reader = target.open_reader(key)
            try:
                result = run_restore_pipeline(
                    reader,
                    plan.argv,
                    plan.env,
                    identities=identities,
                    expected_sha256=(manifest or {}).get("sha256"),
                    cancel=cancel,
                    encrypted=encrypted,
                    compressed=is_compressed(manifest) if manifest else None,
                    cwd=str(scratch),
                    progress=_progress_callback(progress, manifest),
                )
            finally:
                reader.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    outcome = RestoreOutcome(
        stored_size=result.stored_size,
        dump_size=result.dump_size,
        sha256=result.sha256,
        duration_ms=result.duration_ms,
    )
    if manifest and manifest.get("rowCountsExact") and manifest.get("rowCounts"):
        if progress is not None:
            progress("checking", result.stored_size, result.dump_size, result.stored_size)
        _compare_counts(engine, conn, manifest["rowCounts"], outcome)
    return outcome


def _progress_callback(progress: Any, manifest: Optional[Dict[str, Any]]) -> Any:
    """The pipeline's ``(stored, fed)`` callback, with the stage and the stored
    object's size (from the manifest, when there is one) added."""
    if progress is None:
        return None
    total = (manifest or {}).get("sizes", {}).get("stored")
    total = total if isinstance(total, int) and total > 0 else None
    return lambda stored, fed: progress("restoring", stored, fed, total)


def _check_engine(manifest: Dict[str, Any], db_type: str) -> None:
    family = {"mariadb": "mysql"}
    stored = manifest.get("engine") or ""
    if family.get(stored, stored) != family.get(db_type, db_type):
        raise AgentError(
            f"this backup is a {stored} dump; it cannot be restored into {db_type}",
            code="CONFIG_INVALID",
        )


def _compare_counts(
    engine: Any, conn: Any, expected: Dict[str, int], outcome: RestoreOutcome
) -> None:
    actual = engine.list_tables_with_counts(conn)
    for table, want in sorted(expected.items()):
        got = actual.get(table)
        if got != want:
            outcome.mismatches.append(f"{table}: manifest {want} rows, restored {got}")
    outcome.row_counts_checked = len(expected)
    if outcome.mismatches:
        raise AgentError(
            "restored row counts differ from the backup's manifest: "
            + "; ".join(outcome.mismatches[:10]),
            code=RESTORE_MISMATCH,
        )
