"""The generic webhook channel: one JSON document per alert.

The document is flat and self-describing so any receiver (a chat bridge, an
incident tool, a script) can route on ``event`` and ``severity`` without
knowing the agent. See docs/alerts.md for the schema.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

from backupagent import __version__
from backupagent.alerts.event import AlertEvent, AlertSendError
from backupagent.alerts.httppost import post_json
from backupagent.config.model import AlertChannel


def webhook_payload(ev: AlertEvent) -> Dict[str, Any]:
    return {
        "event": ev.event,
        "title": ev.title,
        "description": ev.description,
        "severity": ev.severity,
        "database": ev.database,
        "jobId": ev.job_id,
        "timestamp": ev.timestamp,
        "agent": {"hostname": ev.hostname, "version": __version__},
        "details": dict(ev.details),
    }


def send_webhook(channel: AlertChannel, ev: AlertEvent, *, timeout: Tuple[float, float]) -> None:
    if not channel.url:
        raise AlertSendError(
            f"alert channel {channel.id!r} (webhook) has no url: set alertChannels[].url",
            transient=False,
        )
    post_json(channel.url, webhook_payload(ev), timeout=timeout, what=f"webhook {channel.id!r}")
