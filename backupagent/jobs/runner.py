"""What the daemon runs when a schedule fires: resolve the schedule into a
BackupSpec (host credentials, target, recipients) and run the backup job.

Resolution problems (missing credentials, a target that cannot be opened) are
reported as a failed job too, so the control plane hears about every run.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Any, List

from backupagent.api.models import JobStartRequest, JobStatusUpdate
from backupagent.errors import AgentError
from backupagent.jobs.result import CancelToken, JobResult, JobRunner
from backupagent.logs import redact
from backupagent.report.base import Reporter
from backupagent.settings import Settings

log = logging.getLogger(__name__)


def preload_job_modules(schedule: Any, config: Any) -> None:
    """Load, one job at a time, what this job's threads would import lazily
    (``backupagent.preload`` says why): two schedules firing together must
    not race each other's first imports."""
    from backupagent.engines.registry import module_for
    from backupagent.preload import preload

    try:
        target = config.target(schedule.target_id)
    except KeyError:  # resolving the schedule reports it
        target = None
    names: List[str] = ["backupagent.jobs.backup", "backupagent.pipeline.run"]
    engine = module_for(schedule.database.db_type)
    if engine:  # an unsupported one is reported by resolving the schedule
        names.append(engine)
    if target is not None and target.encryption.recipients:
        names.append("backupagent.crypto.age")
    if target is not None and target.type == "s3":
        names += ["backupagent.targets.s3", "botocore.session"]
    if schedule.verification.enabled:
        names += ["backupagent.verify.run", "docker"]
    preload(names)


def make_reporter(settings: Settings, api: Any, reload_api: Any = None) -> Reporter:
    if api is not None:
        from backupagent.report.outbox import OutboxReporter

        outbox = OutboxReporter(
            settings.state_dir, api, reload_api=reload_api, key_file=settings.api_key_file
        )
        outbox.start()
        return outbox
    from backupagent.report.local import LocalReporter

    return LocalReporter(settings.state_dir)


class ScheduleRunner:
    """The daemon's JobRunner: one reporter, history and alert dispatcher per process."""

    def __init__(self, settings: Settings, reporter: Reporter) -> None:
        from backupagent.alerts import AlertDispatcher
        from backupagent.analysis import History

        self.settings = settings
        self.reporter = reporter
        self.history = History.in_state_dir(settings.state_dir)
        self.alerts = AlertDispatcher([], settings.hostname or socket.gethostname())

    def __call__(self, schedule: Any, config: Any, cancel: CancelToken) -> JobResult:
        from backupagent.jobs.backup import BackupSpec, run_backup

        self.alerts.update_channels(config.alert_channels)
        started = time.monotonic()
        preload_job_modules(schedule, config)
        try:
            spec = BackupSpec(
                **resolve_schedule(self.settings, schedule, config),
                history=self.history,
                alerts=self.alerts,
            )
        except AgentError as exc:
            result = report_unstartable(self.reporter, schedule, exc, started)
            self.alerts.notify(
                "job_failed",
                f"Backup schedule {schedule.id} could not start",
                str(result.error_message),
                "critical",
                job_id=result.job_id,
                errorCode=result.error_code,
            )
            return result
        return run_backup(spec, self.reporter, cancel)

    def close(self, timeout: float = 10.0) -> None:
        """Deliver queued alerts and reports before the process exits (what the
        outbox cannot deliver now stays queued for the next start)."""
        self.alerts.close(timeout=timeout)
        close_reporter(self.reporter, timeout)


def close_reporter(reporter: Any, timeout: float = 10.0) -> None:
    """Give the outbox a last chance to deliver, then stop it (what stays queued
    is delivered by the next start)."""
    flush = getattr(reporter, "flush", None)
    if flush is not None:
        flush(timeout=timeout)
        reporter.close()


def build_runner(
    settings: Settings, *, api: Any = None, standalone: bool = False, reload_api: Any = None
) -> JobRunner:
    return ScheduleRunner(
        settings, make_reporter(settings, None if standalone else api, reload_api)
    )


def resolve_schedule(settings: Settings, schedule: Any, config: Any) -> dict:
    from backupagent.engines.credentials import resolve_connection
    from backupagent.jobs.journal import JobJournal
    from backupagent.targets.registry import target_from_config

    target_cfg = config.target(schedule.target_id)
    spool = settings.state_dir / "spool"
    spool.mkdir(parents=True, exist_ok=True, mode=0o700)
    return {
        "conn": resolve_connection(schedule.database, settings.credentials_file),
        "target": target_from_config(target_cfg),
        "database_id": schedule.database_id,
        "target_id": schedule.target_id,
        "hostname": settings.hostname or socket.gethostname(),
        "recipients": tuple(target_cfg.encryption.recipients),
        "compression_level": schedule.compression.level,
        "schedule_id": schedule.id,
        "retention": schedule.retention,
        "spool_dir": spool,
        "verification": schedule.verification,
        "settings_extra": settings.extra,
        "journal": JobJournal(settings.state_dir),
        "timeout": settings.job_timeout,
    }


def report_unstartable(
    reporter: Reporter, schedule: Any, exc: AgentError, started: float
) -> JobResult:
    job_id = reporter.start_job(
        JobStartRequest(
            databaseId=schedule.database_id, targetId=schedule.target_id, scheduleId=schedule.id
        )
    )
    message = redact(str(exc))
    reporter.job_status(
        job_id,
        JobStatusUpdate(
            status="failed",
            errorCode=exc.code,
            errorMessage=message,
            durationMs=int((time.monotonic() - started) * 1000),
        ),
    )
    log.error("schedule %s could not start: %s", schedule.id, message, extra={"jobId": job_id})
    return JobResult(status="failed", job_id=job_id, error_code=exc.code, error_message=message)
