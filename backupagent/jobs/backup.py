"""One backup, end to end: the only place that knows the order of its steps.

start job -> dump (engine) -> pipeline (zstd, age) -> target write -> check the
dump's exit -> commit object -> manifest -> completed -> retention.

A failure anywhere before the commit aborts the object, so nothing partial is
ever visible under a backup's name; and ``completed`` is sent only after the
object and its manifest are both committed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

from backupagent.api.models import JobStartRequest, JobStatusUpdate
from backupagent.errors import AgentError
from backupagent.jobs.result import CancelToken, JobResult
from backupagent.logs import redact
from backupagent.report.base import JobLog, Reporter

log = logging.getLogger(__name__)


@dataclass
class BackupSpec:
    """Everything one backup needs, resolved: no config lookups past this point."""

    conn: Any  # engines.base.ConnectionSpec (with host credentials)
    target: Any  # targets.base.Target
    database_id: str
    target_id: str
    hostname: str
    recipients: Sequence[str] = ()
    compression_level: int = 3
    schedule_id: Optional[str] = None
    retention: Any = None  # config.model.Retention or None
    spool_dir: Optional[Path] = None
    extra_manifest: Dict[str, Any] = field(default_factory=dict)
    history: Any = None  # analysis.History: size/row-count/drift baselines
    alerts: Any = None  # alerts.AlertDispatcher
    verification: Any = None  # config.model.Verification, or None
    settings_extra: Dict[str, Any] = field(default_factory=dict)  # host settings (images, key)
    journal: Any = None  # jobs.journal.JobJournal: what to clean up after a crash
    timeout: Optional[float] = None  # seconds; past it the job is cancelled as TIMEOUT


class _Stages:
    """Turns the pipeline's stage callbacks into status reports, in order, once each."""

    def __init__(self, reporter: Reporter, job_id: str, joblog: JobLog) -> None:
        self.reporter, self.job_id, self.joblog = reporter, job_id, joblog
        self.seen: list = []

    def __call__(self, stage: str) -> None:
        if stage in self.seen:
            return
        self.seen.append(stage)
        self.joblog.add("info", f"stage {stage}")
        self.reporter.job_status(self.job_id, JobStatusUpdate(status=stage))


def run_backup(
    spec: BackupSpec, reporter: Reporter, cancel: Optional[CancelToken] = None, progress: Any = None
) -> JobResult:
    """Run one backup; with ``spec.timeout`` a timer cancels it as TIMEOUT."""
    cancel = cancel or CancelToken()
    timer = None
    if spec.timeout:
        timer = threading.Timer(spec.timeout, cancel.cancel, args=("TIMEOUT",))
        timer.daemon = True
        timer.start()
    try:
        return _run_backup(spec, reporter, cancel, progress)
    finally:
        if timer is not None:
            timer.cancel()


def _run_backup(
    spec: BackupSpec, reporter: Reporter, cancel: CancelToken, progress: Any
) -> JobResult:
    from backupagent.engines.registry import get_engine
    from backupagent.pipeline.manifest import build_manifest
    from backupagent.pipeline.run import run_backup_pipeline
    from backupagent.pipeline.source import FileSource, ProcessSource
    from backupagent.targets.keys import manifest_key, object_key

    started = time.monotonic()
    started_at = dt.datetime.now(dt.timezone.utc)
    job_id = reporter.start_job(
        JobStartRequest(
            databaseId=spec.database_id, targetId=spec.target_id, scheduleId=spec.schedule_id
        )
    )
    joblog = JobLog(reporter, job_id)
    conn = spec.conn
    label = f"{conn.db_type}:{conn.database_name}"
    joblog.add("info", f"Starting backup of {label} ({conn.redacted_url()}) as job {job_id}")
    log.info("backup %s started as job %s", label, job_id, extra={"jobId": job_id})
    if not spec.recipients:
        warning = "target has no encryption recipients: the backup is stored UNENCRYPTED"
        joblog.add("warn", warning)
        log.warning("%s", warning, extra={"jobId": job_id})
    stages = _Stages(reporter, job_id, joblog)
    writer = None
    workdir = Path(
        tempfile.mkdtemp(
            prefix=f"job-{job_id[:36]}-", dir=str(spec.spool_dir) if spec.spool_dir else None
        )
    )
    if spec.journal is not None:
        spec.journal.begin(
            job_id,
            schedule_id=spec.schedule_id,
            database_id=spec.database_id,
            target_id=spec.target_id,
            workdir=workdir,
        )
    try:
        engine = get_engine(conn.db_type)
        key = object_key(
            "",
            spec.hostname,
            conn.db_type,
            conn.database_name or "default",
            started_at,
            job_id,
            _extension(engine.file_extension, spec.recipients),
        )
        if spec.journal is not None:
            spec.journal.update(job_id, object_key=key)
        with engine.prepare_dump(conn, workdir, cancel=cancel) as plan:
            server_version = plan.server_version or engine.server_version(conn)
            tool_version = plan.tool_version or engine.tool_version()
            joblog.add("info", f"server version {server_version}; dump tool {tool_version}")
            snapshot = (
                None
                if plan.has_schema_snapshot
                else _schema_snapshot(lambda: engine.schema_snapshot(conn), joblog)
            )
            source = (
                FileSource(plan.source_file)
                if plan.source_file is not None
                else ProcessSource(
                    plan.argv,
                    plan.env,
                    cwd=str(workdir),
                    cancel=cancel,
                    classify=lambda rc, err: engine.classify_failure(conn, rc, err),
                )
            )
            writer = spec.target.open_writer(key)
            spool_path = _spool_path(spec, workdir)
            with contextlib.ExitStack() as stack:
                spool = stack.enter_context(open(spool_path, "xb")) if spool_path else None
                result = run_backup_pipeline(
                    source,
                    writer,
                    level=spec.compression_level,
                    recipients=list(spec.recipients),
                    on_stage=stages,
                    cancel=cancel,
                    progress=progress,
                    spool=spool,
                )
            if cancel.cancelled:
                raise AgentError("backup cancelled", code=cancel.reason)
            # The schema and the counts may still be being taken beside the
            # dump (PostgreSQL): they belong in the manifest, so they are
            # awaited before the commit.
            if plan.has_schema_snapshot:
                snapshot = _schema_snapshot(plan.schema_snapshot, joblog)
            row_counts = plan.row_counts
            if row_counts:
                joblog.add(
                    "info",
                    f"{len(row_counts)} tables, {sum(row_counts.values())} rows at dump time"
                    f"{'' if plan.row_counts_exact else ' (approximate)'}",
                )
            upload_path = writer.commit()
            duration_ms = int((time.monotonic() - started) * 1000)
            manifest = build_manifest(
                engine=engine,
                conn=conn,
                plan=plan,
                result=result,
                job_id=job_id,
                schedule_id=spec.schedule_id,
                database_id=spec.database_id,
                object_key=key,
                recipients=list(spec.recipients),
                compression_level=spec.compression_level,
                server_version=server_version,
                tool_version=tool_version,
                started_at=started_at,
                duration_ms=duration_ms,
                schema_snapshot=snapshot,
                extra=spec.extra_manifest,
            )
        _write_manifest(spec.target, manifest_key(key), manifest, upload_path)
        joblog.add(
            "info",
            f"stored {result.stored_size} bytes at {upload_path} "
            f"(dump {result.dump_size}, compressed {result.compressed_size}) "
            f"in {duration_ms} ms",
        )
        reporter.job_status(
            job_id,
            JobStatusUpdate(
                status="completed",
                dumpSize=result.dump_size,
                compressedSize=result.compressed_size,
                uploadPath=upload_path,
                durationMs=duration_ms,
            ),
        )
        if spec.journal is not None:
            spec.journal.end(job_id)
        log.info(
            "backup %s completed: %s",
            label,
            upload_path,
            extra={"jobId": job_id, "uploadPath": upload_path, "durationMs": duration_ms},
        )
        outcome = JobResult(
            status="completed",
            job_id=job_id,
            details={
                "uploadPath": upload_path,
                "objectKey": key,
                "dumpSize": result.dump_size,
                "compressedSize": result.compressed_size,
                "storedSize": result.stored_size,
                "sha256": result.sha256,
                "durationMs": duration_ms,
                "manifest": manifest,
            },
        )
    except BaseException as exc:
        aborted = _abort(writer) if writer is not None else True
        code, message = _failure(exc, cancel)
        duration_ms = int((time.monotonic() - started) * 1000)
        joblog.add("error", f"backup failed ({code}): {message}")
        reporter.job_status(
            job_id,
            JobStatusUpdate(
                status="failed", errorCode=code, errorMessage=message, durationMs=duration_ms
            ),
        )
        if spec.journal is not None and aborted:
            spec.journal.end(job_id)
        elif spec.journal is not None:
            # The partial object could not be removed now (the target is
            # unreachable): the journal entry stays, and crash recovery at the
            # next start aborts it (the job's end is already reported).
            log.warning("partial upload of job %s left for recovery at the next start", job_id)
        log.error("backup %s failed (%s): %s", label, code, message, extra={"jobId": job_id})
        if spec.alerts is not None:
            spec.alerts.notify(
                "job_failed",
                f"Backup of {label} failed ({code})",
                message,
                "critical",
                database=label,
                job_id=job_id,
                errorCode=code,
            )
        joblog.flush()
        shutil.rmtree(workdir, ignore_errors=True)
        if not isinstance(exc, Exception):
            raise  # KeyboardInterrupt / SystemExit: reported, then propagated
        return JobResult(status="failed", job_id=job_id, error_code=code, error_message=message)
    _apply_retention(spec, key, joblog)
    if spec.verification is not None and spec.verification.enabled:
        try:
            outcome.details["verification"] = _verify(
                spec,
                reporter,
                joblog,
                job_id,
                label,
                outcome.details,
                snapshot,
                cancel,
                spool_path,
            )
        except Exception as exc:  # the backup is committed and reported: keep it so
            log.exception("verification of job %s crashed", job_id)
            joblog.add("error", f"verification could not run: {exc}")
            outcome.details["verification"] = "error"
    shutil.rmtree(workdir, ignore_errors=True)
    _after_backup(spec, reporter, joblog, job_id, label, outcome.details, row_counts, snapshot)
    joblog.flush()
    return outcome


def _extension(base: str, recipients: Sequence[str]) -> str:
    return f"{base}.zst.age" if recipients else f"{base}.zst"


def _write_manifest(target: Any, key: str, manifest: Dict[str, Any], upload_path: str) -> None:
    from backupagent.pipeline.manifest import manifest_bytes

    data = manifest_bytes(manifest)
    try:
        with target.open_writer(key) as w:
            w.write(data)
            w.commit()
    except BaseException:
        # Without a manifest the object is an orphan nobody can trust: remove it.
        try:
            target.delete(key[: -len(".manifest.json")])
        except Exception as exc:  # the original failure matters more
            log.warning("could not remove %s after its manifest failed: %s", upload_path, exc)
        raise


def _abort(writer: Any) -> bool:
    """Remove the partial object; False when that failed too (target unreachable)."""
    try:
        writer.abort()
    except Exception as exc:
        log.warning("aborting the partial object failed: %s", exc)
        return False
    return not getattr(writer, "abort_failed", False)


def _failure(exc: BaseException, cancel: CancelToken) -> tuple[str, str]:
    if cancel.cancelled and cancel.reason == "TIMEOUT":
        return "TIMEOUT", (
            "backup stopped: it ran past the job time limit (jobTimeout in "
            "agent.yaml); the partial backup was discarded"
        )
    if cancel.cancelled:
        return cancel.reason, redact(f"backup {cancel.reason.lower()}: {exc}")
    if isinstance(exc, AgentError):
        return exc.code, redact(str(exc))
    if isinstance(exc, KeyboardInterrupt):
        return "CANCELLED", "interrupted"
    if isinstance(exc, OSError):
        return "IO_ERROR", redact(f"{type(exc).__name__}: {exc}")
    log.exception("unexpected error in backup")
    return "INTERNAL", redact(f"{type(exc).__name__}: {exc}")


def _apply_retention(spec: BackupSpec, key: str, joblog: JobLog) -> None:
    """Prune after a good backup; a pruning problem is logged, never fails the job."""
    policy = spec.retention
    if policy is None or getattr(policy, "keeps_everything", False):
        return
    try:
        from backupagent.jobs.prune import apply_retention

        db_prefix = key.rsplit("/", 1)[0] + "/"
        plan = apply_retention(spec.target, db_prefix, policy)
        if plan.deleted:
            joblog.add("info", f"retention removed {len(plan.deleted)} old backup(s)")
        for error in plan.errors:
            joblog.add("warn", f"retention: {error}")
    except Exception as exc:
        joblog.add("warn", f"retention failed (the backup itself is fine): {exc}")
        log.warning("retention failed: %s", exc)


def _schema_snapshot(
    take: Callable[[], Optional[Dict[str, Any]]], joblog: JobLog
) -> Optional[Dict[str, Any]]:
    """The schema at dump time, for the manifest, drift detection and verification.

    ``take`` asks the engine now, or waits for the one the dump plan took in
    the dump's own snapshot. A failure here is reported but does not fail the
    backup: the dump is the thing to protect, and a missing snapshot only
    weakens the checks.
    """
    try:
        return take()
    except AgentError as exc:
        if exc.code != "UNSUPPORTED":
            joblog.add("warn", f"schema snapshot failed (the backup continues): {exc}")
        return None


def _after_backup(
    spec: BackupSpec,
    reporter: Reporter,
    joblog: JobLog,
    job_id: str,
    label: str,
    details: Dict[str, Any],
    row_counts: Dict[str, int],
    snapshot: Optional[Dict[str, Any]],
) -> None:
    """Schema snapshot report and anomaly analysis; never fails a finished backup."""
    from backupagent.api.models import SchemaSnapshotRequest

    try:
        if snapshot is not None:
            tables = snapshot.get("tables", [])
            reporter.schema_snapshot(
                SchemaSnapshotRequest(
                    databaseId=spec.database_id,
                    snapshot=snapshot,
                    tableCount=len(tables),
                    columnCount=sum(len(t.get("columns", [])) for t in tables),
                )
            )
        if spec.history is None:
            return
        from backupagent.analysis import analyze_backup

        reports = analyze_backup(
            spec.history,
            spec.database_id,
            details["dumpSize"],
            details["compressedSize"],
            row_counts,
            snapshot,
            database_label=label,
        )
        for report in reports:
            joblog.add("warn", f"anomaly ({report.severity}): {report.title}")
            reporter.anomaly(report)
            if spec.alerts is not None:
                spec.alerts.notify_anomaly(report, database=label, job_id=job_id)
    except Exception as exc:
        log.warning("post-backup analysis failed (the backup is fine): %s", exc)
        joblog.add("warn", f"post-backup analysis failed: {exc}")


def _spool_path(spec: BackupSpec, workdir: Path) -> Optional[Path]:
    """Where to keep a local compressed copy, when verification will need one.

    Only for an encrypted backup that this host cannot decrypt (no
    ``verification.identityFile`` in the host settings, as the docs advise):
    verification then restores the spool and checks the stored object's
    SHA-256 separately. The copy lives in the job's private work dir and goes
    with it.
    """
    if spec.verification is None or not spec.verification.enabled or not spec.recipients:
        return None
    section = spec.settings_extra.get("verification") or {}
    if isinstance(section, dict) and section.get("identityFile"):
        return None
    return workdir / "verify-spool.zst"


def _verify(
    spec: BackupSpec,
    reporter: Reporter,
    joblog: JobLog,
    job_id: str,
    label: str,
    details: Dict[str, Any],
    snapshot: Optional[Dict[str, Any]],
    cancel: CancelToken,
    spool_path: Optional[Path],
) -> str:
    """Prove the stored object restores; report the result and any restore failure.

    The backup already completed: a failed verification is reported as such
    (and alerted), it does not turn the backup job into a failure.
    """
    from backupagent.analysis import restore_failure
    from backupagent.verify.run import verify_backup

    joblog.add("info", "verifying: restoring the stored backup into a throwaway container")
    outcome = verify_backup(
        spec.target,
        details["objectKey"],
        details["manifest"],
        image=spec.verification.image,
        checks=spec.verification.checks,
        schema_snapshot=snapshot,
        cancel=cancel,
        settings_extra=spec.settings_extra,
        job_id=job_id,
        spool_path=spool_path,
    )
    reporter.verification(job_id, outcome.report)
    failed = [c for c in outcome.report.checks if c.status == "failed"]
    summary = (
        f"verification {outcome.status} ({outcome.path_taken}, "
        f"{len(outcome.report.checks)} checks, {len(failed)} failed, restore "
        f"{outcome.report.restoreDurationMs} ms)"
    )
    joblog.add("info" if outcome.status == "passed" else "error", summary)
    if outcome.status == "error":  # the report has no error field: the job log says why
        joblog.add(
            "error",
            redact(
                f"verification could not run ({outcome.details.get('errorCode')}): "
                f"{outcome.details.get('errorMessage')}"
            ),
        )
    for check in failed:
        joblog.add(
            "error",
            f"check {check.checkType} {check.checkName}: expected "
            f"{check.expectedValue}, got {check.actualValue}",
        )
    if outcome.status != "passed":
        reason = outcome.details.get("errorMessage") or "; ".join(
            f"{c.checkName}: expected {c.expectedValue}, got {c.actualValue}" for c in failed[:5]
        )
        if spec.alerts is not None:
            spec.alerts.notify(
                "verification_failed",
                f"Verification of {label} {outcome.status}",
                str(reason),
                "critical",
                database=label,
                job_id=job_id,
            )
        if outcome.anomaly_due:
            anomaly = restore_failure(
                str(reason), database_label=label, backup=details["uploadPath"]
            )
            reporter.anomaly(anomaly)
            if spec.alerts is not None:
                spec.alerts.notify_anomaly(anomaly, database=label, job_id=job_id)
    return outcome.status
