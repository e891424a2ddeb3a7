"""Crash recovery: at start-up, finish what an interrupted agent left behind.

After a ``kill -9`` (or an OOM kill, or a power cut) mid-backup, nothing ran
the job's ``finally``: the control plane still shows the job running, and the
job's work dir, partial object, open multipart upload and verification
container are still there. ``recover`` runs once at daemon start, before any
backup, and for every job that was started but never reported a terminal
status, and whose process is gone:

1. reports it ``failed`` with errorCode ``INTERRUPTED`` (through the reporter,
   so with the outbox it is queued and delivered like any status);
2. removes its spool work dir and temp files;
3. removes its partial files in a local target, and an object that was
   committed without its manifest (an orphan nobody can trust);
4. aborts its incomplete multipart uploads in S3;
5. removes leftover verification containers (only if the Docker SDK is
   importable and the engine answers).

Jobs come from two sources: the job journal (``jobs.journal``, precise: work
dir, object key) and the outbox's open jobs (a start queued, no terminal
status; object keys are then found by the job id they contain). A job whose
owning process still runs (a manual ``backupagent backup`` next to the
daemon) is left alone, and so is everything that might be its.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import logging
import os
import re
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Set

from backupagent.api.models import JobStatusUpdate, LogEntry
from backupagent.jobs.journal import JobJournal, JournalEntry
from backupagent.logs import utc_timestamp
from backupagent.report.outbox import owner_alive

log = logging.getLogger(__name__)

INTERRUPTED = "INTERRUPTED"
INTERRUPTED_MESSAGE = (
    "the agent stopped mid-backup (the process was killed, crashed or the host went down) "
    "before the job finished; its partial files and uploads were removed at the next start"
)
PARTIAL_MARK = ".partial-"  # targets.local's temp-file marker
MANIFEST_SUFFIX = ".manifest.json"


@dataclass
class RecoveryReport:
    interrupted: List[str] = field(default_factory=list)  # job ids reported INTERRUPTED
    removed_paths: List[str] = field(default_factory=list)  # spool dirs and temp files
    partials_removed: int = 0  # local-target partial files
    orphans_removed: List[str] = field(default_factory=list)  # objects without a manifest
    uploads_aborted: int = 0  # S3 multipart uploads
    containers_removed: List[str] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)  # what could not be cleaned, and why

    @property
    def anything(self) -> bool:
        return bool(
            self.interrupted
            or self.removed_paths
            or self.partials_removed
            or self.orphans_removed
            or self.uploads_aborted
            or self.containers_removed
        )


def recover(
    settings: Any, reporter: Any, config: Any = None, *, docker: bool = True
) -> RecoveryReport:
    """Report and clean up interrupted jobs. Never raises: start-up must go on.

    ``settings``: host Settings (state dir, hostname); ``reporter``: the
    daemon's Reporter; ``config``: the AgentConfig in force (the cached one is
    fine), used to open the interrupted jobs' targets; None skips targets.
    """
    report = RecoveryReport()
    try:
        _recover(settings, reporter, config, docker, report)
    except Exception as exc:  # recovery must never stop the daemon from starting
        log.exception("crash recovery failed")
        report.problems.append(f"recovery failed: {exc}")
    if report.anything:
        log.warning(
            "recovered from an interrupted run: %d job(s) reported %s, %d temp path(s), "
            "%d partial file(s), %d orphan object(s), %d upload(s), %d container(s) removed",
            len(report.interrupted),
            INTERRUPTED,
            len(report.removed_paths),
            report.partials_removed,
            len(report.orphans_removed),
            report.uploads_aborted,
            len(report.containers_removed),
        )
    for problem in report.problems:
        log.warning("crash recovery: %s", problem)
    return report


def _recover(
    settings: Any, reporter: Any, config: Any, docker: bool, report: RecoveryReport
) -> None:
    state_dir = Path(settings.state_dir)
    journal = JobJournal(state_dir)
    candidates: Dict[str, JournalEntry] = {}
    live: Set[str] = set()
    for entry in journal.entries():
        if entry.alive:
            live.add(entry.job_id)
        else:
            candidates.setdefault(entry.job_id, entry)
    open_jobs = getattr(reporter, "open_jobs", None)
    for job in open_jobs() if open_jobs is not None else []:
        if job.job_id in candidates or job.job_id in live:
            continue
        if owner_alive(job.owner):
            live.add(job.job_id)
            continue
        candidates[job.job_id] = JournalEntry(
            job_id=job.job_id,
            owner=job.owner or "",
            started_at=job.created,
            schedule_id=job.request.get("scheduleId"),
            database_id=job.request.get("databaseId"),
            target_id=job.request.get("targetId"),
        )
    others_running = bool(live)
    spool = state_dir / "spool"
    for entry in candidates.values():
        _recover_job(entry, settings, reporter, config, spool, others_running, report)
        journal.end(entry.job_id)
    if not others_running:
        _sweep_spool(spool, report)
        _sweep_local_targets(settings, config, report)
    if docker and candidates:
        # Without an interrupted job, the daemon's own start-up sweep is enough.
        _remove_containers(list(candidates), others_running, report)


def _recover_job(
    entry: JournalEntry,
    settings: Any,
    reporter: Any,
    config: Any,
    spool: Path,
    others_running: bool,
    report: RecoveryReport,
) -> None:
    job_id = entry.job_id
    has_terminal = getattr(reporter, "has_terminal", None)
    committed = _clean_target(entry, settings, config, others_running, report)
    for path in _job_paths(entry, spool):
        _remove(path, report)
    if has_terminal is not None and has_terminal(job_id):
        log.info("job %s had reported its end before the stop; cleaned up only", job_id)
        return
    message = INTERRUPTED_MESSAGE
    if committed:
        message += f"; the backup had been stored whole before the stop and is kept: {committed}"
    duration_ms = max(0, int((time.time() - entry.started_at) * 1000)) if entry.started_at else None
    try:
        reporter.job_logs(
            job_id, [LogEntry(level="error", message=message, timestamp=utc_timestamp())]
        )
        reporter.job_status(
            job_id,
            JobStatusUpdate(
                status="failed",
                errorCode=INTERRUPTED,
                errorMessage=message,
                durationMs=duration_ms,
            ),
        )
    except Exception as exc:  # a reporter must not raise; if one does, go on cleaning
        report.problems.append(f"could not report job {job_id} as {INTERRUPTED}: {exc}")
        return
    report.interrupted.append(job_id)
    log.warning(
        "job %s (schedule %s) was interrupted mid-backup: reported %s",
        job_id,
        entry.schedule_id,
        INTERRUPTED,
        extra={"jobId": job_id, "errorCode": INTERRUPTED},
    )


# -- files in the state dir ------------------------------------------------------


def _job_paths(entry: JournalEntry, spool: Path) -> List[Path]:
    """The job's work dir(s) and temp files; only paths inside the spool are trusted."""
    paths: List[Path] = []
    for raw in [entry.workdir, *entry.temp_paths]:
        if raw and _inside(Path(raw), spool):
            paths.append(Path(raw))
    if spool.is_dir():
        # run_backup names its work dir job-<jobId[:36]>-<random>
        paths.extend(spool.glob(f"job-{_glob_escape(entry.job_id[:36])}-*"))
    return paths


def _sweep_spool(spool: Path, report: RecoveryReport) -> None:
    """No job runs: anything left in the spool belongs to a run that did not finish."""
    if not spool.is_dir():
        return
    for path in spool.iterdir():
        _remove(path, report)


def _remove(path: Path, report: RecoveryReport) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            return
    except OSError as exc:
        report.problems.append(f"could not remove {path}: {exc.strerror or exc}")
        return
    report.removed_paths.append(str(path))


def _inside(path: Path, root: Path) -> bool:
    try:
        return os.path.commonpath([os.path.realpath(path), os.path.realpath(root)]) == (
            os.path.realpath(root)
        ) and os.path.realpath(path) != os.path.realpath(root)
    except ValueError:
        return False


def _glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


# -- the target ------------------------------------------------------------------


def _clean_target(
    entry: JournalEntry, settings: Any, config: Any, others_running: bool, report: RecoveryReport
) -> Optional[str]:
    """Remove what the job left in its target; returns the URL of a backup that was
    committed whole (object and manifest) before the stop, which is kept."""
    if config is None or not entry.target_id:
        return None
    try:
        from backupagent.targets.registry import target_from_config

        target = target_from_config(config.target(entry.target_id))
    except Exception as exc:
        report.problems.append(
            f"job {entry.job_id}: cannot open target {entry.target_id!r} to clean it: {exc}"
        )
        return None
    committed: Optional[str] = None
    try:
        if entry.object_key:
            committed = _orphan_object(target, entry.object_key, report)
        if hasattr(target, "cleanup_partials"):
            _local_partials(target, entry, report)
        if hasattr(target, "abort_incomplete_uploads"):
            _s3_uploads(target, entry, settings, config, others_running, report)
    except Exception as exc:
        report.problems.append(f"job {entry.job_id}: cleaning target {entry.target_id!r}: {exc}")
    return committed


def _sweep_local_targets(settings: Any, config: Any, report: RecoveryReport) -> None:
    """No job runs: every partial file below this host's directory of a local
    target is left over from a run that did not finish (whatever recorded it or
    not). Other hosts' directories are never touched: a target directory may be
    shared (NFS), and their uploads may be running."""
    if config is None:
        return
    from backupagent.targets.keys import sanitize_segment
    from backupagent.targets.local import LocalTarget

    host = sanitize_segment(getattr(settings, "hostname", None) or socket.gethostname())
    for target in getattr(config, "targets", ()):
        local = getattr(target, "local", None)
        if target.type != "local" or local is None or not local.path:
            continue
        host_root = Path(os.path.realpath(local.path)) / host
        if not host_root.is_dir() or host_root.is_symlink():
            continue
        try:
            report.partials_removed += int(LocalTarget(host_root).cleanup_partials(0))
        except Exception as exc:
            report.problems.append(f"target {target.id!r}: removing partial files: {exc}")


def _orphan_object(target: Any, key: str, report: RecoveryReport) -> Optional[str]:
    """An object committed without its manifest is deleted (the job does the same
    when the manifest fails); with its manifest it is a whole backup and kept."""
    if not target.exists(key):
        return None
    if target.exists(key + MANIFEST_SUFFIX):
        return str(target.url_for(key))
    target.delete(key)
    report.orphans_removed.append(str(target.url_for(key)))
    return None


def _local_partials(target: Any, entry: JournalEntry, report: RecoveryReport) -> None:
    root = Path(target.root)
    if not root.is_dir():
        return
    token = _key_job_token(entry.job_id)
    names: List[str] = []
    if entry.object_key:
        base = entry.object_key.rsplit("/", 1)[-1]
        names = [base[:180], (base + MANIFEST_SUFFIX)[:180]]
    for dirpath, _dirs, files in os.walk(root, followlinks=False):
        for fname in files:
            if not (fname.startswith(".") and PARTIAL_MARK in fname):
                continue
            stem = fname[1:].split(PARTIAL_MARK, 1)[0]
            if stem in names or (token is not None and token in stem):
                try:
                    os.unlink(os.path.join(dirpath, fname))
                    report.partials_removed += 1
                except FileNotFoundError:
                    continue


def _s3_uploads(
    target: Any,
    entry: JournalEntry,
    settings: Any,
    config: Any,
    others_running: bool,
    report: RecoveryReport,
) -> None:
    if entry.object_key:
        report.uploads_aborted += int(target.abort_incomplete_uploads(prefix=entry.object_key))
        return
    # No key recorded: the key holds the job id after the database's directory,
    # which is only a prefix; abort that directory's uploads when no job runs.
    prefix = _database_prefix(entry, settings, config)
    if prefix is None:
        report.problems.append(
            f"job {entry.job_id}: its schedule is no longer configured, so its incomplete "
            "uploads cannot be located; a bucket lifecycle rule "
            "(AbortIncompleteMultipartUpload) will remove them"
        )
        return
    if others_running:
        # Another job may be uploading to the same directory: only uploads a day old.
        report.uploads_aborted += int(
            target.abort_incomplete_uploads(prefix=prefix, older_than=dt.timedelta(days=1))
        )
        return
    report.uploads_aborted += int(target.abort_incomplete_uploads(prefix=prefix))


def _database_prefix(entry: JournalEntry, settings: Any, config: Any) -> Optional[str]:
    from backupagent.targets.keys import database_prefix

    try:
        schedule = config.schedule(entry.schedule_id) if entry.schedule_id else None
    except KeyError:
        schedule = None
    if schedule is None:
        return None
    db = schedule.database
    host = getattr(settings, "hostname", None) or socket.gethostname()
    return database_prefix("", host, db.db_type, db.database_name or "default") + "/"


def _key_job_token(job_id: str) -> Optional[str]:
    """The job id as object keys carry it; None when keys would carry a mangled
    form (never for the UUIDs the reporters hand out)."""
    return job_id if re.fullmatch(r"[A-Za-z0-9_-]{8,64}", job_id) else None


# -- verification containers ------------------------------------------------------------


def _remove_containers(job_ids: List[str], others_running: bool, report: RecoveryReport) -> None:
    """Leftover verification containers; Docker is touched only when it is there."""
    if importlib.util.find_spec("docker") is None:
        return
    try:
        from backupagent.verify.container import JOB_LABEL, LABEL, cleanup_leftovers, docker_client

        client = docker_client(timeout=10)
    except Exception as exc:
        log.info("Docker not reachable, not looking for verification containers: %s", exc)
        return
    try:
        if not others_running:
            report.containers_removed.extend(cleanup_leftovers(client))
            return
        for job_id in job_ids:
            for c in client.containers.list(
                all=True, filters={"label": [f"{LABEL}=true", f"{JOB_LABEL}={job_id}"]}
            ):
                c.remove(force=True, v=True)
                report.containers_removed.append(c.id)
    except Exception as exc:
        report.problems.append(f"removing leftover verification containers: {exc}")
    finally:
        client.close()
