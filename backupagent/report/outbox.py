"""The durable outbox: everything the control plane must hear, queued on disk first.

A backup must never wait on, or fail because of, the control plane, and what
the agent owes the control plane must survive an outage, a restart or a
``kill -9``. So the reporter writes every report into a SQLite queue in the
state dir (``<state-dir>/outbox.db``, WAL, ``synchronous=FULL``, mode 0600)
and returns once that commit is done; a delivery thread drains the queue over
HTTP.

Rules (docs/reliability.md has the long form):

- ``start_job`` returns a local job id (a UUID) immediately. The server's
  ``jobId`` arrives when ``POST /jobs/start`` is delivered; it is kept in the
  ``jobs`` table (committed at once) and substituted into every later
  ``/jobs/{jobId}/...`` call.
- Items are delivered in queue order (so in order per job: a terminal status
  only after everything before it). Consecutive log entries of one job are
  coalesced into batches of at most 100.
- Delivery works in rounds: one read of the oldest items (up to
  ``DELIVERY_WINDOW``), sent one by one in order, and their removal from the
  queue committed together (every ``ACK_EVERY`` items or ``ACK_AFTER``
  seconds, and at the end of the round). A crash between a delivery and its
  acknowledgement means the item is sent again, which at-least-once allows.
- Transient failures (5xx, 408, 429, network) keep the item, end the round
  and back off (full jitter, capped, ``Retry-After`` honoured). 401/403 pause
  delivery until the API key changes. Any other 4xx drops that one item with
  an error log; a rejected job start drops the job's later items too.
- Bounded: beyond ``max_log_entries`` queued log lines the oldest are dropped
  and replaced, in place, by one notice "N log lines dropped while the control
  plane was unreachable". Statuses, verifications, snapshots and anomalies are
  never dropped.
- Delivery is at-least-once: a call whose answer (or whose acknowledgement)
  is lost is sent again (the reference server accepts a repeated stage,
  answers 409 to a stage that went backwards or anything after a terminal
  status, and such an item is dropped).
- Several agent processes may share one state dir (the daemon and a manual
  ``backupagent backup --schedule``): all enqueue, but only the holder of
  ``outbox.lock`` (an flock, released by the kernel even on ``kill -9``)
  delivers, so nothing is sent twice by two processes.

Storage is outbox_queue.py, the item → API call mapping outbox_send.py and
process identity owner.py; the names are re-exported here.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from backupagent.api.errors import (
    ApiError,
    AuthRejected,
    PermanentApiError,
    TransientApiError,
    Unreachable,
)
from backupagent.api.models import (
    MAX_LOG_BATCH,
    AnomalyReport,
    JobStartRequest,
    JobStatusUpdate,
    LogEntry,
    SchemaSnapshotRequest,
    VerificationReport,
    to_json,
)
from backupagent.api.retry import RetryPolicy
from backupagent.report.outbox_queue import (
    DB_NAME,
    DEFAULT_MAX_LOG_ENTRIES,
    KEEP_JOB_ROWS_SECONDS,
    KINDS,
    LOG_KINDS,
    OpenJob,
    OutboxQueue,
    QueuedItem,
    backlog_from,
    read_backlog,
)
from backupagent.report.outbox_send import DROPPED_NOTICE, describe, send, single_try
from backupagent.report.owner import owner_alive, process_token

__all__ = [
    "DB_NAME",
    "DEFAULT_MAX_LOG_ENTRIES",
    "DROPPED_NOTICE",
    "KEEP_JOB_ROWS_SECONDS",
    "KINDS",
    "LOCK_NAME",
    "OpenJob",
    "OutboxQueue",
    "OutboxReporter",
    "QueuedItem",
    "backlog_from",
    "owner_alive",
    "process_token",
    "read_backlog",
]

log = logging.getLogger(__name__)

LOCK_NAME = "outbox.lock"
# The protocol's budget for "everything else": base 1 s, cap 60 s.
DEFAULT_RETRY = RetryPolicy(base=1.0, cap=60.0)
# One delivery round reads at most this many items; acknowledgements are
# committed every ACK_EVERY delivered items or ACK_AFTER seconds, whichever
# comes first, and at the end of the round. ACK_AFTER bounds what a crash
# makes the agent send twice when the control plane answers slowly.
DELIVERY_WINDOW = 200
ACK_EVERY = 100
ACK_AFTER = 1.0


class _Round:
    """One delivery round's state: acknowledgements not yet committed and the
    job-id mappings already looked up (so the queue is not re-read per item)."""

    def __init__(self, queue: OutboxQueue, ack_every: int, ack_after: float) -> None:
        self.queue = queue
        self.ack_every = ack_every
        self.ack_after = ack_after
        self.acks: List[QueuedItem] = []
        self.since = time.monotonic()
        self.jobs: Dict[str, Tuple[str, Optional[str]]] = {}  # local id -> (state, server id)

    def job(self, local_id: str) -> Optional[Tuple[str, Optional[str]]]:
        if local_id not in self.jobs:
            row = self.queue.job(local_id)
            if row is None:
                return None
            self.jobs[local_id] = (row["state"], row["server_id"])
        return self.jobs[local_id]

    def ack(self, batch: List[QueuedItem]) -> None:
        self.acks.extend(batch)

    def take(self) -> List[QueuedItem]:
        """The pending acknowledgements, for a commit that carries them along."""
        acks, self.acks = self.acks, []
        self.since = time.monotonic()
        return acks

    def due(self) -> bool:
        return len(self.acks) >= self.ack_every or (
            bool(self.acks) and time.monotonic() - self.since >= self.ack_after
        )

    def commit(self) -> None:
        acks = self.take()
        if acks:
            self.queue.delivered(acks)


def _log_run(window: List[QueuedItem], start: int) -> Tuple[List[QueuedItem], bool]:
    """The log items of ``window[start]``'s job from there on, up to that job's
    next non-log item (other jobs' items in between do not split a batch), and
    whether the run reached the window's end still open."""
    head = window[start]
    run: List[QueuedItem] = []
    for it in window[start:]:
        if it.job != head.job:
            continue
        if it.kind not in LOG_KINDS or len(run) >= MAX_LOG_BATCH:
            return run, False
        run.append(it)
    return run, True


class OutboxReporter:
    """The Reporter for a registered agent: enqueue now, deliver in the background.

    ``api`` is the ApiClient; it is used with a single try per call (the
    outbox does its own, unbounded, backoff). ``reload_api`` returns a client
    with the current key file's key (or None); it is called while paused on a
    401/403 once ``key_file`` changes, like the daemon's heartbeater does.
    Call ``start()`` to deliver (only one process at a time does; the others
    just enqueue), ``flush()`` to wait for an empty queue, ``stop()`` at exit.
    """

    def __init__(
        self,
        state_dir: os.PathLike[str] | str,
        api: Any,
        *,
        reload_api: Optional[Callable[[], Any]] = None,
        key_file: Optional[os.PathLike[str] | str] = None,
        max_log_entries: int = DEFAULT_MAX_LOG_ENTRIES,
        retry: RetryPolicy = DEFAULT_RETRY,
        auth_poll: float = 5.0,
        idle_poll: float = 2.0,
        window: int = DELIVERY_WINDOW,
        ack_every: int = ACK_EVERY,
        ack_after: float = ACK_AFTER,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.queue = OutboxQueue(state_dir, max_log_entries=max_log_entries)
        self._api = single_try(api)
        self.reload_api = reload_api
        self.key_file = Path(key_file) if key_file is not None else None
        self.retry = retry
        self.auth_poll = auth_poll
        self.idle_poll = idle_poll
        self.window = window
        self.ack_every = ack_every
        self.ack_after = ack_after
        self.owner = process_token()
        self._stop = threading.Event()
        self._work = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._lock_fd: Optional[int] = None
        self._failures = 0
        self._retry_after: Optional[float] = None
        self._paused_key_mtime: Optional[float] = None
        self.paused = False
        self.delivering = False  # True while this process holds the delivery lock

    # -- Reporter protocol (never raises: a report must not fail a backup) -------

    def start_job(self, req: JobStartRequest) -> str:
        local_id = str(uuid.uuid4())
        self._safely("job start", lambda: self.queue.add_job(local_id, to_json(req), self.owner))
        self._work.set()
        return local_id

    def job_status(self, job_id: str, update: JobStatusUpdate) -> None:
        self._enqueue(f"status {update.status}", "status", job_id, to_json(update))

    def job_logs(self, job_id: str, entries: List[LogEntry]) -> None:
        if entries:
            self._safely(
                "job logs", lambda: self.queue.add_logs(job_id, [to_json(e) for e in entries])
            )
            self._work.set()

    def verification(self, job_id: str, report: VerificationReport) -> None:
        self._enqueue("verification", "verification", job_id, to_json(report))

    def schema_snapshot(self, req: SchemaSnapshotRequest) -> None:
        self._enqueue("schema snapshot", "snapshot", None, to_json(req))

    def anomaly(self, req: AnomalyReport) -> None:
        self._enqueue("anomaly", "anomaly", None, to_json(req))

    def _enqueue(self, what: str, kind: str, job: Optional[str], body: Any) -> None:
        if not self._safely(what, lambda: self.queue.add(kind, job, body)):
            log.debug("not queueing %s for job %s: its start was rejected", what, job)
        self._work.set()

    @staticmethod
    def _safely(what: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except (sqlite3.Error, OSError) as exc:
            # Disk full or a broken state dir: the backup goes on, the report is lost.
            log.error("could not queue %s for the control plane: %s", what, exc)
            return True

    # -- queries ------------------------------------------------------------------

    def backlog(self) -> Dict[str, Any]:
        return self.queue.backlog()

    def server_job_id(self, local_id: str) -> Optional[str]:
        row = self.queue.job(local_id)
        return None if row is None else row["server_id"]

    def has_terminal(self, local_id: str) -> bool:
        row = self.queue.job(local_id)
        return row is not None and row["terminal"] is not None

    def open_jobs(self) -> List[OpenJob]:
        return self.queue.open_jobs()

    def set_api(self, api: Any) -> None:
        """A new client (a re-registration): resumes delivery if a 401 paused it."""
        self._api = single_try(api)
        if self.paused:
            log.info("new API key: resuming delivery to the control plane")
        self._resume()

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="outbox", daemon=True)
        self._thread.start()

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until the queue is empty (delivered by this or another process)."""
        deadline = time.monotonic() + timeout
        self._work.set()
        while True:
            try:
                if self.queue.pending() == 0:
                    return True
            except sqlite3.Error:
                return False
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop delivering; what is still queued stays on disk for the next start."""
        self._stop.set()
        self._work.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("outbox delivery did not stop within %.0fs", timeout)
                return
            self._thread = None
        self._release_lock()

    def close(self, timeout: float = 10.0) -> None:
        self.stop(timeout)
        self.queue.close()

    # -- delivery -------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception:  # the thread must survive anything; the items stay queued
                log.exception("outbox delivery failed unexpectedly; retrying")
                self._stop.wait(self._backoff(None))

    def _step(self) -> None:
        if not self._acquire_lock():
            self._stop.wait(self.idle_poll)  # another process delivers
            return
        if self.paused and not self._try_resume():
            self._stop.wait(self.auth_poll)
            return
        outcome = self.deliver_batch()
        if outcome == "empty":
            self._work.wait(self.idle_poll)
            self._work.clear()
        elif outcome == "transient":
            self._stop.wait(self._backoff(self._retry_after))

    def _backoff(self, retry_after: Optional[float]) -> float:
        delay = self.retry.delay(max(0, self._failures - 1), retry_after)
        return max(0.01, delay)

    def deliver_next(self) -> str:
        """Deliver the head of the queue once and acknowledge it at once: ``empty``,
        ``ok``, ``dropped``, ``transient`` or ``auth``. Public so tests can drive
        delivery step by step; the delivery thread uses ``deliver_batch``."""
        item = self.queue.head()
        if item is None:
            return "empty"
        batch = self.queue.log_run(item.job, item.seq) if item.kind in LOG_KINDS else [item]
        rnd = _Round(self.queue, self.ack_every, self.ack_after)
        try:
            return self._deliver(item, batch, rnd)
        finally:
            rnd.commit()

    def deliver_batch(self, max_items: Optional[int] = None) -> str:
        """One delivery round: up to ``max_items`` of the oldest items, in order.

        Returns ``empty`` when nothing was queued, else the outcome of the last
        item tried: a ``transient`` failure or ``auth`` ends the round (head of
        line: nothing behind a failing item is sent). Delivered items are
        acknowledged in a few commits rather than one each; ``stop()`` ends the
        round early, acknowledging what was delivered.
        """
        limit = max_items or self.window
        window = self.queue.window(limit)
        if not window:
            return "empty"
        rnd = _Round(self.queue, self.ack_every, self.ack_after)
        taken: Set[int] = set()
        outcome = "ok"
        try:
            for i, item in enumerate(window):
                if item.seq in taken:
                    continue  # already sent in an earlier item's log batch
                batch = [item]
                if item.kind in LOG_KINDS:
                    batch, still_open = _log_run(window, i)
                    if still_open and len(window) == limit and len(batch) < MAX_LOG_BATCH:
                        # The run may go on past the window: do not cut the batch there.
                        batch += self.queue.log_run(
                            item.job, window[-1].seq + 1, MAX_LOG_BATCH - len(batch)
                        )
                taken.update(it.seq for it in batch)
                outcome = self._deliver(item, batch, rnd)
                if outcome in ("transient", "auth") or self._stop.is_set():
                    break
                if rnd.due():
                    rnd.commit()
        finally:
            rnd.commit()
        return outcome

    def _deliver(self, item: QueuedItem, batch: List[QueuedItem], rnd: _Round) -> str:
        """Send one item (or log batch); its acknowledgement goes to ``rnd``."""
        what = describe(item, len(batch))
        server_id: Optional[str] = None
        if item.job is not None and item.kind != "start":
            job = rnd.job(item.job)
            if job is None or job[0] == "rejected" or not job[1]:
                reason = (
                    "its start was rejected"
                    if job is not None and job[0] == "rejected"
                    else "the job is unknown to the outbox"
                )
                log.error("dropping %s for job %s: %s", what, item.job, reason)
                rnd.ack(batch)
                return "dropped"
            server_id = job[1]
        try:
            new_id = send(self._api, item, batch, server_id)
        except AuthRejected as exc:
            self._pause(exc)
            return "auth"
        except PermanentApiError as exc:
            self._failures = 0
            if item.kind == "start":
                dropped = self.queue.reject_job(item.job or "", rnd.take())
                rnd.jobs[item.job or ""] = ("rejected", None)
                log.error(
                    "the control plane rejected the start of job %s for good (%s): dropped it "
                    "and %d later item(s) queued for it",
                    item.job,
                    exc,
                    max(0, dropped - 1),
                )
            else:
                log.error(
                    "the control plane rejected %s for job %s: %s; dropped it", what, item.job, exc
                )
                rnd.ack(batch)
            self.queue.set_meta("last_error", f"rejected {what}: {exc}")
            return "dropped"
        except (TransientApiError, Unreachable, ApiError) as exc:
            # Plain ApiError: a 2xx with a body we cannot use. Rare, and possibly
            # a glitch: keep the item, as for a 5xx.
            self._failures += 1
            self._retry_after = getattr(exc, "retry_after", None)
            self.queue.failed_attempt(batch)
            self.queue.set_meta("last_error", f"{what}: {exc}")
            level = logging.WARNING if self._failures in (1, 10, 100) else logging.DEBUG
            log.log(
                level,
                "could not deliver %s (attempt %d, %d queued): %s",
                what,
                item.attempts + 1,
                self.queue.pending(),
                exc,
            )
            return "transient"
        if item.kind == "start":
            # The mapping is committed now, with the acknowledgements so far.
            self.queue.mark_started(item.job or "", new_id, item.seq, rnd.take())
            rnd.jobs[item.job or ""] = ("started", new_id)
            log.info("job %s is job %s on the control plane", item.job, new_id)
        else:
            rnd.ack(batch)
        if self._failures:
            log.info(
                "control plane reachable again: delivering %d queued item(s)", self.queue.pending()
            )
            self.queue.set_meta("last_error", None)
        self._failures = 0
        self._retry_after = None
        return "ok"

    # -- 401/403 ------------------------------------------------------------------

    def _key_mtime(self) -> Optional[float]:
        if self.key_file is None:
            return None
        try:
            return os.stat(self.key_file).st_mtime
        except OSError:
            return None

    def _pause(self, exc: Exception) -> None:
        if not self.paused:
            log.error(
                "API key rejected by the control plane (%s): delivery of queued reports is "
                "paused until the key changes (re-register with `backupagent register "
                "--token TOKEN --force`); %d item(s) stay queued",
                exc,
                self.queue.pending(),
            )
        self.paused = True
        self._paused_key_mtime = self._key_mtime()
        self.queue.set_meta("paused", "API key rejected")
        self.queue.set_meta("last_error", f"API key rejected: {exc}")

    def _try_resume(self) -> bool:
        if not self.paused:
            return True
        if self.reload_api is None:
            return False
        if self.key_file is not None and self._key_mtime() == self._paused_key_mtime:
            return False
        new_api = self.reload_api()
        if new_api is None:
            self._paused_key_mtime = self._key_mtime()
            return False
        log.info("API key file changed: resuming delivery to the control plane")
        self._api = single_try(new_api)
        self._resume()
        return True

    def _resume(self) -> None:
        self.paused = False
        self._paused_key_mtime = None
        self._failures = 0
        with contextlib.suppress(sqlite3.Error):
            self.queue.set_meta("paused", None)
        self._work.set()

    # -- one deliverer per state dir ------------------------------------------------

    def _acquire_lock(self) -> bool:
        if self._lock_fd is not None:
            return True
        path = self.state_dir / LOCK_NAME
        fd = os.open(str(path), os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._lock_fd = fd
        self.delivering = True
        return True

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None
            self.delivering = False
