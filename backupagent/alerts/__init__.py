"""Alert channels: tell people when a backup failed, did not verify, or looks wrong.

The job layer holds one :class:`AlertDispatcher` and calls ``notify``; the
channel modules (webhook, Slack, email) only know how to deliver one event.
"""

from __future__ import annotations

from backupagent.alerts.dispatch import AlertDispatcher
from backupagent.alerts.event import AlertEvent, AlertSendError, safe_url

__all__ = ["AlertDispatcher", "AlertEvent", "AlertSendError", "safe_url"]
