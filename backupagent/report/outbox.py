"""The durable outbox: everything the control plane must hear, queued on disk first.

A backup must never wait on, or fail because of, the control plane, and what
the agent owes the control plane must survive an outage, a restart or a
``kill -9``. So the reporter writes every report into a SQLite queue in the
state dir (``<state-dir>/outbox.db``, WAL, mode 0600) and returns at once; a
delivery thread drains the queue over HTTP.

Rules (docs/reliability.md has the long form):

- ``start_job`` returns a local job id (a UUID) immediately. The server's
  ``jobId`` arrives when ``POST /jobs/start`` is delivered; it is kept in the
  ``jobs`` table and substituted into every later ``/jobs/{jobId}/...`` call.
- Items are delivered in queue order (so in order per job: a terminal status
  only after everything before it). Consecutive log entries of one job are
  coalesced into batches of at most 100.
- Transient failures (5xx, 408, 429, network) keep the item and back off
  (full jitter, capped, ``Retry-After`` honoured). 401/403 pause delivery until
  the API key changes. Any other 4xx drops that one item with an error log; a
  rejected job start drops the job's later items too.
- Bounded: beyond ``max_log_entries`` queued log lines the oldest are dropped
  and replaced, in place, by one notice "N log lines dropped while the control
  plane was unreachable". Statuses, verifications, snapshots and anomalies are
  never dropped.
- Delivery is at-least-once: a call whose answer is lost is sent again (the
  reference server accepts a repeated stage; a repeated terminal status gets a
  409 and is dropped).
- Several agent processes may share one state dir (the daemon and a manual
  ``backupagent backup --schedule``): all enqueue, but only the holder of
  ``outbox.lock`` (an flock, released by the kernel even on ``kill -9``)
  delivers, so nothing is sent twice by two processes.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import logging
import os
import re
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

from backupagent.api.errors import (
    ApiError,
    AuthRejected,
    PermanentApiError,
    TransientApiError,
    Unreachable,
)
from backupagent.api.models import (
    JOB_TERMINAL,
    MAX_LOG_BATCH,
    AnomalyReport,
    JobStartRequest,
    JobStatusUpdate,
    LogEntry,
    SchemaSnapshotRequest,
    VerificationCheck,
    VerificationReport,
    to_json,
)
from backupagent.api.retry import NO_RETRY, RetryPolicy

log = logging.getLogger(__name__)

DB_NAME = "outbox.db"
LOCK_NAME = "outbox.lock"
DEFAULT_MAX_LOG_ENTRIES = 50_000
DROPPED_NOTICE = "{n} log lines dropped while the control plane was unreachable"
# The protocol's budget for "everything else": base 1 s, cap 60 s.
DEFAULT_RETRY = RetryPolicy(base=1.0, cap=60.0)
KEEP_JOB_ROWS_SECONDS = 30 * 86400  # id mappings of finished jobs, for `status` and recovery

KINDS = ("start", "status", "log", "lognote", "verification", "snapshot", "anomaly")
_LOG_KINDS = ("log", "lognote")
_SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job TEXT,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS items_job ON items (job, seq);
CREATE INDEX IF NOT EXISTS items_kind ON items (kind, seq);
CREATE TABLE IF NOT EXISTS jobs (
    local_id TEXT PRIMARY KEY,
    server_id TEXT,
    state TEXT NOT NULL,
    terminal TEXT,
    request TEXT,
    owner TEXT,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""


# -- which process owns a job -------------------------------------------------


def process_token(pid: Optional[int] = None) -> str:
    """``pid:starttime``: names a process uniquely even after its pid is reused."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}:{_start_ticks(pid) or 0}"


def _start_ticks(pid: int) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after it.
    fields = stat.rsplit(")", 1)[-1].split()
    try:
        return int(fields[19])  # field 22 overall: start time in clock ticks
    except (IndexError, ValueError):
        return None


def owner_alive(token: Optional[str]) -> bool:
    """True while the process named by ``token`` still runs (and is not this one's
    predecessor under a reused pid)."""
    if not token:
        return False
    try:
        pid_text, ticks_text = token.split(":", 1)
        pid, ticks = int(pid_text), int(ticks_text)
    except ValueError:
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    current = _start_ticks(pid)
    if current is None:  # no /proc: trust the pid
        return True
    return ticks == 0 or current == ticks


# -- the queue ------------------------------------------------------------------


@dataclass(frozen=True)
class QueuedItem:
    seq: int
    job: Optional[str]
    kind: str
    body: Any
    created: float
    attempts: int


@dataclass(frozen=True)
class OpenJob:
    """A job whose start was queued but whose terminal status never was."""

    job_id: str  # the local id
    server_id: Optional[str]
    request: Dict[str, Any]  # the JobStartRequest body
    owner: Optional[str]
    created: float


def _open_db(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        db = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, timeout=10.0, check_same_thread=False
        )
    else:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        # Create the file 0600 before SQLite does (it would use the umask); the
        # WAL and shared-memory files inherit the database file's mode.
        fd = os.open(str(path), os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        os.close(fd)
        os.chmod(path, 0o600)
        db = sqlite3.connect(str(path), timeout=30.0, check_same_thread=False)
    db.row_factory = sqlite3.Row
    db.isolation_level = None  # explicit transactions only
    if not readonly:
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed status survives a power cut, not only a kill -9.
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
    return db


class OutboxQueue:
    """The SQLite queue itself: thread-safe, shared by every process on the state dir."""

    def __init__(
        self,
        state_dir: os.PathLike[str] | str,
        *,
        max_log_entries: int = DEFAULT_MAX_LOG_ENTRIES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_log_entries < 1:
            raise ValueError("max_log_entries must be at least 1")
        self.path = Path(state_dir) / DB_NAME
        self.max_log_entries = max_log_entries
        self.clock = clock
        self._lock = threading.RLock()
        self._db = _open_db(self.path)
        self._last_drop_warning = 0.0
        self._prune_old_jobs()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: Sequence[Any] = ()) -> List[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, tuple(args)).fetchall()

    # enqueueing -------------------------------------------------------------

    def add_job(self, local_id: str, request: Dict[str, Any], owner: str) -> None:
        now = self.clock()
        with self._tx() as db:
            db.execute(
                "INSERT INTO jobs (local_id, server_id, state, terminal, request, owner, created)"
                " VALUES (?, NULL, 'queued', NULL, ?, ?, ?)",
                (local_id, json.dumps(request), owner, now),
            )
            db.execute(
                "INSERT INTO items (job, kind, body, created) VALUES (?, 'start', ?, ?)",
                (local_id, json.dumps(request), now),
            )

    def add(self, kind: str, job: Optional[str], body: Any) -> bool:
        """Queue one item; False when it was dropped at once (its job was rejected)."""
        now = self.clock()
        with self._tx() as db:
            if job is not None and self._job_rejected(db, job):
                return False
            db.execute(
                "INSERT INTO items (job, kind, body, created) VALUES (?, ?, ?, ?)",
                (job, kind, json.dumps(body, ensure_ascii=False), now),
            )
            if kind == "status" and isinstance(body, dict) and body.get("status") in JOB_TERMINAL:
                db.execute("UPDATE jobs SET terminal = ? WHERE local_id = ?", (body["status"], job))
        return True

    def add_logs(self, job: str, entries: Sequence[Dict[str, Any]]) -> int:
        """Queue log entries (one row each); returns how many older lines were dropped."""
        now = self.clock()
        with self._tx() as db:
            if self._job_rejected(db, job):
                return 0
            db.executemany(
                "INSERT INTO items (job, kind, body, created) VALUES (?, 'log', ?, ?)",
                [(job, json.dumps(e, ensure_ascii=False), now) for e in entries],
            )
            return self._enforce_bound(db)

    @staticmethod
    def _job_rejected(db: sqlite3.Connection, job: str) -> bool:
        row = db.execute("SELECT state FROM jobs WHERE local_id = ?", (job,)).fetchone()
        return row is not None and row["state"] == "rejected"

    def _enforce_bound(self, db: sqlite3.Connection) -> int:
        """Drop the oldest queued log lines beyond the bound, leaving a notice per job.

        The first dropped line of a job becomes (in place, so in order) a
        ``lognote`` counting the lines dropped; later drops of the same job
        add to that note. Statuses and the rest are never touched.
        """
        count = db.execute("SELECT COUNT(*) FROM items WHERE kind = 'log'").fetchone()[0]
        excess = count - self.max_log_entries
        if excess <= 0:
            return 0
        rows = db.execute(
            "SELECT seq, job, body FROM items WHERE kind = 'log' ORDER BY seq LIMIT ?", (excess,)
        ).fetchall()
        by_job: Dict[Optional[str], List[sqlite3.Row]] = {}
        for r in rows:
            by_job.setdefault(r["job"], []).append(r)
        for job, dropped in by_job.items():
            note = db.execute(
                "SELECT seq, body FROM items WHERE kind = 'lognote' AND job IS ? ORDER BY seq"
                " LIMIT 1",
                (job,),
            ).fetchone()
            victims = [r["seq"] for r in dropped]
            if note is not None:
                body = json.loads(note["body"])
                body["count"] = int(body.get("count", 0)) + len(dropped)
                db.execute(
                    "UPDATE items SET body = ? WHERE seq = ?", (json.dumps(body), note["seq"])
                )
            else:
                first = json.loads(dropped[0]["body"])
                body = {"count": len(dropped), "timestamp": first.get("timestamp")}
                db.execute(
                    "UPDATE items SET kind = 'lognote', body = ? WHERE seq = ?",
                    (json.dumps(body), victims[0]),
                )
                victims = victims[1:]
            db.executemany("DELETE FROM items WHERE seq = ?", [(s,) for s in victims])
        total = int(self._meta(db, "dropped_log_lines") or 0) + excess
        self._set_meta(db, "dropped_log_lines", str(total))
        now = time.monotonic()
        if now - self._last_drop_warning > 60:
            self._last_drop_warning = now
            log.warning(
                "outbox holds more than %d log lines: dropped the %d oldest "
                "(%d dropped so far); statuses are kept",
                self.max_log_entries,
                excess,
                total,
            )
        return excess

    # reading ----------------------------------------------------------------

    def head(self) -> Optional[QueuedItem]:
        rows = self._query("SELECT * FROM items ORDER BY seq LIMIT 1")
        return _item(rows[0]) if rows else None

    def log_run(
        self, job: Optional[str], from_seq: int, limit: int = MAX_LOG_BATCH
    ) -> List[QueuedItem]:
        """The job's log items from ``from_seq`` on, up to its next non-log item."""
        rows = self._query(
            "SELECT * FROM items WHERE job IS ? AND seq >= ? ORDER BY seq LIMIT ?",
            (job, from_seq, limit),
        )
        run: List[QueuedItem] = []
        for r in rows:
            if r["kind"] not in _LOG_KINDS:
                break
            run.append(_item(r))
        return run

    def job(self, local_id: str) -> Optional[sqlite3.Row]:
        rows = self._query("SELECT * FROM jobs WHERE local_id = ?", (local_id,))
        return rows[0] if rows else None

    def pending(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM items")[0][0])

    def open_jobs(self) -> List[OpenJob]:
        rows = self._query(
            "SELECT * FROM jobs WHERE terminal IS NULL AND state != 'rejected' ORDER BY created"
        )
        return [
            OpenJob(
                job_id=r["local_id"],
                server_id=r["server_id"],
                request=json.loads(r["request"] or "{}"),
                owner=r["owner"],
                created=float(r["created"]),
            )
            for r in rows
        ]

    # delivery bookkeeping ---------------------------------------------------

    def mark_started(self, local_id: str, server_id: str, start_seq: int) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET server_id = ?, state = 'started' WHERE local_id = ?",
                (server_id, local_id),
            )
            db.execute("DELETE FROM items WHERE seq = ?", (start_seq,))

    def reject_job(self, local_id: str) -> int:
        """A start the server refused for good: drop the job's queued items; how many."""
        with self._tx() as db:
            db.execute("UPDATE jobs SET state = 'rejected' WHERE local_id = ?", (local_id,))
            cur = db.execute("DELETE FROM items WHERE job = ?", (local_id,))
            return int(cur.rowcount)

    def delivered(self, items: Sequence[QueuedItem]) -> None:
        """Remove delivered items. A note whose count grew meanwhile keeps the rest."""
        with self._tx() as db:
            for it in items:
                if it.kind == "lognote":
                    row = db.execute(
                        "SELECT body FROM items WHERE seq = ? AND kind = 'lognote'", (it.seq,)
                    ).fetchone()
                    if row is not None:
                        left = int(json.loads(row["body"]).get("count", 0)) - int(
                            it.body.get("count", 0)
                        )
                        if left > 0:
                            body = {**json.loads(row["body"]), "count": left}
                            db.execute(
                                "UPDATE items SET body = ? WHERE seq = ?",
                                (json.dumps(body), it.seq),
                            )
                            continue
                    db.execute("DELETE FROM items WHERE seq = ? AND kind = 'lognote'", (it.seq,))
                else:
                    db.execute("DELETE FROM items WHERE seq = ? AND kind = ?", (it.seq, it.kind))
            self._set_meta(db, "last_delivery_at", str(self.clock()))

    def failed_attempt(self, items: Sequence[QueuedItem]) -> None:
        with self._tx() as db:
            db.executemany(
                "UPDATE items SET attempts = attempts + 1 WHERE seq = ?", [(i.seq,) for i in items]
            )

    # meta -----------------------------------------------------------------------

    @staticmethod
    def _meta(db: sqlite3.Connection, key: str) -> Optional[str]:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    @staticmethod
    def _set_meta(db: sqlite3.Connection, key: str, value: Optional[str]) -> None:
        if value is None:
            db.execute("DELETE FROM meta WHERE key = ?", (key,))
        else:
            db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def set_meta(self, key: str, value: Optional[str]) -> None:
        with self._tx() as db:
            self._set_meta(db, key, value)

    def _prune_old_jobs(self) -> None:
        cutoff = self.clock() - KEEP_JOB_ROWS_SECONDS
        with self._tx() as db:
            db.execute(
                "DELETE FROM jobs WHERE created < ?"
                " AND (terminal IS NOT NULL OR state = 'rejected')"
                " AND NOT EXISTS (SELECT 1 FROM items WHERE items.job = jobs.local_id)",
                (cutoff,),
            )

    def backlog(self) -> Dict[str, Any]:
        with self._lock:
            return backlog_from(self._db, self.clock())


def _item(r: sqlite3.Row) -> QueuedItem:
    return QueuedItem(
        seq=int(r["seq"]),
        job=r["job"],
        kind=r["kind"],
        body=json.loads(r["body"]),
        created=float(r["created"]),
        attempts=int(r["attempts"]),
    )


def backlog_from(db: sqlite3.Connection, now: float) -> Dict[str, Any]:
    by_kind = {k: 0 for k in ("start", "status", "log", "verification", "snapshot", "anomaly")}
    for r in db.execute("SELECT kind, COUNT(*) AS n FROM items GROUP BY kind"):
        kind = "log" if r["kind"] == "lognote" else r["kind"]
        by_kind[kind] = by_kind.get(kind, 0) + int(r["n"])
    oldest = db.execute("SELECT MIN(created) FROM items").fetchone()[0]
    meta = {r["key"]: r["value"] for r in db.execute("SELECT key, value FROM meta")}
    waiting = db.execute(
        "SELECT COUNT(*) FROM jobs WHERE server_id IS NULL AND state = 'queued'"
    ).fetchone()[0]
    last = meta.get("last_delivery_at")
    return {
        "pending": sum(by_kind.values()),
        "byKind": by_kind,
        "oldestAgeSeconds": None if oldest is None else round(max(0.0, now - oldest), 1),
        "jobsAwaitingServerId": int(waiting),
        "droppedLogLines": int(meta.get("dropped_log_lines") or 0),
        "paused": meta.get("paused"),
        "lastError": meta.get("last_error"),
        "lastDeliveryAt": None if last is None else float(last),
    }


def read_backlog(state_dir: os.PathLike[str] | str) -> Optional[Dict[str, Any]]:
    """The outbox backlog for ``backupagent status``, read-only; None when there is no outbox.

    Works while the daemon runs (WAL readers do not block the writer).
    """
    path = Path(state_dir) / DB_NAME
    if not path.exists():
        return None
    try:
        db = _open_db(path, readonly=True)
        try:
            return backlog_from(db, time.time())
        finally:
            db.close()
    except sqlite3.Error as exc:
        return {"error": f"cannot read {path}: {exc}"}


# -- the reporter and its delivery thread -------------------------------------------


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
    ) -> None:
        self.state_dir = Path(state_dir)
        self.queue = OutboxQueue(state_dir, max_log_entries=max_log_entries)
        self._api = _single_try(api)
        self.reload_api = reload_api
        self.key_file = Path(key_file) if key_file is not None else None
        self.retry = retry
        self.auth_poll = auth_poll
        self.idle_poll = idle_poll
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
        self._api = _single_try(api)
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
        outcome = self.deliver_next()
        if outcome == "empty":
            self._work.wait(self.idle_poll)
            self._work.clear()
        elif outcome == "transient":
            self._stop.wait(self._backoff(self._retry_after))

    def _backoff(self, retry_after: Optional[float]) -> float:
        delay = self.retry.delay(max(0, self._failures - 1), retry_after)
        return max(0.01, delay)

    def deliver_next(self) -> str:
        """Deliver the head of the queue once: ``empty``, ``ok``, ``dropped``,
        ``transient`` or ``auth``. Public so tests can drive delivery step by step."""
        item = self.queue.head()
        if item is None:
            return "empty"
        batch = self.queue.log_run(item.job, item.seq) if item.kind in _LOG_KINDS else [item]
        what = _describe(item, len(batch))
        server_id: Optional[str] = None
        if item.job is not None and item.kind != "start":
            job = self.queue.job(item.job)
            if job is None or job["state"] == "rejected" or not job["server_id"]:
                reason = (
                    "its start was rejected"
                    if job is not None and job["state"] == "rejected"
                    else "the job is unknown to the outbox"
                )
                log.error("dropping %s for job %s: %s", what, item.job, reason)
                self.queue.delivered(batch)
                return "dropped"
            server_id = job["server_id"]
        try:
            self._send(item, batch, server_id)
        except AuthRejected as exc:
            self._pause(exc)
            return "auth"
        except PermanentApiError as exc:
            self._failures = 0
            if item.kind == "start":
                dropped = self.queue.reject_job(item.job or "")
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
                self.queue.delivered(batch)
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
        if self._failures:
            log.info(
                "control plane reachable again: delivering %d queued item(s)", self.queue.pending()
            )
            self.queue.set_meta("last_error", None)
        self._failures = 0
        self._retry_after = None
        return "ok"

    def _send(self, item: QueuedItem, batch: List[QueuedItem], server_id: Optional[str]) -> None:
        api = self._api
        if item.kind == "start":
            new_id = api.start_job(JobStartRequest(**item.body))
            if not _SAFE_SEGMENT.match(new_id) or new_id in (".", ".."):
                raise PermanentApiError(
                    f"the server's job id {new_id!r} is not a safe path segment"
                )
            self.queue.mark_started(item.job or "", new_id, item.seq)
            log.info("job %s is job %s on the control plane", item.job, new_id)
            return
        assert server_id is not None or item.job is None
        if item.kind in _LOG_KINDS:
            api.upload_logs(server_id, [_log_entry(i) for i in batch])
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
        self.queue.delivered(batch)

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
        self._api = _single_try(new_api)
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


def _single_try(api: Any) -> Any:
    """The same client, one try per call: the outbox owns the (unbounded) retries."""
    clone = copy.copy(api)
    with contextlib.suppress(AttributeError):
        clone.retry = NO_RETRY
    return clone


def _log_entry(item: QueuedItem) -> LogEntry:
    if item.kind == "lognote":
        from backupagent.logs import utc_timestamp

        return LogEntry(
            level="warn",
            message=DROPPED_NOTICE.format(n=int(item.body.get("count", 0))),
            timestamp=item.body.get("timestamp") or utc_timestamp(),
        )
    return LogEntry(**item.body)


def _describe(item: QueuedItem, batch: int) -> str:
    if item.kind == "status":
        return f"status {item.body.get('status')}"
    if item.kind in _LOG_KINDS:
        return f"{batch} log line(s)"
    return {"start": "job start", "snapshot": "schema snapshot"}.get(item.kind, item.kind)
