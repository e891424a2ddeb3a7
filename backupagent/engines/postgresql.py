"""PostgreSQL: ``pg_dump`` custom format, counts from the dump's own snapshot.

The row counts recorded in the manifest are what verification later compares
to *exactly*, so they must describe the very data in the dump. A psql session
opens a REPEATABLE READ transaction and exports its snapshot; ``pg_dump
--snapshot`` reads that snapshot while the same session takes the schema
snapshot and counts every user table in it, beside the dump. Closing the plan
ends that transaction.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import threading
from functools import cache
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from backupagent.cancelwatch import CancelWatch
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
    sort_snapshot,
    stderr_tail,
)
from backupagent.engines.pg_session import PsqlSession
from backupagent.engines.process import run_tool

# Schemas pg_dump never dumps user data from.
_USER_SCHEMA = (
    "n.nspname NOT IN ('pg_catalog', 'information_schema') "
    "AND n.nspname !~ '^pg_toast' AND n.nspname !~ '^pg_temp_'"
)

# Every ordinary table (partitions included, partitioned parents excluded so
# no row is counted twice), counted with a dynamically built, %I-quoted
# statement. One statement, so one round trip even for thousands of tables.
COUNT_SQL = """
SELECT coalesce(json_object_agg(t.k, t.n ORDER BY t.k), '{}')
FROM (
  SELECT n.nspname || '.' || c.relname AS k,
         (xpath('/row/c/text()',
                query_to_xml(format('SELECT count(*) AS c FROM %I.%I', n.nspname, c.relname),
                             false, true, '')))[1]::text::bigint AS n
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relkind = 'r' AND __USER_SCHEMA__
) t
""".replace("__USER_SCHEMA__", _USER_SCHEMA)

SCHEMA_SQL = """
SELECT coalesce(json_agg(t ORDER BY t.schema, t.name), '[]')
FROM (
  SELECT n.nspname AS schema, c.relname AS name,
    (SELECT coalesce(json_agg(json_build_object(
              'name', a.attname,
              'type', format_type(a.atttypid, a.atttypmod),
              'nullable', NOT a.attnotnull,
              'default', pg_get_expr(d.adbin, d.adrelid)) ORDER BY a.attnum), '[]')
       FROM pg_attribute a
       LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
      WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) AS columns,
    (SELECT coalesce(json_agg(a.attname ORDER BY k.ord), '[]')
       FROM pg_constraint con
       CROSS JOIN LATERAL unnest(con.conkey) WITH ORDINALITY AS k(attnum, ord)
       JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum
      WHERE con.conrelid = c.oid AND con.contype = 'p') AS "primaryKey",
    (SELECT coalesce(json_agg(json_build_object(
              'name', ic.relname,
              'columns', (SELECT json_agg(CASE WHEN i.indkey[k - 1] = 0
                                               THEN pg_get_indexdef(i.indexrelid, k, true)
                                               ELSE (SELECT attname FROM pg_attribute
                                                      WHERE attrelid = i.indrelid
                                                        AND attnum = i.indkey[k - 1]) END
                                          ORDER BY k)
                            FROM generate_series(1, i.indnkeyatts) AS k),
              'unique', i.indisunique) ORDER BY ic.relname), '[]')
       FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
      WHERE i.indrelid = c.oid) AS indexes
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relkind IN ('r', 'p') AND __USER_SCHEMA__
) t
""".replace("__USER_SCHEMA__", _USER_SCHEMA)

EMPTY_SQL = """
SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND __USER_SCHEMA__
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                   WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                     AND d.deptype = 'e')
""".replace("__USER_SCHEMA__", _USER_SCHEMA)

_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


def conninfo(conn: ConnectionSpec, **extra: str) -> str:
    """A libpq keyword/value string without the password (that goes in env).

    Passed as ``--dbname=...`` so a database name containing ``=`` or a URL
    prefix cannot be re-interpreted as a connection string.
    """
    params: Dict[str, str] = {}
    host = conn.socket or conn.host
    port = conn.port
    if conn.socket and os.path.basename(conn.socket).startswith(".s.PGSQL."):
        host = os.path.dirname(conn.socket)
        port = os.path.basename(conn.socket)[len(".s.PGSQL.") :]
    if host:
        params["host"] = host
    if port:
        params["port"] = port
    if conn.user:
        params["user"] = conn.user
    params["dbname"] = conn.database_name
    params.setdefault("connect_timeout", "10")
    params["application_name"] = "backupagent"
    for key, value in conn.options.items():
        if key in {"password", "passfile"}:
            continue
        params[key] = value
    params.update(extra)

    def quote(value: str) -> str:
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"

    return " ".join(f"{k}={quote(v)}" for k, v in params.items())


def libpq_env(conn: ConnectionSpec) -> Dict[str, str]:
    """The agent's environment plus PGPASSWORD when the spec has a password.

    Without one, libpq's own sources apply: ``PGPASSWORD``/``PGPASSFILE`` of
    the agent's environment or ``~/.pgpass``.
    """
    env = dict(os.environ)
    if conn.password:
        env["PGPASSWORD"] = conn.password
    return env


@cache
def _binary_major(path: str) -> Optional[Tuple[int, str]]:
    res = run_tool([path, "--version"], dict(os.environ), timeout=30)
    if res.returncode != 0:
        return None
    line = res.stdout.decode("utf-8", "replace").strip().splitlines()[0]
    m = _VERSION_RE.search(line)
    if not m:
        return None
    return int(m.group(1)), line


_VERSIONED_DIR = re.compile(r"^/usr/(?:lib/postgresql/|pgsql-)(\d+)/bin/[^/]+$")


def _path_major(path: str) -> Optional[int]:
    """The major version a packaged install's path names (``/usr/lib/postgresql/15/bin``)."""
    m = _VERSIONED_DIR.match(path)
    return int(m.group(1)) if m else None


def _candidate_major(path: str) -> Optional[int]:
    """A candidate's major: from its versioned directory, else by asking it.

    Why not always ask: every ``--version`` is a process on the backup's
    critical path (Debian's ``/usr/bin`` wrapper is a Perl script, ~40 ms).
    The chosen binary is still asked once, for the manifest's version line.
    """
    major = _path_major(path)
    return major if major is not None else _asked_major(path)


def _asked_major(path: str) -> Optional[int]:
    info = _binary_major(path)
    return info[0] if info else None


def _probe_versions(name: str) -> threading.Thread:
    """Ask every installed ``name`` for its version in a background thread.

    Why: choosing pg_dump needs the server's major, known only once psql has
    connected, and the chosen binary's ``--version`` line (for the manifest)
    is another process before the dump can start. Asked while psql is still
    connecting, it is cached (``_binary_major``) by the time it is needed.
    Join the thread before choosing; errors are left for the choice to meet.
    """

    def probe() -> None:
        with contextlib.suppress(Exception):
            for path in tool_candidates(name):
                _binary_major(path)

    thread = threading.Thread(target=probe, name=f"{name}-versions", daemon=True)
    thread.start()
    return thread


def _is_debian_wrapper(path: str) -> bool:
    return os.path.basename(os.path.realpath(path)) == "pg_wrapper"


def tool_candidates(name: str) -> List[str]:
    """Every installed copy of a PostgreSQL client tool, versioned dirs first.

    PATH's copy is left out when it is Debian's ``pg_wrapper`` and versioned
    copies exist: the wrapper only runs one of them, picked by its own rules.
    """
    paths = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    paths += sorted(glob.glob(f"/usr/pgsql-*/bin/{name}"))
    on_path = shutil.which(name)
    if on_path and not (paths and _is_debian_wrapper(on_path)):
        paths.append(on_path)
    seen: List[str] = []
    for p in paths:
        if p not in seen and os.access(p, os.X_OK):
            seen.append(p)
    return seen


def newest_tool(name: str) -> str:
    """The highest-major installed copy of ``name`` (PATH's if none parses)."""
    best: Optional[Tuple[int, str]] = None
    for path in tool_candidates(name):
        major = _candidate_major(path)
        if major is not None and (best is None or major > best[0]):
            best = (major, path)
    if best is not None:
        return best[1]
    found = shutil.which(name)
    if not found:
        raise EngineError(f"{name} not found; install postgresql-client", code=TOOL_MISSING)
    return found


def _pick(
    paths: List[str], server_major: int, major_of: Callable[[str], Optional[int]]
) -> Optional[str]:
    """The lowest major >= the server's (earlier candidates win ties)."""
    best: Optional[Tuple[int, int, str]] = None
    for index, path in enumerate(paths):
        major = major_of(path)
        if major is None or major < server_major:
            continue
        if best is None or (major, index) < best[:2]:
            best = (major, index, path)
    return best[2] if best else None


def select_tool(name: str, server_major: int) -> Tuple[str, str]:
    """The installed ``name`` whose major is the server's, else the oldest newer one.

    pg_dump refuses servers newer than itself, and an unnecessarily new one
    may emit syntax an older server's restore does not understand. Returns
    the path and its ``--version`` line.
    """
    paths = tool_candidates(name)
    choice = _pick(paths, server_major, _candidate_major)
    if choice is not None:
        info = _binary_major(choice)
        if info is not None and info[0] == _candidate_major(choice):
            return choice, info[1]
        # A directory naming another version than its binary reports (a
        # hand-made install): decide on what every binary says instead.
        choice = _pick(paths, server_major, _asked_major)
        info = _binary_major(choice) if choice else None
        if choice is not None and info is not None:
            return choice, info[1]
    have = ", ".join(f"{p} ({_candidate_major(p)})" for p in paths) or "none"
    raise EngineError(
        f"no {name} of version {server_major} or newer is installed (found: {have}); "
        f"install postgresql-client-{server_major}",
        code=TOOL_MISSING,
    )


def classify(
    conn: ConnectionSpec, tool: str, returncode: int, stderr: Any, action: str
) -> EngineError:
    """Turn a libpq tool's failure into an error code and a password-free message."""
    text = stderr_tail(stderr, conn.password)
    low = text.lower()
    where = conn.redacted_url()
    if returncode < 0:
        code = DUMP_FAIL if action == "dump" else RESTORE_FAIL
        return EngineError(
            f"{tool} {action} of {where} was killed by signal {-returncode}: {text}", code=code
        )
    if any(
        s in low
        for s in (
            "password authentication failed",
            "no password supplied",
            "authentication failed",
            "no pg_hba.conf entry",
            "pg_hba.conf rejects",
        )
    ) or re.search(r'role "[^"]*" does not exist', low):
        return EngineError(
            f"{tool} could not log in to {where}: {text} (fix the user/password in "
            "credentials.yaml, ~/.pgpass or PGPASSWORD, or pg_hba.conf)",
            code=AUTH_FAIL,
        )
    if re.search(r'database "[^"]*" does not exist', low):
        return EngineError(f"{tool}: database not found at {where}: {text}", code=DB_NOT_FOUND)
    if any(
        s in low
        for s in (
            "could not connect",
            "connection refused",
            "could not translate host name",
            "timeout expired",
            "no such file or directory",
            "is the server running",
            "network is unreachable",
            "no route to host",
        )
    ):
        return EngineError(f"{tool} cannot reach {where}: {text}", code=DB_UNREACHABLE)
    if "permission denied" in low or "must be superuser" in low:
        return EngineError(
            f"{tool} {action} of {where}: {text} (grant the backup role pg_read_all_data)",
            code=PERMISSION_DENIED,
        )
    code = DUMP_FAIL if action in ("dump", "query") else RESTORE_FAIL
    return EngineError(f"{tool} {action} of {where} failed (exit {returncode}): {text}", code=code)


class PostgresEngine:
    db_type = "postgresql"
    dump_format = "pg_custom"
    file_extension = "dump"

    def __init__(self, psql: Optional[str] = None) -> None:
        self._psql = psql

    # -- queries -----------------------------------------------------------

    def psql_path(self) -> str:
        if self._psql:
            return self._psql
        return newest_tool("psql")

    def query(self, conn: ConnectionSpec, sql: str, timeout: float = 300) -> str:
        """Run read-only SQL with a one-shot psql (SQL on stdin, never argv)."""
        argv = [
            self.psql_path(), "-X", "-q", "-A", "-t", "-w", "-v", "ON_ERROR_STOP=1",
            f"--dbname={conninfo(conn, client_encoding='UTF8')}",
        ]  # fmt: skip
        res = run_tool(argv, libpq_env(conn), input_data=sql.encode("utf-8"), timeout=timeout)
        if res.returncode != 0:
            raise classify(conn, "psql", res.returncode, res.stderr, "query")
        return res.stdout.decode("utf-8").strip()

    def server_version(self, conn: ConnectionSpec) -> str:
        return self.query(conn, "SHOW server_version", timeout=60)

    def server_major(self, conn: ConnectionSpec) -> int:
        return int(self.query(conn, "SHOW server_version_num", timeout=60)) // 10000

    def tool_version(self) -> str:
        """The newest pg_dump's version; a plan's ``extra`` names the one it used."""
        info = _binary_major(newest_tool("pg_dump"))
        if info is None:
            raise EngineError("pg_dump --version failed", code=TOOL_MISSING)
        return info[1]

    def list_tables_with_counts(self, conn: ConnectionSpec) -> Dict[str, int]:
        return {k: int(v) for k, v in json.loads(self.query(conn, COUNT_SQL)).items()}

    def schema_snapshot(self, conn: ConnectionSpec) -> Dict[str, Any]:
        return sort_snapshot(json.loads(self.query(conn, SCHEMA_SQL)))

    def is_empty(self, conn: ConnectionSpec) -> bool:
        return int(self.query(conn, EMPTY_SQL)) == 0

    # -- dump ----------------------------------------------------------------

    def prepare_dump(self, conn: ConnectionSpec, workdir: Path, cancel: Any = None) -> DumpPlan:
        """Export a snapshot and hand pg_dump its argv at once; count beside it.

        Everything before pg_dump starts is on the backup's critical path, so
        only what pg_dump needs happens here: one psql session that learns
        the server's version, opens a REPEATABLE READ transaction and exports
        its snapshot. The schema snapshot and the exact row counts then run
        on that same session, in that same snapshot, while pg_dump streams
        (see ``_inspect_in_snapshot``).
        """
        env = libpq_env(conn)
        plan = DumpPlan(env=env, row_counts_exact=True)

        def on_error(rc: int, stderr: bytes) -> EngineError:
            return classify(conn, "psql", rc, stderr, "dump")

        probe = _probe_versions("pg_dump")  # while psql connects
        session = PsqlSession(
            self.psql_path(), conninfo(conn, client_encoding="UTF8"), env, on_error
        )
        plan.add_cleanup(session.close)
        try:
            # A job cancelled here (a hung connection) kills the session:
            # the query in progress fails and the job reports CANCELLED.
            with CancelWatch(cancel, session.kill, interval=0.1):
                # One round trip: the snapshot does not depend on which
                # pg_dump is chosen, only pg_dump's start does.
                head, _, snapshot = session.query(
                    "SELECT current_setting('server_version') || '|' "
                    "|| current_setting('server_version_num');\n"
                    "SET idle_in_transaction_session_timeout = 0;\n"
                    "SET statement_timeout = 0;\n"
                    "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;\n"
                    "SELECT pg_export_snapshot()"
                ).partition("\n")
                version, _, version_num = head.rpartition("|")
                snapshot = _snapshot_id(snapshot.strip())
                probe.join()
                pg_dump, tool_line = select_tool("pg_dump", int(version_num) // 10000)
                self._inspect_in_snapshot(plan, session)
        except BaseException:
            plan.close()
            raise
        plan.argv = [
            pg_dump,
            "--format=custom",
            "--compress=0",
            "--no-password",
            f"--snapshot={snapshot}",
            f"--dbname={conninfo(conn)}",
        ]
        plan.server_version, plan.tool_version = version, tool_line
        plan.extra = {
            "serverVersion": version,
            "toolVersion": tool_line,
            "snapshot": snapshot,
            "rowCountsSource": "same snapshot as the dump (exact)",
        }
        return plan

    def _inspect_in_snapshot(self, plan: DumpPlan, session: PsqlSession) -> None:
        """Schema snapshot, then exact row counts, on the exporting session.

        The exporting transaction must stay open until pg_dump has imported
        the snapshot anyway, so it does the counting itself: the counts and
        the schema describe exactly what pg_dump reads, with no second
        connection. The count is a full scan of every table; run beside the
        dump (not before it) it stays off the backup's critical path, and
        with parallel workers off it takes one core, leaving the other to
        pg_dump and the compressor.
        """
        box: Dict[str, Any] = {}

        def work() -> None:
            try:
                out, error = session.query_or_error(SCHEMA_SQL)
                if error is not None:
                    box["schema_error"] = EngineError(
                        f"schema snapshot query failed: {error}", code=DUMP_FAIL
                    )
                else:
                    box["schema"] = json.loads(out or "[]")
                session.query("SET LOCAL max_parallel_workers_per_gather = 0; SET LOCAL jit = off")
                box["counts"] = json.loads(session.query(COUNT_SQL))
            except BaseException as exc:
                box["error"] = exc
                box.setdefault("schema_error", exc)

        thread = threading.Thread(target=work, name="pg-snapshot-inspect", daemon=True)
        thread.start()

        def counts() -> Dict[str, int]:
            thread.join()
            if "stopped" in box:
                raise EngineError("the dump ended before the row counts were taken", code=DUMP_FAIL)
            if "error" in box:
                raise box["error"]
            return {k: int(v) for k, v in box["counts"].items()}

        def schema() -> Optional[Dict[str, Any]]:
            thread.join()
            if "schema" not in box:
                raise box["schema_error"]
            return sort_snapshot(box["schema"])

        def stop() -> None:
            if thread.is_alive():  # the job ended early: do not wait for the scan
                box["stopped"] = True
                session.kill()
            thread.join(timeout=5)

        plan.defer_row_counts(counts)
        plan.defer_schema_snapshot(schema)
        plan.add_cleanup(stop)

    # -- restore -------------------------------------------------------------

    def restore_argv(self, conn: ConnectionSpec) -> Tuple[List[str], Dict[str, str]]:
        """``pg_restore`` reading a custom-format archive on stdin.

        ``--no-owner`` because the restoring role rarely owns what the source
        role owned; ``--exit-on-error`` so a broken restore fails loudly.
        (From stdin, pg_restore cannot run parallel jobs.) The newest
        installed pg_restore is used: it reads every older archive version,
        and the SQL it sends comes from the archive, i.e. from a pg_dump that
        matched the source server.
        """
        pg_restore = newest_tool("pg_restore")
        argv = [
            pg_restore,
            "--no-owner",
            "--exit-on-error",
            "--no-password",
            f"--dbname={conninfo(conn)}",
        ]
        return argv, libpq_env(conn)

    def prepare_restore(self, conn: ConnectionSpec, workdir: Path) -> DumpPlan:
        argv, env = self.restore_argv(conn)
        return DumpPlan(argv=argv, env=env)

    def classify_failure(
        self, conn: ConnectionSpec, returncode: int, stderr: Any, *, action: str = "dump"
    ) -> EngineError:
        tool = "pg_dump" if action == "dump" else "pg_restore"
        return classify(conn, tool, returncode, stderr, action)


def _snapshot_id(value: str) -> str:
    """A snapshot id from pg_export_snapshot (e.g. ``00000003-0000001B-1``),
    checked before it goes into SQL text."""
    if not value or any(c not in "0123456789ABCDEFabcdef-" for c in value):
        raise EngineError(
            f"unexpected snapshot id {value!r} from pg_export_snapshot()", code=DUMP_FAIL
        )
    return value
