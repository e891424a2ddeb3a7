"""Per-engine contract of a verification container: env, readiness, restore, queries.

Everything runs *inside* the container through ``docker exec`` with argv
lists (no shell around user data), against the server on the container's own
loopback/socket. The environment variables are the official images' own
contract (``POSTGRES_*``, ``MARIADB_*``/``MYSQL_*``), so the same code works
with ``postgres:15`` from Docker Hub, a private mirror of it, or the locally
built test images. The container has no network, so the superuser needs no
password: trust/empty-password auth cannot be reached from anywhere else.

The queries are the engines' own (row counts, schema snapshot), so restored
values are comparable with what the dump recorded.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any, Dict, Iterable, List, Optional

from backupagent.verify.container import ExecResult, ManagedContainer
from backupagent.verify.errors import (
    VERIFY_QUERY_FAIL,
    VERIFY_RESTORE_FAIL,
    VERIFY_UNSUPPORTED,
    VerifyError,
)

READY_TIMEOUT = 180.0
_SAFE_DB = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_$-]{0,62}$")


def _tail(res: ExecResult, limit: int = 1500) -> str:
    text = (res.err_text or res.text).strip()
    return ("..." + text[-limit:]) if len(text) > limit else (text or "no output")


class Dialect:
    """Base: what one engine needs from its container."""

    db_type = ""
    has_schema = True

    def __init__(self, database_name: str) -> None:
        self.database_name = database_name

    def environment(self) -> Dict[str, str]:
        return {}

    def command(self) -> Optional[List[str]]:
        return None

    def wait_ready(self, box: ManagedContainer, timeout: float = READY_TIMEOUT) -> None:
        raise NotImplementedError

    def restore(self, box: ManagedContainer, chunks: Iterable[bytes], on_sent: Any = None) -> None:
        raise NotImplementedError

    def row_counts(self, box: ManagedContainer) -> Dict[str, int]:
        raise NotImplementedError

    def schema_snapshot(self, box: ManagedContainer) -> Optional[Dict[str, Any]]:
        return None

    def custom_query(self, box: ManagedContainer, query: str) -> str:
        raise NotImplementedError

    def _query_error(self, what: str, res: ExecResult) -> VerifyError:
        return VerifyError(
            f"{what} in the verification container failed (exit {res.exit_code}): {_tail(res)}",
            code=VERIFY_QUERY_FAIL,
        )


# -- PostgreSQL -------------------------------------------------------------------


class PostgresDialect(Dialect):
    db_type = "postgresql"
    SOCKET_DIR = "/var/run/postgresql"

    def __init__(self, database_name: str) -> None:
        super().__init__(database_name or "postgres")

    def environment(self) -> Dict[str, str]:
        # POSTGRES_PASSWORD is required by the official image even with trust auth.
        import secrets

        return {
            "POSTGRES_PASSWORD": secrets.token_hex(16),
            "POSTGRES_HOST_AUTH_METHOD": "trust",
            "POSTGRES_USER": "postgres",
            "POSTGRES_DB": self.database_name,
        }

    def _conninfo(self) -> str:
        from backupagent.engines.base import ConnectionSpec
        from backupagent.engines.postgresql import conninfo

        spec = ConnectionSpec(
            db_type="postgresql",
            socket=self.SOCKET_DIR,
            port="5432",
            user="postgres",
            database_name=self.database_name,
        )
        return conninfo(spec, client_encoding="UTF8")

    def wait_ready(self, box: ManagedContainer, timeout: float = READY_TIMEOUT) -> None:
        # TCP on loopback: the official entrypoint's init-time server listens on
        # the socket only, so this succeeds only once the real server is up.
        probe = ["pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432", "-U", "postgres"]
        box.wait_ready(probe, timeout, "PostgreSQL")

    def restore(self, box: ManagedContainer, chunks: Iterable[bytes], on_sent: Any = None) -> None:
        # --no-owner/--no-privileges: the source's roles do not exist here;
        # --no-subscriptions: a restored subscription would try to connect out.
        argv = [
            "pg_restore",
            "--no-owner",
            "--no-privileges",
            "--no-subscriptions",
            "--exit-on-error",
            "--no-password",
            f"--dbname={self._conninfo()}",
        ]
        res = box.exec(argv, stdin=chunks, on_sent=on_sent)
        if res.exit_code != 0:
            raise VerifyError(
                f"pg_restore in the verification container failed (exit {res.exit_code}): "
                f"{_tail(res)}",
                code=VERIFY_RESTORE_FAIL,
            )

    def _psql(
        self, box: ManagedContainer, sql: str, what: str, env: Optional[Dict[str, str]] = None
    ) -> str:
        argv = ["psql", "-X", "-q", "-A", "-t", "-w", "-v", "ON_ERROR_STOP=1"]
        argv.append(f"--dbname={self._conninfo()}")
        res = box.exec(argv, stdin=sql.encode("utf-8"), environment=env)
        if res.exit_code != 0:
            raise self._query_error(what, res)
        return res.text.strip()

    def row_counts(self, box: ManagedContainer) -> Dict[str, int]:
        from backupagent.engines.postgresql import COUNT_SQL

        out = self._psql(box, COUNT_SQL, "counting rows")
        return {k: int(v) for k, v in json.loads(out or "{}").items()}

    def schema_snapshot(self, box: ManagedContainer) -> Optional[Dict[str, Any]]:
        from backupagent.engines.base import sort_snapshot
        from backupagent.engines.postgresql import SCHEMA_SQL

        return sort_snapshot(json.loads(self._psql(box, SCHEMA_SQL, "schema snapshot") or "[]"))

    def custom_query(self, box: ManagedContainer, query: str) -> str:
        # Read-only twice over: the session default and the explicit transaction.
        sql = f"BEGIN TRANSACTION READ ONLY;\n{query.strip()}\n;\nROLLBACK;\n"
        env = {"PGOPTIONS": "-c default_transaction_read_only=on -c statement_timeout=300000"}
        return self._psql(box, sql, "custom query", env=env)


# -- MySQL / MariaDB ----------------------------------------------------------------


class MySQLDialect(Dialect):
    """``mysql:<v>`` and ``mariadb:<v>``: the same contract under two prefixes."""

    def __init__(self, database_name: str, flavor: str = "mariadb") -> None:
        super().__init__(database_name or "verify")
        self.db_type = flavor
        self.flavor = flavor

    @property
    def client(self) -> str:
        return "mariadb" if self.flavor == "mariadb" else "mysql"

    @property
    def admin(self) -> str:
        return "mariadb-admin" if self.flavor == "mariadb" else "mysqladmin"

    def environment(self) -> Dict[str, str]:
        if self.flavor == "mariadb":
            return {
                "MARIADB_ALLOW_EMPTY_ROOT_PASSWORD": "1",
                "MARIADB_DATABASE": self.database_name,
            }
        return {"MYSQL_ALLOW_EMPTY_PASSWORD": "yes", "MYSQL_DATABASE": self.database_name}

    def _conn(self) -> List[str]:
        # TCP on loopback: the entrypoint's init-time server has networking off.
        return ["--user=root", "--host=127.0.0.1", "--port=3306", "--protocol=TCP"]

    def wait_ready(self, box: ManagedContainer, timeout: float = READY_TIMEOUT) -> None:
        # `ping` exits 0 whenever the server answers; the query proves the
        # database the entrypoint creates exists (init finished).
        probe = [self.client, *self._conn(), "--batch", "-e", "SELECT 1", self.database_name]
        box.wait_ready(probe, timeout, "MariaDB" if self.flavor == "mariadb" else "MySQL")

    def restore(self, box: ManagedContainer, chunks: Iterable[bytes], on_sent: Any = None) -> None:
        argv = [self.client, *self._conn(), "--binary-mode", self.database_name]
        res = box.exec(argv, stdin=chunks, on_sent=on_sent)
        if res.exit_code != 0:
            raise VerifyError(
                f"{self.client} restore in the verification container failed "
                f"(exit {res.exit_code}): {_tail(res)}",
                code=VERIFY_RESTORE_FAIL,
            )

    def _rows(self, box: ManagedContainer, sql: str, what: str) -> List[List[str]]:
        argv = [self.client, *self._conn(), "--batch", "--skip-column-names", self.database_name]
        res = box.exec(argv, stdin=sql.encode("utf-8"))
        if res.exit_code != 0:
            raise self._query_error(what, res)
        return [line.split("\t") for line in res.text.splitlines() if line]

    def row_counts(self, box: ManagedContainer) -> Dict[str, int]:
        from backupagent.engines.mysql import _TABLES_SQL, _ident, _unhex

        tables = [_unhex(r[0]) or "" for r in self._rows(box, _TABLES_SQL, "listing tables")]
        if not tables:
            return {}
        sql = "\n".join(f"SELECT COUNT(*) FROM {_ident(t)};" for t in tables)  # noqa: S608
        rows = self._rows(box, sql, "counting rows")
        if len(rows) != len(tables):
            raise VerifyError(
                f"counting rows: expected {len(tables)} results, got {len(rows)}",
                code=VERIFY_QUERY_FAIL,
            )
        return {t: int(r[0]) for t, r in zip(tables, rows)}

    def schema_snapshot(self, box: ManagedContainer) -> Optional[Dict[str, Any]]:
        from backupagent.engines.mysql import MySQLEngine

        # The engine builds the snapshot from two queries; run them here by
        # handing it a query function bound to this container.
        engine = MySQLEngine(self.flavor)

        def query_rows(_conn: Any, sql: str, **_kw: Any) -> List[List[str]]:
            return self._rows(box, sql, "schema snapshot")

        engine.query_rows = query_rows  # type: ignore[method-assign]
        engine._defaults = _no_defaults  # type: ignore[method-assign]
        return engine.schema_snapshot(None)  # type: ignore[arg-type]

    def custom_query(self, box: ManagedContainer, query: str) -> str:
        sql = (
            "SET SESSION TRANSACTION READ ONLY;\nSTART TRANSACTION READ ONLY;\n"
            f"{query.strip().rstrip(';')};\nROLLBACK;\n"
        )
        return "\n".join("\t".join(r) for r in self._rows(box, sql, "custom query"))


class _NoDefaults:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _no_defaults(*_a: Any, **_kw: Any) -> _NoDefaults:
    return _NoDefaults()


# -- Redis ---------------------------------------------------------------------------


class RedisDialect(Dialect):
    """Redis: the RDB goes into /data while the server runs without persistence,
    then a restart makes the server load it (the official image's layout)."""

    db_type = "redis"
    has_schema = False
    DATA_DIR = "/data"

    def command(self) -> Optional[List[str]]:
        # No save points: stopping the server must not overwrite the restored RDB.
        return [
            "redis-server",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self.DATA_DIR,
            "--dbfilename",
            "dump.rdb",
        ]

    def wait_ready(self, box: ManagedContainer, timeout: float = READY_TIMEOUT) -> None:
        # redis-cli exits 0 even on a LOADING error reply: check the answer.
        box.wait_ready(["redis-cli", "-p", "6379", "ping"], timeout, "Redis", expect="PONG")

    def restore(self, box: ManagedContainer, chunks: Iterable[bytes], on_sent: Any = None) -> None:
        tmp = f"{self.DATA_DIR}/.restore.rdb"
        res = box.exec(["dd", f"of={tmp}", "bs=1M", "status=none"], stdin=chunks, on_sent=on_sent)
        if res.exit_code != 0:
            raise VerifyError(
                f"writing the RDB into the verification container failed: {_tail(res)}",
                code=VERIFY_RESTORE_FAIL,
            )
        res = box.exec(["mv", "-f", tmp, f"{self.DATA_DIR}/dump.rdb"])
        if res.exit_code != 0:
            raise VerifyError(f"placing the RDB failed: {_tail(res)}", code=VERIFY_RESTORE_FAIL)
        box.restart()
        self.wait_ready(box)
        info = box.exec(["redis-cli", "-p", "6379", "INFO", "persistence"])
        if "loading:0" not in info.text:
            raise VerifyError(
                f"Redis did not load the RDB: {_tail(info)}\n{box.logs_tail()}",
                code=VERIFY_RESTORE_FAIL,
            )

    def row_counts(self, box: ManagedContainer) -> Dict[str, int]:
        from backupagent.engines.redis import parse_keyspace

        res = box.exec(["redis-cli", "-p", "6379", "INFO", "keyspace"])
        if res.exit_code != 0:
            raise self._query_error("INFO keyspace", res)
        return parse_keyspace(res.text)

    def custom_query(self, box: ManagedContainer, query: str) -> str:
        args = shlex.split(query)
        if not args:
            raise VerifyError("custom_query: the Redis command is empty", code=VERIFY_QUERY_FAIL)
        info = box.exec(["redis-cli", "-p", "6379", "--raw", "COMMAND", "INFO", args[0]])
        flags = info.text.split()
        if "readonly" not in flags:
            raise VerifyError(
                f"custom_query: Redis command {args[0]!r} is not read-only; only commands "
                "flagged readonly (GET, DBSIZE, HGET, SCARD, ...) may be used",
                code=VERIFY_QUERY_FAIL,
            )
        res = box.exec(["redis-cli", "-p", "6379", "--raw", *args])
        if res.exit_code != 0 or res.text.startswith("ERR") or res.text.startswith("WRONGTYPE"):
            raise self._query_error("custom query", res)
        return res.text.strip()


def dialect_for(db_type: str, database_name: str) -> Dialect:
    """The container contract for ``db_type`` (SQLite has no server to verify in)."""
    from backupagent.verify.images import normalize_db_type

    kind = normalize_db_type(db_type)
    if kind == "postgresql":
        return PostgresDialect(database_name)
    if kind in ("mariadb", "mysql"):
        name = database_name if _SAFE_DB.match(database_name or "") else "verify"
        return MySQLDialect(name, kind)
    if kind == "redis":
        return RedisDialect(database_name)
    raise VerifyError(
        f"dbType {db_type!r} cannot be verified in a container (supported: postgresql, "
        "mariadb, mysql, redis); turn verification off for this schedule",
        code=VERIFY_UNSUPPORTED,
    )
