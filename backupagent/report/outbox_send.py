"""One queued outbox item (or a run of log items) turned into one control-plane call.

Pure mapping, no queue bookkeeping: the delivery loop in outbox.py decides
what to send and when to acknowledge it; this module only knows which
endpoint each kind of item goes to and how its stored body becomes a request.
"""

from __future__ import annotations

import contextlib
import copy
import re
from typing import Any, List, Optional

from backupagent.api.errors import PermanentApiError
from backupagent.api.models import (
    AnomalyReport,
    JobStartRequest,
    JobStatusUpdate,
    LogEntry,
    SchemaSnapshotRequest,
    VerificationCheck,
    VerificationReport,
)
from backupagent.api.retry import NO_RETRY
from backupagent.report.outbox_queue import LOG_KINDS, QueuedItem

DROPPED_NOTICE = "{n} log lines dropped while the control plane was unreachable"
_SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")


def send(api: Any, item: QueuedItem, batch: List[QueuedItem], server_id: Optional[str]) -> str:
    """Send ``item`` (``batch`` is the log run it heads, else ``[item]``).

    Returns the server's job id for a start, "" otherwise. Raises the
    client's ApiError subclasses, which the caller classifies.
    """
    if item.kind == "start":
        new_id = api.start_job(JobStartRequest(**item.body))
        if not _SAFE_SEGMENT.match(new_id) or new_id in (".", ".."):
            raise PermanentApiError(f"the server's job id {new_id!r} is not a safe path segment")
        return str(new_id)
    assert server_id is not None or item.job is None
    if item.kind in LOG_KINDS:
        api.upload_logs(server_id, [log_entry(i) for i in batch])
    elif item.kind == "status":
        api.update_job_status(server_id, JobStatusUpdate(**item.body))
    elif item.kind == "verification":
        body = dict(item.body)
        checks = [VerificationCheck(**c) for c in body.pop("checks", [])]
        api.submit_verification(server_id, VerificationReport(**body, checks=checks))
    elif item.kind == "snapshot":
        api.submit_schema_snapshot(SchemaSnapshotRequest(**item.body))
    elif item.kind == "anomaly":
        api.report_anomaly(AnomalyReport(**item.body))
    else:
        raise PermanentApiError(f"unknown outbox item kind {item.kind!r}")
    return ""


def single_try(api: Any) -> Any:
    """The same client, one try per call: the outbox owns the (unbounded) retries."""
    clone = copy.copy(api)
    with contextlib.suppress(AttributeError):
        clone.retry = NO_RETRY
    return clone


def log_entry(item: QueuedItem) -> LogEntry:
    if item.kind == "lognote":
        from backupagent.logs import utc_timestamp

        return LogEntry(
            level="warn",
            message=DROPPED_NOTICE.format(n=int(item.body.get("count", 0))),
            timestamp=item.body.get("timestamp") or utc_timestamp(),
        )
    return LogEntry(**item.body)


def describe(item: QueuedItem, batch: int) -> str:
    if item.kind == "status":
        return f"status {item.body.get('status')}"
    if item.kind in LOG_KINDS:
        return f"{batch} log line(s)"
    return {"start": "job start", "snapshot": "schema snapshot"}.get(item.kind, item.kind)
