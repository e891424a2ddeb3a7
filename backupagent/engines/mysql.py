"""MySQL and MariaDB: ``mariadb-dump``/``mysqldump`` SQL, credentials in a 0600 file.

Credentials go in a ``--defaults-extra-file`` that the plan deletes when it
closes; MySQL's tools only honour that option as the *first* argument. Row
counts come from a separate ``START TRANSACTION WITH CONSISTENT SNAPSHOT``
taken just before the dump, which is not the dump's own snapshot (the tools
cannot share one), so they are recorded as approximate.

Names come back from the server hex-encoded (``HEX(...)``) so that no table
or column name, whatever bytes it holds, can break the tab-separated output.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

from backupagent.engines.base import (
    AUTH_FAIL,
    DB_NOT_FOUND,
    DB_UNREACHABLE,
    DUMP_FAIL,
    PERMISSION_DENIED,
    RESTORE_FAIL,
    TOOL_MISSING,
    ConnectionSpec,
    DumpPlan,
    EngineError,
    remove_file,
    sort_snapshot,
    stderr_tail,
    write_secret_file,
)
from backupagent.engines.process import run_tool, tool_version_line

COUNT_CAVEAT = (
    "row counts come from a consistent-snapshot transaction taken just before the dump, "
    "not from the dump's own snapshot; rows written in between, and non-transactional "
    "(e.g. MyISAM) tables, may differ"
)

_TABLES_SQL = (
    "SELECT HEX(TABLE_NAME) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() "
    "AND TABLE_TYPE IN ('BASE TABLE', 'SYSTEM VERSIONED') ORDER BY TABLE_NAME"
)


def _option_value(value: str) -> str:
    """Quote a value for a MySQL option file (``\\`` and ``"`` escaped)."""
    escaped = (
        value.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    return f'"{escaped}"'


def option_file_text(conn: ConnectionSpec, *, include_password: bool = True) -> str:
    lines = ["[client]"]
    if conn.user:
        lines.append(f"user={_option_value(conn.user)}")
    if conn.password and include_password:
        lines.append(f"password={_option_value(conn.password)}")
    if conn.socket:
        lines.append(f"socket={_option_value(conn.socket)}")
    if conn.host:
        lines.append(f"host={_option_value(conn.host)}")
    if conn.port:
        lines.append(f"port={conn.port}")
    for key, value in sorted(conn.options.items()):
        if re.fullmatch(r"[a-z][a-z0-9_-]*", key) and key not in {"password", "user"}:
            lines.append(f"{key}={_option_value(value)}")
    return "\n".join(lines) + "\n"


def _ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _unhex(value: str) -> Optional[str]:
    if value == "NULL":
        return None
    return bytes.fromhex(value).decode("utf-8", errors="replace")


def classify(
    conn: ConnectionSpec, tool: str, returncode: int, stderr: Any, action: str
) -> EngineError:
    text = stderr_tail(stderr, conn.password)
    low = text.lower()
    where = conn.redacted_url()
    if returncode < 0:
        code = DUMP_FAIL if action == "dump" else RESTORE_FAIL
        return EngineError(
            f"{tool} {action} of {where} was killed by signal {-returncode}: {text}", code=code
        )
    if "(using password:" in low or "error 1045" in low or ("plugin" in low and "auth" in low):
        return EngineError(
            f"{tool} could not log in to {where}: {text} (fix the user/password in "
            "credentials.yaml or the MySQL option file)",
            code=AUTH_FAIL,
        )
    if "unknown database" in low or "error 1049" in low:
        return EngineError(f"{tool}: database not found at {where}: {text}", code=DB_NOT_FOUND)
    if any(
        s in low
        for s in (
            "can't connect",
            "lost connection",
            "unknown mysql server host",
            "unknown server host",
            "connection refused",
            "server has gone away",
        )
    ):
        return EngineError(f"{tool} cannot reach {where}: {text}", code=DB_UNREACHABLE)
    if "access denied" in low or "command denied" in low or "privilege" in low:
        return EngineError(
            f"{tool} {action} of {where}: {text} (grant the backup user SELECT, SHOW VIEW, "
            "TRIGGER, EVENT and LOCK TABLES on the database; see docs/engines.md)",
            code=PERMISSION_DENIED,
        )
    code = DUMP_FAIL if action in ("dump", "query") else RESTORE_FAIL
    return EngineError(f"{tool} {action} of {where} failed (exit {returncode}): {text}", code=code)


class MySQLEngine:
    """One engine for both; ``db_type`` only picks which tool name is tried first."""

    dump_format = "sql"
    file_extension = "sql"

    def __init__(self, db_type: str = "mysql") -> None:
        self.db_type = db_type

    # -- tools -------------------------------------------------------------

    def _tool(self, mariadb_name: str, mysql_name: str) -> str:
        names = (
            [mariadb_name, mysql_name] if self.db_type == "mariadb" else [mysql_name, mariadb_name]
        )
        for name in names:
            path = shutil.which(name)
            if path:
                return path
        raise EngineError(
            f"neither {mariadb_name} nor {mysql_name} found on PATH; install mariadb-client "
            "(or mysql-client)",
            code=TOOL_MISSING,
        )

    def dump_tool(self) -> str:
        return self._tool("mariadb-dump", "mysqldump")

    def client_tool(self) -> str:
        return self._tool("mariadb", "mysql")

    @contextmanager
    def _defaults(self, conn: ConnectionSpec, workdir: Optional[Path] = None) -> Iterator[Path]:
        if workdir is None:
            tmp = tempfile.mkdtemp(prefix="backupagent-my-")
            try:
                path = write_secret_file(Path(tmp), "client-", option_file_text(conn))
                yield path
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        else:
            path = write_secret_file(Path(workdir), ".my-client-", option_file_text(conn))
            try:
                yield path
            finally:
                remove_file(path)()

    def _client_argv(self, defaults: Path, conn: ConnectionSpec) -> List[str]:
        return [
            self.client_tool(),
            f"--defaults-extra-file={defaults}",  # must come first
            "--batch",
            "--raw",
            "--skip-column-names",
            "--connect-timeout=10",
            conn.database_name,
        ]

    def query_rows(
        self,
        conn: ConnectionSpec,
        sql: str,
        *,
        defaults: Optional[Path] = None,
        timeout: float = 300,
    ) -> List[List[str]]:
        """Run SQL (on stdin) with the client; return rows of tab-separated fields."""
        if defaults is None:
            with self._defaults(conn) as path:
                return self.query_rows(conn, sql, defaults=path, timeout=timeout)
        res = run_tool(
            self._client_argv(defaults, conn),
            dict(os.environ),
            input_data=sql.encode("utf-8"),
            timeout=timeout,
        )
        if res.returncode != 0:
            raise classify(
                conn, os.path.basename(self.client_tool()), res.returncode, res.stderr, "query"
            )
        out = res.stdout.decode("utf-8", errors="replace")
        return [line.split("\t") for line in out.splitlines() if line != ""]

    # -- queries -------------------------------------------------------------

    def server_version(self, conn: ConnectionSpec) -> str:
        return self.query_rows(conn, "SELECT VERSION()", timeout=60)[0][0]

    def tool_version(self) -> str:
        return tool_version_line([self.dump_tool(), "--version"])

    def _counts(self, conn: ConnectionSpec, defaults: Path) -> Dict[str, int]:
        tables = [_unhex(r[0]) or "" for r in self.query_rows(conn, _TABLES_SQL, defaults=defaults)]
        if not tables:
            return {}
        statements = [
            "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ;",
            "START TRANSACTION WITH CONSISTENT SNAPSHOT;",
        ]
        statements += [f"SELECT COUNT(*) FROM {_ident(t)};" for t in tables]  # noqa: S608
        statements.append("COMMIT;")
        rows = self.query_rows(conn, "\n".join(statements), defaults=defaults)
        if len(rows) != len(tables):
            raise EngineError(
                f"counting rows in {conn.redacted_url()}: expected {len(tables)} results, "
                f"got {len(rows)}",
                code=DUMP_FAIL,
            )
        return {t: int(r[0]) for t, r in zip(tables, rows)}

    def list_tables_with_counts(self, conn: ConnectionSpec) -> Dict[str, int]:
        with self._defaults(conn) as defaults:
            return self._counts(conn, defaults)

    def schema_snapshot(self, conn: ConnectionSpec) -> Dict[str, Any]:
        cols_sql = (
            "SELECT HEX(c.TABLE_SCHEMA), HEX(c.TABLE_NAME), HEX(c.COLUMN_NAME), "
            "HEX(c.COLUMN_TYPE), c.IS_NULLABLE, HEX(c.COLUMN_DEFAULT) "
            "FROM information_schema.COLUMNS c "
            "JOIN information_schema.TABLES t ON t.TABLE_SCHEMA = c.TABLE_SCHEMA "
            "AND t.TABLE_NAME = c.TABLE_NAME "
            "WHERE c.TABLE_SCHEMA = DATABASE() "
            "AND t.TABLE_TYPE IN ('BASE TABLE', 'SYSTEM VERSIONED') "
            "ORDER BY c.TABLE_NAME, c.ORDINAL_POSITION"
        )
        idx_sql = (
            "SELECT HEX(TABLE_NAME), HEX(INDEX_NAME), NON_UNIQUE, HEX(COALESCE(COLUMN_NAME, '')) "
            "FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() "
            "ORDER BY TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX"
        )
        with self._defaults(conn) as defaults:
            col_rows = self.query_rows(conn, cols_sql, defaults=defaults)
            idx_rows = self.query_rows(conn, idx_sql, defaults=defaults)
        tables: Dict[str, Dict[str, Any]] = {}
        for schema_hex, table_hex, col_hex, type_hex, nullable, default_hex in col_rows:
            table = _unhex(table_hex) or ""
            entry = tables.setdefault(
                table,
                {
                    "schema": _unhex(schema_hex) or "",
                    "name": table,
                    "columns": [],
                    "primaryKey": [],
                    "indexes": [],
                },
            )
            default = _unhex(default_hex)
            if default == "NULL":  # MariaDB spells a NULL default as the text NULL
                default = None
            entry["columns"].append(
                {
                    "name": _unhex(col_hex),
                    "type": _unhex(type_hex),
                    "nullable": nullable == "YES",
                    "default": default,
                }
            )
        indexes: Dict[Tuple[str, str], Dict[str, Any]] = {}
        for table_hex, index_hex, non_unique, col_hex in idx_rows:
            table, index = _unhex(table_hex) or "", _unhex(index_hex) or ""
            if table not in tables:
                continue
            idx = indexes.setdefault(
                (table, index), {"name": index, "columns": [], "unique": non_unique == "0"}
            )
            if not idx["columns"]:
                tables[table]["indexes"].append(idx)
            idx["columns"].append(_unhex(col_hex))
        for (table, index), idx in indexes.items():
            if index == "PRIMARY":
                tables[table]["primaryKey"] = list(idx["columns"])
        return sort_snapshot(list(tables.values()))

    def is_empty(self, conn: ConnectionSpec) -> bool:
        sql = (
            "SELECT (SELECT COUNT(*) FROM information_schema.TABLES"
            " WHERE TABLE_SCHEMA = DATABASE())"
            " + (SELECT COUNT(*) FROM information_schema.ROUTINES"
            " WHERE ROUTINE_SCHEMA = DATABASE())"
        )
        return int(self.query_rows(conn, sql, timeout=60)[0][0]) == 0

    # -- dump ----------------------------------------------------------------

    def dump_argv(self, defaults: Path, conn: ConnectionSpec) -> List[str]:
        tool = self.dump_tool()
        argv = [
            tool,
            f"--defaults-extra-file={defaults}",  # must come first
            "--single-transaction",
            "--routines",
            "--triggers",
            "--events",
            "--hex-blob",
            "--no-tablespaces",
            "--quick",
            "--default-character-set=utf8mb4",
        ]
        if "mariadb" not in os.path.realpath(tool).lower() and "MariaDB" not in self._tool_version(
            tool
        ):
            argv.append("--set-gtid-purged=OFF")  # MySQL's tool only: restorable elsewhere
        argv.append(conn.database_name)
        return argv

    @staticmethod
    def _tool_version(tool: str) -> str:
        try:
            return tool_version_line([tool, "--version"])
        except EngineError:
            return ""

    def prepare_dump(self, conn: ConnectionSpec, workdir: Path, cancel: Any = None) -> DumpPlan:
        defaults = write_secret_file(Path(workdir), ".my-dump-", option_file_text(conn))
        plan = DumpPlan(env=dict(os.environ), row_counts_exact=False)
        plan.add_cleanup(remove_file(defaults))
        try:
            version = self.query_rows(conn, "SELECT VERSION()", defaults=defaults)[0][0]
            plan.row_counts = self._counts(conn, defaults)
            plan.argv = self.dump_argv(defaults, conn)
            tool_line = self._tool_version(plan.argv[0])
        except BaseException:
            plan.close()
            raise
        plan.extra = {
            "serverVersion": version,
            "toolVersion": tool_line,
            "rowCountsSource": "consistent snapshot before the dump (approximate)",
            "rowCountsCaveat": COUNT_CAVEAT,
        }
        return plan

    # -- restore ---------------------------------------------------------------

    def restore_argv(self, conn: ConnectionSpec) -> Tuple[List[str], Dict[str, str]]:
        """Client reading SQL on stdin; the password travels in ``MYSQL_PWD``.

        With no place to clean up a temp file, the environment is the only
        secret-safe channel here; :meth:`prepare_restore` (a 0600 option file
        it deletes afterwards) is preferred where a workdir exists.
        """
        env = dict(os.environ)
        if conn.password:
            env["MYSQL_PWD"] = conn.password
        argv = [
            self.client_tool(),
            "--binary-mode",
            "--connect-timeout=10",
            *self._conn_args(conn),
            conn.database_name,
        ]
        return argv, env

    @staticmethod
    def _conn_args(conn: ConnectionSpec) -> List[str]:
        args: List[str] = []
        if conn.user:
            args.append(f"--user={conn.user}")
        if conn.socket:
            args.append(f"--socket={conn.socket}")
        if conn.host:
            args.append(f"--host={conn.host}")
        if conn.port:
            args.append(f"--port={conn.port}")
        return args

    def prepare_restore(self, conn: ConnectionSpec, workdir: Path) -> DumpPlan:
        defaults = write_secret_file(Path(workdir), ".my-restore-", option_file_text(conn))
        argv = [
            self.client_tool(),
            f"--defaults-extra-file={defaults}",  # must come first
            "--binary-mode",
            "--connect-timeout=10",
            conn.database_name,
        ]
        return DumpPlan(argv=argv, env=dict(os.environ), cleanups=[remove_file(defaults)])

    def classify_failure(
        self, conn: ConnectionSpec, returncode: int, stderr: Any, *, action: str = "dump"
    ) -> EngineError:
        try:
            path = self.dump_tool() if action == "dump" else self.client_tool()
            tool = os.path.basename(path)
        except EngineError:
            tool = "mysqldump" if action == "dump" else "mysql"
        return classify(conn, tool, returncode, stderr, action)
