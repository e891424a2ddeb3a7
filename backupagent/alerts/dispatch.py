"""Fan an alert out to the configured channels, in the background, with retries.

An alert exists to tell someone a backup went wrong; it must never be the
reason one does. So ``notify`` only queues (it never blocks on a network and
never raises), worker threads deliver with short timeouts and a few retries,
and every failure is logged with webhook tokens scrubbed. The queue is
bounded: a receiver that hangs cannot make the daemon grow without limit.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable, Dict, List, Sequence, Tuple

from backupagent.alerts.email import send_email
from backupagent.alerts.event import AlertEvent, AlertSendError, scrub_url
from backupagent.alerts.slack import send_slack
from backupagent.alerts.webhook import send_webhook
from backupagent.api.models import SEVERITIES, AnomalyReport
from backupagent.config.model import ALERT_EVENTS, AlertChannel
from backupagent.logs import redact, utc_timestamp

log = logging.getLogger(__name__)

Sender = Callable[[AlertChannel, AlertEvent], None]
_STOP = object()


class AlertDispatcher:
    """Delivers alerts to every channel subscribed to their event.

    ``attempts`` tries per channel, ``backoff`` seconds before the second,
    doubling after; ``timeout`` bounds each HTTP/SMTP exchange. With the
    defaults a dead receiver costs a worker about 3 x 10 s + 3 s, never the
    backup.
    """

    def __init__(
        self,
        channels: Sequence[AlertChannel],
        hostname: str,
        *,
        attempts: int = 3,
        backoff: float = 1.0,
        timeout: float = 10.0,
        workers: int = 2,
        max_pending: int = 200,
    ) -> None:
        self.hostname = hostname
        self.attempts = max(1, attempts)
        self.backoff = max(0.0, backoff)
        self.timeout = timeout
        self._channels: Tuple[AlertChannel, ...] = tuple(channels)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_pending)
        self._lock = threading.Lock()
        self._closed = False
        self._pending = 0
        self._idle = threading.Condition(self._lock)
        self._stats: Dict[str, int] = {"sent": 0, "failed": 0, "dropped": 0}
        self._senders: Dict[str, Sender] = {
            "webhook": lambda c, e: send_webhook(c, e, timeout=(min(5.0, timeout), timeout)),
            "slack": lambda c, e: send_slack(c, e, timeout=(min(5.0, timeout), timeout)),
            "email": lambda c, e: send_email(c, e, timeout=timeout),
        }
        self._threads: List[threading.Thread] = []
        for i in range(max(1, workers)):
            t = threading.Thread(target=self._work, name=f"alerts-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    # -- public -------------------------------------------------------------

    def update_channels(self, channels: Sequence[AlertChannel]) -> None:
        """A new config's channels apply to alerts notified from now on."""
        with self._lock:
            self._channels = tuple(channels)

    @property
    def stats(self) -> Dict[str, int]:
        with self._lock:
            return dict(self._stats)

    def notify(
        self, event: str, title: str, description: str, severity: str, **context: Any
    ) -> int:
        """Queue an alert for every channel wanting ``event``; returns how many were queued.

        ``context``: ``database`` and ``job_id`` (or ``jobId``) are first-class;
        anything else travels in ``details``. Never raises.
        """
        try:
            return self._notify(event, title, description, severity, context)
        except Exception:  # an alert bug must not surface in the job that raised the alert
            log.exception("could not queue %s alert", event)
            return 0

    def notify_anomaly(self, report: AnomalyReport, **context: Any) -> int:
        context.setdefault("anomalyType", report.type)
        return self.notify("anomaly", report.title, report.description, report.severity, **context)

    def flush(self, timeout: float = 60.0) -> bool:
        """Wait until every queued alert was delivered or given up; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self, timeout: float = 30.0) -> bool:
        """Stop accepting alerts, deliver what is queued (up to ``timeout``), stop workers."""
        with self._lock:
            if self._closed:
                return True
            self._closed = True
        drained = self.flush(timeout)
        for _ in self._threads:
            try:
                self._queue.put_nowait(_STOP)
            except queue.Full:  # workers are stuck on a receiver; they are daemons
                break
        return drained

    # -- internals -------------------------------------------------------------

    def _notify(
        self, event: str, title: str, description: str, severity: str, context: Dict[str, Any]
    ) -> int:
        if event not in ALERT_EVENTS:
            log.error(
                "not sending alert with unknown event %r (expected one of %s)",
                event,
                ", ".join(ALERT_EVENTS),
            )
            return 0
        if severity not in SEVERITIES:
            severity = "critical" if event != "anomaly" else "warning"
        database = context.pop("database", None)
        job_id = context.pop("job_id", None) or context.pop("jobId", None)
        ev = AlertEvent(
            event=event,
            title=redact(str(title))[:500],
            description=redact(str(description))[:8000],
            severity=severity,
            hostname=self.hostname,
            timestamp=utc_timestamp(),
            database=None if database is None else str(database),
            job_id=None if job_id is None else str(job_id),
            details={str(k): redact(str(v))[:1000] for k, v in context.items() if v is not None},
        )
        with self._lock:
            if self._closed:
                log.warning("alert dispatcher is closed; %s alert %r not sent", event, ev.title)
                return 0
            channels = [c for c in self._channels if c.wants(event)]
        queued = 0
        for channel in channels:
            with self._lock:
                self._pending += 1
            try:
                self._queue.put_nowait((channel, ev))
                queued += 1
            except queue.Full:
                self._done(dropped=True)
                log.error(
                    "alert queue full: %s alert %r for channel %r dropped",
                    event,
                    ev.title,
                    channel.id,
                )
        return queued

    def _done(self, *, sent: bool = False, dropped: bool = False) -> None:
        with self._idle:
            self._pending -= 1
            key = "sent" if sent else "dropped" if dropped else "failed"
            self._stats[key] += 1
            if not self._pending:
                self._idle.notify_all()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            channel, ev = item
            ok = False
            try:
                ok = self._deliver(channel, ev)
            except Exception:  # never let a worker die: it would silently stop all alerts
                log.exception("alert channel %r crashed while sending", channel.id)
            finally:
                self._done(sent=ok)

    def _deliver(self, channel: AlertChannel, ev: AlertEvent) -> bool:
        sender = self._senders.get(channel.type)
        if sender is None:
            log.error("alert channel %r has unknown type %r", channel.id, channel.type)
            return False
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            try:
                sender(channel, ev)
            except AlertSendError as exc:
                message = _clean(str(exc), channel)
                final = not exc.transient or attempt == self.attempts
                if final:
                    log.error(
                        "alert %s to channel %r (%s) failed after %d attempt%s: %s",
                        ev.event,
                        channel.id,
                        channel.type,
                        attempt,
                        "" if attempt == 1 else "s",
                        message,
                    )
                    return False
                log.warning(
                    "alert %s to channel %r (%s) attempt %d/%d failed, retrying in %.1fs: %s",
                    ev.event,
                    channel.id,
                    channel.type,
                    attempt,
                    self.attempts,
                    delay,
                    message,
                )
                time.sleep(delay)
                delay *= 2
                continue
            log.info(
                "alert %s %r sent to channel %r (%s)", ev.event, ev.title, channel.id, channel.type
            )
            return True
        return False


def _clean(text: str, channel: AlertChannel) -> str:
    for url in (channel.url, channel.webhook_url):
        text = scrub_url(text, url)
    if channel.smtp is not None and channel.smtp.password:
        text = text.replace(channel.smtp.password, "***")
    return redact(text)
