"""One alert, as every channel sees it, and the errors a channel send raises.

Built once per ``notify`` so webhook, Slack and email describe the same event
with the same timestamp, and so a sender never touches job objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional
from urllib.parse import urlsplit

from backupagent.errors import AgentError

EVENT_LABELS = {
    "job_failed": "Backup job failed",
    "verification_failed": "Backup verification failed",
    "anomaly": "Backup anomaly",
}


@dataclass(frozen=True)
class AlertEvent:
    """``details`` holds any other context (errorCode, anomalyType, uploadPath...)."""

    event: str
    title: str
    description: str
    severity: str
    hostname: str
    timestamp: str
    database: Optional[str] = None
    job_id: Optional[str] = None
    details: Dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return EVENT_LABELS.get(self.event, self.event)


class AlertSendError(AgentError):
    """A channel could not deliver. ``transient`` says whether trying again may help.

    Messages name the channel and, for URLs, only scheme and host: webhook
    URLs carry their token in the path.
    """

    code = "ALERT_FAILED"

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


def safe_url(url: Optional[str]) -> str:
    """``https://hooks.slack.com/***``: enough to know where, nothing to reuse."""
    if not url:
        return "(no url)"
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(unparseable url)"
    return f"{parts.scheme}://{host}{port}/***"


def scrub_url(text: str, url: Optional[str]) -> str:
    """Remove ``url`` and its path/query (how HTTP libraries quote it) from ``text``."""
    if not url:
        return text
    text = text.replace(url, safe_url(url))
    try:
        parts = urlsplit(url)
    except ValueError:
        return text
    tail = parts.path + (f"?{parts.query}" if parts.query else "")
    for secret in (tail, parts.path, parts.query, parts.password or ""):
        if len(secret) > 3:  # never scrub "/" or other harmless fragments
            text = text.replace(secret, "/***")
    return text
