"""The agent's own memory of past backups, for anomaly and drift detection.

Kept in ``<state-dir>/history.db`` (SQLite, WAL) rather than asked of the
control plane, so that a standalone agent detects the same anomalies as a
registered one and detection keeps working while the control plane is down.

It is advisory data: an unreadable file is moved aside and started afresh
(losing it costs a few backups' worth of baseline, never a backup), and it is
bounded so a host that backs up every minute for years does not grow it
without limit.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

from backupagent.analysis.drift import canonical_json, schema_hash

log = logging.getLogger(__name__)

HISTORY_FILE = "history.db"
DEFAULT_MAX_AGE_DAYS = 400
DEFAULT_MAX_ROWS_PER_DATABASE = 5000
_SCHEMA_VERSION = 1
CACHE_KIB = 256

_DDL = (
    """CREATE TABLE IF NOT EXISTS backups (
        id INTEGER PRIMARY KEY,
        database_id TEXT NOT NULL,
        ts_ms INTEGER NOT NULL,
        dump_size INTEGER,
        compressed_size INTEGER,
        row_counts TEXT NOT NULL DEFAULT '{}'
    )""",
    "CREATE INDEX IF NOT EXISTS backups_db_ts ON backups (database_id, ts_ms)",
    """CREATE TABLE IF NOT EXISTS schemas (
        database_id TEXT PRIMARY KEY,
        ts_ms INTEGER NOT NULL,
        hash TEXT NOT NULL,
        snapshot TEXT NOT NULL
    )""",
)

_SELECT_SIZES = "SELECT ts_ms, dump_size, compressed_size, '{}' FROM backups WHERE database_id = ?"
_SELECT_BACKUPS = (
    "SELECT ts_ms, dump_size, compressed_size, row_counts FROM backups WHERE database_id = ?"
)


@dataclass(frozen=True)
class BackupSample:
    """One successful backup of one database, as the anomaly checks see it."""

    timestamp: dt.datetime
    dump_size: Optional[int] = None
    compressed_size: Optional[int] = None
    row_counts: Dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class SchemaRecord:
    """The latest schema snapshot of a database and when it was taken."""

    timestamp: dt.datetime
    hash: str
    snapshot: Dict[str, Any]


def _to_ms(when: dt.datetime) -> int:
    if when.tzinfo is None:  # a naive time is taken as UTC, the agent's clock
        when = when.replace(tzinfo=dt.timezone.utc)
    return int(when.timestamp() * 1000)


def _from_ms(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class History:
    """Thread-safe store of backup samples and the latest schema per database.

    One connection guarded by a lock: the writes are tiny and rare (one per
    backup), so serialising them is cheaper than a connection per thread, and
    WAL plus a busy timeout lets a CLI ``backupagent run`` share the file with
    the daemon.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_age_days: int = DEFAULT_MAX_AGE_DAYS,
        max_rows_per_database: int = DEFAULT_MAX_ROWS_PER_DATABASE,
    ) -> None:
        if max_age_days < 1 or max_rows_per_database < 1:
            raise ValueError("history bounds must be at least 1")
        self.path = Path(path)
        self.max_age_days = max_age_days
        self.max_rows_per_database = max_rows_per_database
        self._lock = threading.Lock()
        self._con = self._open()

    @classmethod
    def in_state_dir(cls, state_dir: Path, **kwargs: Any) -> History:
        return cls(Path(state_dir) / HISTORY_FILE, **kwargs)

    # -- opening ------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return self._connect()
        except sqlite3.DatabaseError as exc:
            aside = self.path.with_name(
                f"{self.path.name}.corrupt-{_now().strftime('%Y%m%dT%H%M%SZ')}"
            )
            log.warning(
                "history file %s is unreadable (%s); moved to %s and starting afresh "
                "(anomaly baselines rebuild over the next backups)",
                self.path,
                exc,
                aside,
            )
            self.path.replace(aside)
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    Path(str(self.path) + suffix).unlink()
            return self._connect()

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(str(self.path), timeout=10.0, check_same_thread=False)
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
            # Baselines read a few recent rows per database; SQLite's default
            # 2 MB page cache would only fill, page by page, as history grows.
            con.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            version = con.execute("PRAGMA user_version").fetchone()[0]
            with con:
                for stmt in _DDL:
                    con.execute(stmt)
                if version < _SCHEMA_VERSION:
                    con.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        except sqlite3.DatabaseError:
            con.close()
            raise
        with contextlib.suppress(OSError):
            self.path.chmod(0o600)  # table names and sizes are nobody else's business
        return con

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._con:
            yield self._con

    def close(self) -> None:
        with self._lock:
            self._con.close()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- backups ------------------------------------------------------------

    def record_backup(
        self,
        database_id: str,
        *,
        when: Optional[dt.datetime] = None,
        dump_size: Optional[int] = None,
        compressed_size: Optional[int] = None,
        row_counts: Optional[Dict[str, int]] = None,
    ) -> None:
        """Remember a successful backup, then trim this database's history."""
        ts = _to_ms(when or _now())
        counts = {str(k): int(v) for k, v in (row_counts or {}).items()}
        with self._tx() as con:
            con.execute(
                "INSERT INTO backups (database_id, ts_ms, dump_size, compressed_size, row_counts)"
                " VALUES (?, ?, ?, ?, ?)",
                (database_id, ts, dump_size, compressed_size, canonical_json(counts)),
            )
            self._trim(con, database_id, ts)

    def _trim(self, con: sqlite3.Connection, database_id: str, now_ms: int) -> None:
        cutoff = now_ms - self.max_age_days * 86_400_000
        con.execute("DELETE FROM backups WHERE ts_ms < ?", (cutoff,))
        con.execute("DELETE FROM schemas WHERE ts_ms < ?", (cutoff,))
        con.execute(
            "DELETE FROM backups WHERE database_id = ? AND id NOT IN ("
            " SELECT id FROM backups WHERE database_id = ? ORDER BY ts_ms DESC, id DESC LIMIT ?)",
            (database_id, database_id, self.max_rows_per_database),
        )

    def backups(
        self,
        database_id: str,
        *,
        since: Optional[dt.datetime] = None,
        until: Optional[dt.datetime] = None,
        row_counts: bool = True,
        latest: Optional[int] = None,
    ) -> List[BackupSample]:
        """Samples of one database, oldest first, with ``since <= timestamp <= until``.

        ``row_counts=False`` skips reading the per-table counts: the size
        statistics do not need them, and parsing hundreds of them per sample
        is most of the cost of a query. ``latest=N`` keeps only the newest N:
        what a backup reads stays the same size however often it runs (a
        per-minute schedule would otherwise read up to the per-database cap,
        5000 rows, after every backup).
        """
        sql = _SELECT_BACKUPS if row_counts else _SELECT_SIZES
        args: List[Any] = [database_id]
        if since is not None:
            sql += " AND ts_ms >= ?"
            args.append(_to_ms(since))
        if until is not None:
            sql += " AND ts_ms <= ?"
            args.append(_to_ms(until))
        if latest is not None:
            sql += " ORDER BY ts_ms DESC, id DESC LIMIT ?"
            args.append(max(0, latest))
        else:
            sql += " ORDER BY ts_ms, id"
        with self._lock:
            rows = self._con.execute(sql, args).fetchall()
        if latest is not None:
            rows.reverse()
        return [self._sample(row) for row in rows]

    def last_backup(
        self, database_id: str, *, before: Optional[dt.datetime] = None
    ) -> Optional[BackupSample]:
        sql = _SELECT_BACKUPS
        args: List[Any] = [database_id]
        if before is not None:
            sql += " AND ts_ms <= ?"
            args.append(_to_ms(before))
        sql += " ORDER BY ts_ms DESC, id DESC LIMIT 1"
        with self._lock:
            row = self._con.execute(sql, args).fetchone()
        return self._sample(row) if row else None

    @staticmethod
    def _sample(row: Any) -> BackupSample:
        try:
            counts = json.loads(row[3]) or {}
        except ValueError:
            counts = {}
        return BackupSample(
            timestamp=_from_ms(row[0]),
            dump_size=row[1],
            compressed_size=row[2],
            row_counts={str(k): int(v) for k, v in counts.items()},
        )

    # -- schemas ------------------------------------------------------------

    def latest_schema(self, database_id: str) -> Optional[SchemaRecord]:
        with self._lock:
            row = self._con.execute(
                "SELECT ts_ms, hash, snapshot FROM schemas WHERE database_id = ?", (database_id,)
            ).fetchone()
        if row is None:
            return None
        try:
            snapshot = json.loads(row[2])
        except ValueError:
            return None  # unreadable: as if there were none, the next save replaces it
        return SchemaRecord(timestamp=_from_ms(row[0]), hash=row[1], snapshot=snapshot)

    def save_schema(
        self, database_id: str, snapshot: Dict[str, Any], *, when: Optional[dt.datetime] = None
    ) -> str:
        """Replace the database's latest snapshot; returns its hash."""
        digest = schema_hash(snapshot)
        with self._tx() as con:
            con.execute(
                "INSERT INTO schemas (database_id, ts_ms, hash, snapshot) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(database_id) DO UPDATE SET"
                " ts_ms = excluded.ts_ms, hash = excluded.hash, snapshot = excluded.snapshot",
                (database_id, _to_ms(when or _now()), digest, canonical_json(snapshot)),
            )
        return digest

    def database_ids(self) -> List[str]:
        with self._lock:
            rows = self._con.execute(
                "SELECT database_id FROM backups UNION SELECT database_id FROM schemas ORDER BY 1"
            ).fetchall()
        return [r[0] for r in rows]
