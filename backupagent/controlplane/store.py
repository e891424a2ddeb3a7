"""The control plane's SQLite store: everything the Agent API receives, and its answers.

One file, stdlib ``sqlite3`` in WAL mode, so ``backupagent-server`` needs no
database server and the admin CLI can read and write while the server runs.
One connection guarded by a lock serves every thread: the server handles
requests in a thread pool, and SQLite writes are serialized anyway.

Secrets are stored only as SHA-256 hashes (registration tokens, API keys), so
the file alone never lets anyone act as an agent.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from backupagent.controlplane.confighash import config_hash, config_problems, empty_config
from backupagent.controlplane.errors import ConfigDocInvalid, Conflict, NotFound, TokenRejected

API_KEY_PREFIX = "bak_"
REGISTRATION_TOKEN_PREFIX = "bart_"  # noqa: S105 (a prefix, not a secret)
JOB_STAGES = ("dumping", "compressing", "encrypting", "uploading")
JOB_TERMINAL = ("completed", "failed")
JOB_INITIAL_STATUS = "started"  # before the first status update; not an API value
DEFAULT_TOKEN_TTL = 24 * 3600.0
DEFAULT_MAX_REQUESTS = 10_000
DEFAULT_MAX_HEARTBEATS = 1_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS registration_tokens (
    token_hash TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    expires_at REAL NOT NULL,
    used_at TEXT,
    used_by_agent TEXT
);
CREATE TABLE IF NOT EXISTS agents (
    id TEXT PRIMARY KEY,
    hostname TEXT NOT NULL,
    os TEXT NOT NULL,
    arch TEXT NOT NULL,
    agent_version TEXT NOT NULL,
    api_key_hash TEXT NOT NULL UNIQUE,
    registered_at TEXT NOT NULL,
    last_heartbeat_at TEXT,
    last_status TEXT,
    reported_config_hash TEXT
);
CREATE TABLE IF NOT EXISTS discovered_databases (
    agent_id TEXT NOT NULL REFERENCES agents(id),
    position INTEGER NOT NULL,
    db_type TEXT NOT NULL,
    db_version TEXT NOT NULL,
    host TEXT NOT NULL,
    port TEXT NOT NULL,
    database_name TEXT NOT NULL,
    reported_at TEXT NOT NULL,
    PRIMARY KEY (agent_id, position)
);
CREATE TABLE IF NOT EXISTS heartbeats (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    agent_id TEXT NOT NULL REFERENCES agents(id),
    received_at TEXT NOT NULL,
    received_epoch REAL NOT NULL,
    status TEXT NOT NULL,
    agent_version TEXT NOT NULL,
    config_hash TEXT,
    config_changed INTEGER NOT NULL,
    discovered_count INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS heartbeats_agent ON heartbeats(agent_id, id);
CREATE TABLE IF NOT EXISTS configs (
    agent_id TEXT PRIMARY KEY,
    doc TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL REFERENCES agents(id),
    database_id TEXT NOT NULL,
    target_id TEXT NOT NULL,
    schedule_id TEXT,
    status TEXT NOT NULL,
    dump_size INTEGER,
    compressed_size INTEGER,
    upload_path TEXT,
    duration_ms INTEGER,
    error_code TEXT,
    error_message TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_agent ON jobs(agent_id, created_at);
CREATE TABLE IF NOT EXISTS job_status_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL REFERENCES jobs(id),
    status TEXT NOT NULL,
    body TEXT NOT NULL,
    received_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS job_status_history_job ON job_status_history(job_id, id);
CREATE TABLE IF NOT EXISTS verifications (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL REFERENCES jobs(id),
    agent_id TEXT NOT NULL REFERENCES agents(id),
    status TEXT NOT NULL,
    container_id TEXT NOT NULL,
    restore_duration_ms INTEGER NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS verification_checks (
    verification_id TEXT NOT NULL REFERENCES verifications(id),
    position INTEGER NOT NULL,
    check_type TEXT NOT NULL,
    check_name TEXT NOT NULL,
    status TEXT NOT NULL,
    expected_value TEXT,
    actual_value TEXT,
    delta_pct REAL,
    PRIMARY KEY (verification_id, position)
);
CREATE TABLE IF NOT EXISTS job_logs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL REFERENCES jobs(id),
    level TEXT NOT NULL,
    message TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    received_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS job_logs_job ON job_logs(job_id, id);
CREATE TABLE IF NOT EXISTS schema_snapshots (
    id TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL REFERENCES agents(id),
    database_id TEXT NOT NULL,
    snapshot TEXT NOT NULL,
    table_count INTEGER NOT NULL,
    column_count INTEGER NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS anomalies (
    id TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL REFERENCES agents(id),
    type TEXT NOT NULL,
    severity TEXT NOT NULL,
    title TEXT NOT NULL,
    description TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at TEXT NOT NULL,
    received_epoch REAL NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    query TEXT NOT NULL,
    headers TEXT NOT NULL,
    auth_present INTEGER NOT NULL,
    auth_valid INTEGER NOT NULL,
    agent_id TEXT,
    status_code INTEGER NOT NULL,
    body TEXT,
    duration_ms REAL NOT NULL
);
"""

Row = Dict[str, Any]


def sha256_hex(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def iso_utc(epoch: float) -> str:
    """RFC 3339 UTC with milliseconds and ``Z``: the protocol's timestamp form."""
    dt = datetime.fromtimestamp(epoch, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


class Store:
    """All persistent state of one control plane.

    ``clock`` returns epoch seconds; tests inject one to expire tokens without
    sleeping.
    """

    def __init__(
        self,
        path: Union[str, Path],
        *,
        clock: Callable[[], float] = time.time,
        max_requests: int = DEFAULT_MAX_REQUESTS,
        max_heartbeats_per_agent: int = DEFAULT_MAX_HEARTBEATS,
    ) -> None:
        self.path = str(path)
        self.clock = clock
        self.max_requests = max_requests
        self.max_heartbeats_per_agent = max_heartbeats_per_agent
        self._lock = threading.RLock()
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE), so
        # a read-modify-write like token redemption cannot interleave with
        # another process (the admin CLI) writing the same file.
        self._conn = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None, timeout=10.0
        )
        self._conn.row_factory = sqlite3.Row
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL, not the default FULL: in WAL mode a commit then survives a
            # crash of this process (not a power cut) without an fsync per
            # request; this is a test server, and the fsyncs were a share of
            # every agent report's round trip.
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._conn.execute("PRAGMA busy_timeout=10000")
            self._conn.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -------------------------------------------------------------

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _query(self, sql: str, args: Sequence[Any] = ()) -> List[sqlite3.Row]:
        with self._lock:
            return list(self._conn.execute(sql, args))

    def _now(self) -> Tuple[float, str]:
        epoch = self.clock()
        return epoch, iso_utc(epoch)

    # -- registration ---------------------------------------------------------

    def create_registration_token(self, ttl_seconds: float = DEFAULT_TOKEN_TTL) -> str:
        """A new one-time token; only its hash is kept, so this is the one chance to see it."""
        if ttl_seconds <= 0:
            raise ValueError(f"ttl_seconds must be positive, got {ttl_seconds}")
        token = REGISTRATION_TOKEN_PREFIX + secrets.token_urlsafe(32)
        epoch, now = self._now()
        with self._tx() as db:
            db.execute(
                "INSERT INTO registration_tokens (token_hash, created_at, expires_at)"
                " VALUES (?, ?, ?)",
                (sha256_hex(token), now, epoch + ttl_seconds),
            )
        return token

    def list_registration_tokens(self) -> List[Row]:
        now = self.clock()
        return [
            {
                "tokenHashPrefix": r["token_hash"][:12],
                "createdAt": r["created_at"],
                "expiresAt": iso_utc(r["expires_at"]),
                "usedAt": r["used_at"],
                "usedByAgent": r["used_by_agent"],
                "state": _token_state(r, now),
            }
            for r in self._query("SELECT * FROM registration_tokens ORDER BY created_at")
        ]

    def register_agent(
        self, token: str, *, hostname: str, os: str, arch: str, agent_version: str
    ) -> Tuple[str, str]:
        """Redeem ``token`` for a new agent; returns ``(agent_id, api_key)``.

        Redemption and agent creation are one transaction: a rejected token
        writes nothing, and a token can never register two agents.
        """
        epoch, now = self._now()
        agent_id = str(uuid.uuid4())
        api_key = API_KEY_PREFIX + secrets.token_urlsafe(32)
        with self._tx() as db:
            row = db.execute(
                "SELECT * FROM registration_tokens WHERE token_hash = ?", (sha256_hex(token),)
            ).fetchone()
            if row is None:
                raise TokenRejected("registration token is not valid")
            if row["used_at"] is not None:
                raise TokenRejected("registration token has already been used")
            if row["expires_at"] <= epoch:
                raise TokenRejected(
                    f"registration token expired at {iso_utc(row['expires_at'])}; create a new one"
                )
            db.execute(
                "UPDATE registration_tokens SET used_at = ?, used_by_agent = ?"
                " WHERE token_hash = ?",
                (now, agent_id, row["token_hash"]),
            )
            db.execute(
                "INSERT INTO agents (id, hostname, os, arch, agent_version, api_key_hash,"
                " registered_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (agent_id, hostname, os, arch, agent_version, sha256_hex(api_key), now),
            )
        return agent_id, api_key

    def agent_id_for_key(self, api_key: str) -> Optional[str]:
        rows = self._query("SELECT id FROM agents WHERE api_key_hash = ?", (sha256_hex(api_key),))
        return rows[0]["id"] if rows else None

    # -- agents ---------------------------------------------------------------

    def get_agent(self, agent_id: str) -> Optional[Row]:
        rows = self._query("SELECT * FROM agents WHERE id = ?", (agent_id,))
        return self._agent_row(rows[0]) if rows else None

    def list_agents(self) -> List[Row]:
        return [
            self._agent_row(r) for r in self._query("SELECT * FROM agents ORDER BY registered_at")
        ]

    def _agent_row(self, r: sqlite3.Row) -> Row:
        stored = self.config_hash(r["id"])
        return {
            "agentId": r["id"],
            "hostname": r["hostname"],
            "os": r["os"],
            "arch": r["arch"],
            "agentVersion": r["agent_version"],
            "registeredAt": r["registered_at"],
            "lastHeartbeatAt": r["last_heartbeat_at"],
            "lastStatus": r["last_status"],
            "reportedConfigHash": r["reported_config_hash"],
            "configHash": stored,
            "configInSync": r["reported_config_hash"] == stored,
            "discoveredDatabases": self.discovered_databases(r["id"]),
        }

    def record_heartbeat(
        self,
        agent_id: str,
        *,
        status: str,
        agent_version: str,
        config_hash: Optional[str],
        discovered: Optional[List[Dict[str, str]]],
    ) -> bool:
        """Store a heartbeat; returns ``configChanged``.

        A missing ``discoveredDatabases`` keeps the last list (the reference's
        own example omits it); an empty list clears it.
        """
        epoch, now = self._now()
        changed = (config_hash or "") != self.config_hash(agent_id)
        with self._tx() as db:
            db.execute(
                "UPDATE agents SET last_heartbeat_at = ?, last_status = ?, agent_version = ?,"
                " reported_config_hash = ? WHERE id = ?",
                (now, status, agent_version, config_hash, agent_id),
            )
            if discovered is not None:
                db.execute("DELETE FROM discovered_databases WHERE agent_id = ?", (agent_id,))
                db.executemany(
                    "INSERT INTO discovered_databases VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            agent_id,
                            i,
                            d["dbType"],
                            d["dbVersion"],
                            d["host"],
                            d["port"],
                            d["databaseName"],
                            now,
                        )
                        for i, d in enumerate(discovered)
                    ],
                )
            db.execute(
                "INSERT INTO heartbeats (agent_id, received_at, received_epoch, status,"
                " agent_version, config_hash, config_changed, discovered_count)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    agent_id,
                    now,
                    epoch,
                    status,
                    agent_version,
                    config_hash,
                    int(changed),
                    -1 if discovered is None else len(discovered),
                ),
            )
            db.execute(
                "DELETE FROM heartbeats WHERE agent_id = ? AND id <= (SELECT id FROM heartbeats"
                " WHERE agent_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (agent_id, agent_id, self.max_heartbeats_per_agent),
            )
        return changed

    def list_heartbeats(self, agent_id: str) -> List[Row]:
        return [
            {
                "receivedAt": r["received_at"],
                "receivedEpoch": r["received_epoch"],
                "status": r["status"],
                "agentVersion": r["agent_version"],
                "configHash": r["config_hash"],
                "configChanged": bool(r["config_changed"]),
                "discoveredCount": None if r["discovered_count"] < 0 else r["discovered_count"],
            }
            for r in self._query(
                "SELECT * FROM heartbeats WHERE agent_id = ? ORDER BY id", (agent_id,)
            )
        ]

    def discovered_databases(self, agent_id: str) -> List[Row]:
        return [
            {
                "dbType": r["db_type"],
                "dbVersion": r["db_version"],
                "host": r["host"],
                "port": r["port"],
                "databaseName": r["database_name"],
            }
            for r in self._query(
                "SELECT * FROM discovered_databases WHERE agent_id = ? ORDER BY position",
                (agent_id,),
            )
        ]

    # -- config ---------------------------------------------------------------

    def get_config(self, agent_id: str) -> Dict[str, Any]:
        rows = self._query("SELECT doc FROM configs WHERE agent_id = ?", (agent_id,))
        return json.loads(rows[0]["doc"]) if rows else empty_config()

    def config_hash(self, agent_id: str) -> str:
        rows = self._query("SELECT config_hash FROM configs WHERE agent_id = ?", (agent_id,))
        return rows[0]["config_hash"] if rows else config_hash(empty_config())

    def set_config(self, agent_id: str, doc: Any, *, check_items: bool = True) -> str:
        """Replace the agent's config; returns its hash. The agent sees it at its next heartbeat."""
        if self.get_agent(agent_id) is None:
            raise NotFound(f"agent {agent_id!r} is not registered (see `agents list`)")
        problems = config_problems(doc, check_items=check_items)
        if problems:
            raise ConfigDocInvalid(problems)
        digest = config_hash(doc)
        _, now = self._now()
        with self._tx() as db:
            db.execute(
                "INSERT INTO configs (agent_id, doc, config_hash, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(agent_id) DO UPDATE SET doc = excluded.doc,"
                " config_hash = excluded.config_hash, updated_at = excluded.updated_at",
                (agent_id, json.dumps(doc, ensure_ascii=False), digest, now),
            )
        return digest

    # -- jobs -----------------------------------------------------------------

    def start_job(
        self, agent_id: str, *, database_id: str, target_id: str, schedule_id: Optional[str]
    ) -> str:
        job_id = str(uuid.uuid4())
        initial = JOB_INITIAL_STATUS
        _, now = self._now()
        with self._tx() as db:
            db.execute(
                "INSERT INTO jobs (id, agent_id, database_id, target_id, schedule_id, status,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, agent_id, database_id, target_id, schedule_id, initial, now, now),
            )
        return job_id

    def _owned_job(self, db: sqlite3.Connection, agent_id: str, job_id: str) -> sqlite3.Row:
        row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None or row["agent_id"] != agent_id:
            raise NotFound(f"job {job_id!r} not found")
        return row

    def update_job_status(self, agent_id: str, job_id: str, update: Dict[str, Any]) -> None:
        """Apply one status update (the request body, as sent) and append it to the history.

        Stages may be skipped (``encrypting`` is omitted for unencrypted targets)
        or repeated (a retried request), never go backwards; nothing follows a
        terminal status.
        """
        status = update["status"]
        _, now = self._now()
        with self._tx() as db:
            job = self._owned_job(db, agent_id, job_id)
            current = job["status"]
            if current in JOB_TERMINAL:
                raise Conflict(
                    f"job {job_id} is already {current}; no status update may follow a terminal one"
                )
            if (
                status in JOB_STAGES
                and current in JOB_STAGES
                and JOB_STAGES.index(status) < JOB_STAGES.index(current)
            ):
                raise Conflict(
                    f"status {status!r} after {current!r} goes backwards; stages are reported"
                    f" in the order {', '.join(JOB_STAGES)}"
                )
            fields = {
                "dump_size": update.get("dumpSize"),
                "compressed_size": update.get("compressedSize"),
                "upload_path": update.get("uploadPath"),
                "duration_ms": update.get("durationMs"),
                "error_code": update.get("errorCode"),
                "error_message": update.get("errorMessage"),
            }
            sets = ", ".join(f"{k} = COALESCE(?, {k})" for k in fields)
            db.execute(
                f"UPDATE jobs SET status = ?, updated_at = ?, {sets} WHERE id = ?",  # noqa: S608 (column names are constants)
                (status, now, *fields.values(), job_id),
            )
            db.execute(
                "INSERT INTO job_status_history (job_id, status, body, received_at)"
                " VALUES (?, ?, ?, ?)",
                (job_id, status, json.dumps(update, ensure_ascii=False), now),
            )

    def get_job(self, job_id: str) -> Optional[Row]:
        rows = self._query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return self._job_row(rows[0]) if rows else None

    def list_jobs(self, agent_id: Optional[str] = None) -> List[Row]:
        if agent_id is None:
            rows = self._query("SELECT * FROM jobs ORDER BY created_at, rowid")
        else:
            rows = self._query(
                "SELECT * FROM jobs WHERE agent_id = ? ORDER BY created_at, rowid", (agent_id,)
            )
        return [self._job_row(r) for r in rows]

    def job_history(self, job_id: str) -> List[Row]:
        return [
            {"status": r["status"], "receivedAt": r["received_at"], "body": json.loads(r["body"])}
            for r in self._query(
                "SELECT * FROM job_status_history WHERE job_id = ? ORDER BY id", (job_id,)
            )
        ]

    def _job_row(self, r: sqlite3.Row) -> Row:
        return {
            "jobId": r["id"],
            "agentId": r["agent_id"],
            "databaseId": r["database_id"],
            "targetId": r["target_id"],
            "scheduleId": r["schedule_id"],
            "status": r["status"],
            "dumpSize": r["dump_size"],
            "compressedSize": r["compressed_size"],
            "uploadPath": r["upload_path"],
            "durationMs": r["duration_ms"],
            "errorCode": r["error_code"],
            "errorMessage": r["error_message"],
            "createdAt": r["created_at"],
            "updatedAt": r["updated_at"],
            "history": self.job_history(r["id"]),
        }

    # -- verifications --------------------------------------------------------

    def add_verification(self, agent_id: str, job_id: str, report: Dict[str, Any]) -> str:
        """Store a restore verification; only a completed job has a backup to verify."""
        verification_id = str(uuid.uuid4())
        _, now = self._now()
        with self._tx() as db:
            job = self._owned_job(db, agent_id, job_id)
            if job["status"] != "completed":
                raise Conflict(
                    f"job {job_id} is {job['status']}; only a completed job can be verified"
                )
            db.execute(
                "INSERT INTO verifications VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    verification_id,
                    job_id,
                    agent_id,
                    report["status"],
                    report["containerId"],
                    report["restoreDurationMs"],
                    now,
                ),
            )
            db.executemany(
                "INSERT INTO verification_checks VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        verification_id,
                        i,
                        c["checkType"],
                        c["checkName"],
                        c["status"],
                        c.get("expectedValue"),
                        c.get("actualValue"),
                        c.get("deltaPct"),
                    )
                    for i, c in enumerate(report["checks"])
                ],
            )
        return verification_id

    def list_verifications(self, job_id: Optional[str] = None) -> List[Row]:
        if job_id is None:
            rows = self._query("SELECT * FROM verifications ORDER BY created_at, rowid")
        else:
            rows = self._query(
                "SELECT * FROM verifications WHERE job_id = ? ORDER BY created_at, rowid", (job_id,)
            )
        out = []
        for r in rows:
            checks = [
                {
                    "checkType": c["check_type"],
                    "checkName": c["check_name"],
                    "status": c["status"],
                    "expectedValue": c["expected_value"],
                    "actualValue": c["actual_value"],
                    "deltaPct": c["delta_pct"],
                }
                for c in self._query(
                    "SELECT * FROM verification_checks WHERE verification_id = ? ORDER BY position",
                    (r["id"],),
                )
            ]
            out.append(
                {
                    "verificationId": r["id"],
                    "jobId": r["job_id"],
                    "agentId": r["agent_id"],
                    "status": r["status"],
                    "containerId": r["container_id"],
                    "restoreDurationMs": r["restore_duration_ms"],
                    "createdAt": r["created_at"],
                    "checks": checks,
                }
            )
        return out

    # -- logs -----------------------------------------------------------------

    def add_logs(self, agent_id: str, job_id: str, logs: List[Dict[str, str]]) -> int:
        _, now = self._now()
        with self._tx() as db:
            self._owned_job(db, agent_id, job_id)
            db.executemany(
                "INSERT INTO job_logs (job_id, level, message, timestamp, received_at)"
                " VALUES (?, ?, ?, ?, ?)",
                [(job_id, e["level"], e["message"], e["timestamp"], now) for e in logs],
            )
        return len(logs)

    def job_logs(self, job_id: str) -> List[Row]:
        return [
            {
                "level": r["level"],
                "message": r["message"],
                "timestamp": r["timestamp"],
                "receivedAt": r["received_at"],
            }
            for r in self._query("SELECT * FROM job_logs WHERE job_id = ? ORDER BY id", (job_id,))
        ]

    # -- schema snapshots and anomalies ---------------------------------------

    def add_schema_snapshot(
        self,
        agent_id: str,
        *,
        database_id: str,
        snapshot: Dict[str, Any],
        table_count: int,
        column_count: int,
    ) -> str:
        snapshot_id = str(uuid.uuid4())
        _, now = self._now()
        with self._tx() as db:
            db.execute(
                "INSERT INTO schema_snapshots VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    snapshot_id,
                    agent_id,
                    database_id,
                    json.dumps(snapshot, ensure_ascii=False),
                    table_count,
                    column_count,
                    now,
                ),
            )
        return snapshot_id

    def list_schema_snapshots(self, agent_id: Optional[str] = None) -> List[Row]:
        sql = "SELECT * FROM schema_snapshots"
        args: Tuple[Any, ...] = ()
        if agent_id is not None:
            sql, args = sql + " WHERE agent_id = ?", (agent_id,)
        return [
            {
                "snapshotId": r["id"],
                "agentId": r["agent_id"],
                "databaseId": r["database_id"],
                "snapshot": json.loads(r["snapshot"]),
                "tableCount": r["table_count"],
                "columnCount": r["column_count"],
                "createdAt": r["created_at"],
            }
            for r in self._query(sql + " ORDER BY created_at, rowid", args)
        ]

    def add_anomaly(
        self, agent_id: str, *, type: str, severity: str, title: str, description: str
    ) -> str:
        anomaly_id = str(uuid.uuid4())
        _, now = self._now()
        with self._tx() as db:
            db.execute(
                "INSERT INTO anomalies VALUES (?, ?, ?, ?, ?, ?, ?)",
                (anomaly_id, agent_id, type, severity, title, description, now),
            )
        return anomaly_id

    def list_anomalies(self, agent_id: Optional[str] = None) -> List[Row]:
        sql = "SELECT * FROM anomalies"
        args: Tuple[Any, ...] = ()
        if agent_id is not None:
            sql, args = sql + " WHERE agent_id = ?", (agent_id,)
        return [
            {
                "anomalyId": r["id"],
                "agentId": r["agent_id"],
                "type": r["type"],
                "severity": r["severity"],
                "title": r["title"],
                "description": r["description"],
                "createdAt": r["created_at"],
            }
            for r in self._query(sql + " ORDER BY created_at, rowid", args)
        ]

    # -- request log (for tests) ----------------------------------------------

    def record_request(
        self,
        *,
        method: str,
        path: str,
        query: str,
        headers: List[Tuple[str, str]],
        auth_present: bool,
        auth_valid: bool,
        agent_id: Optional[str],
        status_code: int,
        body: Optional[str],
        received_epoch: float,
        duration_ms: float,
    ) -> None:
        """Keep what a client sent (never the Authorization value) for tests to assert on."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO requests (received_at, received_epoch, method, path, query, headers,"
                " auth_present, auth_valid, agent_id, status_code, body, duration_ms)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    iso_utc(received_epoch),
                    received_epoch,
                    method,
                    path,
                    query,
                    json.dumps(headers),
                    int(auth_present),
                    int(auth_valid),
                    agent_id,
                    status_code,
                    body,
                    duration_ms,
                ),
            )
            db.execute(
                "DELETE FROM requests WHERE id <= (SELECT MAX(id) FROM requests) - ?",
                (self.max_requests,),
            )

    def list_requests(
        self, *, path: Optional[str] = None, method: Optional[str] = None, since_id: int = 0
    ) -> List[Row]:
        """Recorded requests in arrival order; ``headers`` is a lower-cased name -> value dict."""
        sql, args = "SELECT * FROM requests WHERE id > ?", [since_id]
        if path is not None:
            sql += " AND path = ?"
            args.append(path)
        if method is not None:
            sql += " AND method = ?"
            args.append(method.upper())
        out = []
        for r in self._query(sql + " ORDER BY id", args):
            pairs = json.loads(r["headers"])
            out.append(
                {
                    "id": r["id"],
                    "receivedAt": r["received_at"],
                    "receivedEpoch": r["received_epoch"],
                    "method": r["method"],
                    "path": r["path"],
                    "query": r["query"],
                    "headers": {k: v for k, v in pairs},
                    "headerList": [tuple(p) for p in pairs],
                    "authPresent": bool(r["auth_present"]),
                    "authValid": bool(r["auth_valid"]),
                    "agentId": r["agent_id"],
                    "statusCode": r["status_code"],
                    "body": r["body"],
                    "json": _maybe_json(r["body"]),
                    "durationMs": r["duration_ms"],
                }
            )
        return out


def _token_state(row: sqlite3.Row, now: float) -> str:
    if row["used_at"]:
        return "used"
    return "expired" if row["expires_at"] <= now else "valid"


def _maybe_json(body: Optional[str]) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None
