"""Reporting to the control plane.

Failures are logged and swallowed: the backup itself is what matters, and a
control plane outage must not turn a good backup into a failed one. (Until the
durable outbox lands, what cannot be delivered after the client's retries is
lost; docs/protocol.md says so.)
"""

from __future__ import annotations

import logging
import uuid
from typing import Callable, List, TypeVar

from backupagent.api.client import ApiClient
from backupagent.api.errors import ApiError
from backupagent.api.models import (
    AnomalyReport,
    JobStartRequest,
    JobStatusUpdate,
    LogEntry,
    SchemaSnapshotRequest,
    VerificationReport,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
LOCAL_PREFIX = "local-"


class ApiReporter:
    def __init__(self, api: ApiClient) -> None:
        self.api = api

    def _try(self, what: str, call: Callable[[], T]) -> T | None:
        try:
            return call()
        except ApiError as exc:
            log.warning("could not report %s to the control plane: %s", what, exc)
            return None

    def start_job(self, req: JobStartRequest) -> str:
        job_id = self._try("job start", lambda: self.api.start_job(req))
        if job_id is None:
            # The backup still runs; it just cannot be reported under a server id.
            job_id = LOCAL_PREFIX + str(uuid.uuid4())
            log.warning("running job as %s without a control-plane job id", job_id)
        return job_id

    def job_status(self, job_id: str, update: JobStatusUpdate) -> None:
        if not job_id.startswith(LOCAL_PREFIX):
            self._try(f"status {update.status}", lambda: self.api.update_job_status(job_id, update))

    def job_logs(self, job_id: str, entries: List[LogEntry]) -> None:
        if not job_id.startswith(LOCAL_PREFIX):
            self._try("job logs", lambda: self.api.upload_logs(job_id, entries))

    def verification(self, job_id: str, report: VerificationReport) -> None:
        if not job_id.startswith(LOCAL_PREFIX):
            self._try("verification", lambda: self.api.submit_verification(job_id, report))

    def schema_snapshot(self, req: SchemaSnapshotRequest) -> None:
        self._try("schema snapshot", lambda: self.api.submit_schema_snapshot(req))

    def anomaly(self, req: AnomalyReport) -> None:
        self._try("anomaly", lambda: self.api.report_anomaly(req))
