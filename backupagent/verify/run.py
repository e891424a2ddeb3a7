"""``verify_backup``: restore one stored backup in a throwaway container and check it.

Order: pick and fetch the image -> start the container (labelled, limited,
offline, watchdog armed) -> wait for the server -> stream the backup into the
native restore tool -> row counts, schema, custom queries -> remove the
container (always, in ``finally``).

Outcome semantics (the protocol's ``status``):

- ``passed``: the backup restored and every check passed (or was skipped);
- ``failed``: it restored but a check failed (counts, schema or a custom
  query disagree: the data is not what was dumped);
- ``error``: it did not restore at all (image, Docker, key, corrupt object,
  restore tool, timeout). A ``restore_failure`` anomaly is due for this one
  (``outcome.anomaly_due``); the caller reports it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from backupagent.api.models import VerificationCheck, VerificationReport
from backupagent.errors import AgentError
from backupagent.verify.errors import VerifyError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 1800.0
PATH_NONE = "none"


@dataclass
class VerificationOutcome:
    """The report to POST, which restore path was taken, and facts for logs/anomalies.

    ``details`` keys: ``image``, ``imageSource``, ``errorCode``/``errorMessage``
    (status ``error``), ``storedSha256``, ``storedBytes``, ``dumpBytes``,
    ``encrypted``, ``schemaDifferences`` (lines), ``timingsMs`` (``image``,
    ``ready``, ``restore``, ``checks``, ``total``), ``anomalyDue``.
    """

    report: VerificationReport
    path_taken: str
    details: Dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return self.report.status

    @property
    def anomaly_due(self) -> bool:
        """True when a ``restore_failure`` anomaly (critical) should be reported."""
        return bool(self.details.get("anomalyDue"))


def _resolve_identities(
    identities: Union[str, Path, Sequence[Any], None],
    settings_extra: Optional[Mapping[str, Any]],
) -> List[Any]:
    """Identities given directly, from a file path, or from the host settings' identityFile."""
    from backupagent.crypto.keys import load_identities

    if identities is None:
        section = (settings_extra or {}).get("verification") or {}
        path = section.get("identityFile") if isinstance(section, Mapping) else None
        if not path:
            return []
        if not Path(path).is_file():
            raise VerifyError(
                f"host settings: verification.identityFile {path!r} does not exist; fix the "
                "path or remove it (verification then restores from the local spool)",
                code="SETTINGS_INVALID",
            )
        return list(load_identities(path))
    if isinstance(identities, (str, Path)):
        return list(load_identities(identities))
    return list(identities)


def _specs(checks: Sequence[Any], kind: str) -> List[Any]:
    return [c for c in checks if getattr(c, "check_type", None) == kind]


def verify_backup(
    target: Any,
    object_key: str,
    manifest: Mapping[str, Any],
    *,
    image: Optional[str] = None,
    identities: Union[str, Path, Sequence[Any], None] = None,
    spool_path: Optional[Union[str, Path]] = None,
    checks: Sequence[Any] = (),
    schema_snapshot: Optional[Mapping[str, Any]] = None,
    timeout: float = DEFAULT_TIMEOUT,
    cancel: Any = None,
    settings_extra: Optional[Mapping[str, Any]] = None,
    job_id: Optional[str] = None,
    client: Any = None,
    limits: Any = None,
    pull_timeout: Optional[float] = None,
) -> VerificationOutcome:
    """Verify one stored backup; never raises for a verification problem.

    ``target``/``object_key``: where the backup is; ``manifest``: its parsed
    manifest (engine, versions, sha256, rowCounts, schemaHash). ``image``:
    the schedule's ``verification.image``. ``identities``: age identities (or
    an identity file path); None reads ``verification.identityFile`` from
    ``settings_extra`` (the host settings' extra section). ``spool_path``: a
    plaintext (or zstd) copy of the dump, used when this host cannot decrypt.
    ``checks``: the schedule's ``VerificationCheckSpec`` list. ``schema_snapshot``:
    the dump-time snapshot (else the manifest's ``schemaHash`` is used).
    ``timeout``: hard limit for the whole container's life. ``cancel``: a
    ``CancelToken``. ``client``: a Docker client (default: from the env).
    """
    from backupagent.verify import checks as chk
    from backupagent.verify.container import Limits, ManagedContainer, docker_client
    from backupagent.verify.dialects import dialect_for
    from backupagent.verify.images import DEFAULT_PULL_TIMEOUT, ensure_image, select_image
    from backupagent.verify.restore import open_source

    started = time.monotonic()
    timings: Dict[str, int] = {}
    details: Dict[str, Any] = {"timingsMs": timings, "anomalyDue": False}
    report_checks: List[VerificationCheck] = []
    container_id = ""
    restore_ms = 0
    path_taken = PATH_NONE
    own_client = client is None
    box: Any = None
    source: Any = None

    def ms_since(t: float) -> int:
        return int((time.monotonic() - t) * 1000)

    try:
        db_type = str(manifest.get("engine") or (manifest.get("database") or {}).get("type"))
        db_name = str((manifest.get("database") or {}).get("name") or "")
        dialect = dialect_for(db_type, db_name)
        choice = select_image(
            db_type,
            manifest.get("serverVersion"),
            schedule_image=image,
            settings_extra=settings_extra,
        )
        details.update(image=choice.image, imageSource=choice.source)
        idents = _resolve_identities(identities, settings_extra)
        if client is None:
            client = docker_client()
        t = time.monotonic()
        ensure_image(
            client,
            choice,
            timeout=pull_timeout if pull_timeout is not None else DEFAULT_PULL_TIMEOUT,
        )
        timings["image"] = ms_since(t)
        remaining = max(1.0, timeout - (time.monotonic() - started))
        box = ManagedContainer(
            client,
            choice.image,
            environment=dialect.environment(),
            command=dialect.command(),
            job_id=job_id,
            limits=limits or Limits.from_settings(settings_extra),
            timeout=remaining,
            cancel=cancel,
        )
        with box:
            container_id = box.id
            log.info(
                "verifying %s in container %s (%s, %s)",
                object_key,
                container_id[:12],
                choice.image,
                choice.source,
            )
            t = time.monotonic()
            dialect.wait_ready(box)
            timings["ready"] = ms_since(t)
            source = open_source(
                target,
                object_key,
                manifest,
                identities=idents,
                spool_path=Path(spool_path) if spool_path else None,
            )
            path_taken = source.path_taken
            details["encrypted"] = source.encrypted
            t = time.monotonic()
            dialect.restore(box, source.chunks())
            source.finish()
            restore_ms = ms_since(t)
            timings["restore"] = restore_ms
            details.update(
                storedSha256=source.stored_sha256,
                storedBytes=source.stored_bytes,
                dumpBytes=source.dump_bytes,
            )
            t = time.monotonic()
            actual_counts = dialect.row_counts(box)
            report_checks += chk.row_count_checks(
                {str(k): int(v) for k, v in (manifest.get("rowCounts") or {}).items()},
                actual_counts,
                exact=bool(manifest.get("rowCountsExact")),
                specs=_specs(checks, "row_count"),
            )
            schema_specs = _specs(checks, "schema_match")
            restored_schema = dialect.schema_snapshot(box) if dialect.has_schema else None
            schema_result, diff_lines = chk.schema_check(
                restored_schema,
                expected_snapshot=schema_snapshot,
                expected_hash=manifest.get("schemaHash"),
                name=(getattr(schema_specs[0], "check_name", None) if schema_specs else None)
                or "schema",
            )
            report_checks.append(schema_result)
            if diff_lines:
                details["schemaDifferences"] = diff_lines
            for i, spec in enumerate(_specs(checks, "custom_query"), 1):
                query = getattr(spec, "query", None)
                if not query:
                    report_checks.append(
                        chk.custom_query_check(spec, error="the check has no query", index=i)
                    )
                    continue
                try:
                    out = dialect.custom_query(box, query)
                    report_checks.append(chk.custom_query_check(spec, actual=out, index=i))
                except VerifyError as exc:
                    if exc.code in ("VERIFY_TIMEOUT", "VERIFY_CANCELLED"):
                        raise
                    report_checks.append(chk.custom_query_check(spec, error=str(exc), index=i))
            timings["checks"] = ms_since(t)
            box.check_alive()
        status = chk.overall_status(report_checks)
    except Exception as exc:
        status = "error"
        code = exc.code if isinstance(exc, AgentError) else "INTERNAL"
        message = str(exc) if isinstance(exc, AgentError) else f"{type(exc).__name__}: {exc}"
        if box is not None and box.stopped and isinstance(exc, AgentError):
            try:
                box.check_alive()
            except VerifyError as stop:  # the watchdog's reason is the real cause
                code, message = stop.code, str(stop)
        details.update(errorCode=code, errorMessage=message, anomalyDue=True)
        if not isinstance(exc, AgentError):
            log.exception("unexpected error verifying %s", object_key)
        else:
            log.error("verification of %s: %s (%s)", object_key, message, code)
    finally:
        if source is not None:
            source.close()
        if box is not None:
            box.remove()
        if own_client and client is not None:
            client.close()
    timings["total"] = ms_since(started)
    report = VerificationReport(
        status=status,
        containerId=container_id,
        restoreDurationMs=restore_ms,
        checks=report_checks,
    )
    return VerificationOutcome(report=report, path_taken=path_taken, details=details)
