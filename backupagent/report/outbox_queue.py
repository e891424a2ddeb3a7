"""The outbox's storage: a SQLite queue in the state dir, shared by every agent process.

Kept apart from delivery so the durability rules live in one place: an
enqueue is one ``synchronous=FULL`` commit made before the reporter returns
(a queued terminal status survives ``kill -9`` and a power cut), while
acknowledgements of delivered items may be grouped into one commit (an ack
lost to a crash only means the item is sent again, which at-least-once
delivery allows). See outbox.py for the rules and docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

from backupagent.api.models import JOB_TERMINAL, MAX_LOG_BATCH

log = logging.getLogger("backupagent.report.outbox")

DB_NAME = "outbox.db"
DEFAULT_MAX_LOG_ENTRIES = 50_000
KEEP_JOB_ROWS_SECONDS = 30 * 86400  # id mappings of finished jobs, for `status` and recovery

KINDS = ("start", "status", "log", "lognote", "verification", "snapshot", "anomaly")
LOG_KINDS = ("log", "lognote")

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


CACHE_KIB = 512


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
    # A small page cache: the queue's hot pages are its newest rows. SQLite's
    # default (2 MB per connection) fills a page at a time as the file grows
    # (a jobs row per job, kept 30 days), which showed as slow RSS growth in
    # the daemon's soak (docs/performance.md, "Soak").
    db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
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
        self.commits = 0  # write transactions committed: what batching acknowledgements saves
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
            self.commits += 1

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

    def window(self, limit: int) -> List[QueuedItem]:
        """The oldest ``limit`` items in queue order: one read for a whole delivery round."""
        return [_item(r) for r in self._query("SELECT * FROM items ORDER BY seq LIMIT ?", (limit,))]

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
            if r["kind"] not in LOG_KINDS:
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

    def mark_started(
        self,
        local_id: str,
        server_id: str,
        start_seq: int,
        acks: Sequence[QueuedItem] = (),
    ) -> None:
        """Record the server's job id (and acknowledge ``acks``) in one commit.

        Committed at once, not deferred like other acknowledgements: were the
        mapping lost, the start would be sent again and the job's later
        statuses would go to a second server job, leaving the first one
        half-reported.
        """
        with self._tx() as db:
            self._ack(db, acks)
            db.execute(
                "UPDATE jobs SET server_id = ?, state = 'started' WHERE local_id = ?",
                (server_id, local_id),
            )
            db.execute("DELETE FROM items WHERE seq = ?", (start_seq,))

    def reject_job(self, local_id: str, acks: Sequence[QueuedItem] = ()) -> int:
        """A start the server refused for good: drop the job's queued items; how many."""
        with self._tx() as db:
            self._ack(db, acks)
            db.execute("UPDATE jobs SET state = 'rejected' WHERE local_id = ?", (local_id,))
            cur = db.execute("DELETE FROM items WHERE job = ?", (local_id,))
            return int(cur.rowcount)

    def delivered(self, items: Sequence[QueuedItem]) -> None:
        """Remove delivered items, all in one commit."""
        if not items:
            return
        with self._tx() as db:
            self._ack(db, items)

    def _ack(self, db: sqlite3.Connection, items: Sequence[QueuedItem]) -> None:
        """Delete delivered items. A note whose count grew meanwhile keeps the rest."""
        if not items:
            return
        plain = [(it.seq, it.kind) for it in items if it.kind != "lognote"]
        db.executemany("DELETE FROM items WHERE seq = ? AND kind = ?", plain)
        for it in (i for i in items if i.kind == "lognote"):
            row = db.execute(
                "SELECT body FROM items WHERE seq = ? AND kind = 'lognote'", (it.seq,)
            ).fetchone()
            if row is not None:
                now = json.loads(row["body"])
                left = int(now.get("count", 0)) - int(it.body.get("count", 0))
                if left > 0:
                    db.execute(
                        "UPDATE items SET body = ? WHERE seq = ?",
                        (json.dumps({**now, "count": left}), it.seq),
                    )
                    continue
            db.execute("DELETE FROM items WHERE seq = ? AND kind = 'lognote'", (it.seq,))
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
