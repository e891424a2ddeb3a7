"""The reporter interface the job layer talks to.

Jobs never call the HTTP client: they report through this, so a standalone
agent (local records) and a registered one (control plane) run the same job
code, and a reporting failure can never fail a backup.
"""

from __future__ import annotations

import threading
from typing import List, Optional, Protocol

from backupagent.api.models import (
    MAX_LOG_BATCH,
    AnomalyReport,
    JobStartRequest,
    JobStatusUpdate,
    LogEntry,
    SchemaSnapshotRequest,
    VerificationReport,
)
from backupagent.logs import redact, utc_timestamp


class Reporter(Protocol):
    def start_job(self, req: JobStartRequest) -> str: ...
    def job_status(self, job_id: str, update: JobStatusUpdate) -> None: ...
    def job_logs(self, job_id: str, entries: List[LogEntry]) -> None: ...
    def verification(self, job_id: str, report: VerificationReport) -> None: ...
    def schema_snapshot(self, req: SchemaSnapshotRequest) -> None: ...
    def anomaly(self, req: AnomalyReport) -> None: ...


_LEVELS = {"debug": "info", "info": "info", "warning": "warn", "warn": "warn", "error": "error"}


class JobLog:
    """A job's log lines, buffered and shipped in batches of at most 100.

    ``flush`` happens when the buffer fills, when ``ship_interval`` seconds
    passed since the last shipment (so logs arrive while a long job runs),
    and at the end. Every message is redacted before it is kept.
    """

    def __init__(self, reporter: Reporter, job_id: str, ship_interval: float = 5.0) -> None:
        self.reporter = reporter
        self.job_id = job_id
        self.ship_interval = ship_interval
        self._buf: List[LogEntry] = []
        self._lock = threading.Lock()
        self._last_ship = 0.0

    def add(self, level: str, message: str, now: Optional[float] = None) -> None:
        import time

        entry = LogEntry(
            level=_LEVELS.get(level, "info"),
            message=redact(message)[:4000],
            timestamp=utc_timestamp(),
        )
        now = time.monotonic() if now is None else now
        with self._lock:
            self._buf.append(entry)
            due = len(self._buf) >= MAX_LOG_BATCH or now - self._last_ship >= self.ship_interval
        if due:
            self.flush(now)

    def flush(self, now: Optional[float] = None) -> None:
        import time

        with self._lock:
            batch, self._buf = self._buf, []
            self._last_ship = time.monotonic() if now is None else now
        if batch:
            self.reporter.job_logs(self.job_id, batch)
