"""SQLite: the online backup API into a private copy, then that file is streamed.

Copying a live SQLite file byte by byte can tear a page mid-write; the backup
API gives a consistent copy while writers keep going. Counts and the schema
come from the copy itself, so they describe the backup exactly.

Restore is a small Python program fed on stdin (``sqlite3`` has no
"load a database file from stdin"): it writes a temp file beside the target,
checks it is a sound SQLite database, removes any stale ``-wal``/``-shm`` of
the old file (a leftover WAL would be replayed into the restored one), then
renames it into place, so the target is never half-written.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import urllib.parse
from pathlib import Path
from typing import Any, Dict, List, Tuple

from backupagent.engines.base import (
    DB_NOT_FOUND,
    DUMP_FAIL,
    PERMISSION_DENIED,
    RESTORE_FAIL,
    ConnectionSpec,
    DumpPlan,
    EngineError,
    remove_file,
    sort_snapshot,
    stderr_tail,
)

RESTORE_SCRIPT = r"""
import os, sqlite3, sys
target = sys.argv[1]
directory = os.path.dirname(target) or "."
tmp = os.path.join(directory, ".%s.restore-%d" % (os.path.basename(target), os.getpid()))
fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
try:
    with os.fdopen(fd, "wb") as out:
        while True:
            chunk = sys.stdin.buffer.read(1 << 20)
            if not chunk:
                break
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    with open(tmp, "rb") as f:
        if f.read(16) != b"SQLite format 3\x00":
            sys.exit("restore input is not an SQLite database (bad header)")
    con = sqlite3.connect(tmp)
    try:
        result = con.execute("PRAGMA quick_check").fetchone()[0]
    finally:
        con.close()
    if result != "ok":
        sys.exit("restored SQLite database failed quick_check: %s" % result)
    for suffix in ("-wal", "-shm", "-journal"):
        try:
            os.unlink(target + suffix)
        except FileNotFoundError:
            pass
    os.replace(tmp, target)
except BaseException:
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    raise
"""


# Pages copied per step of the online backup (4 MiB at SQLite's default
# 4 KiB page): a cancel is seen within a few milliseconds of disk time.
COPY_STEP_PAGES = 1024


class _Cancelled(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class SQLiteEngine:
    db_type = "sqlite"
    dump_format = "sqlite3"
    file_extension = "sqlite"

    # -- connections ---------------------------------------------------------

    @staticmethod
    def _path(conn: ConnectionSpec) -> str:
        return conn.database_name

    def _open_ro(self, path: str, action: str = "query") -> sqlite3.Connection:
        if not os.path.exists(path):
            raise EngineError(
                f"SQLite database {path!r} does not exist; check the sqlite:/// URL",
                code=DB_NOT_FOUND,
            )
        if not os.access(path, os.R_OK):
            raise EngineError(
                f"SQLite database {path!r} is not readable by this user; grant read access "
                "(and to its directory, for the -wal/-shm files)",
                code=PERMISSION_DENIED,
            )
        uri = "file:" + urllib.parse.quote(path) + "?mode=ro"
        try:
            con = sqlite3.connect(uri, uri=True, timeout=30)
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.Error as exc:
            raise EngineError(
                f"cannot open SQLite database {path!r}: {exc}",
                code=DUMP_FAIL if action != "restore" else RESTORE_FAIL,
            ) from None
        return con

    # -- queries -------------------------------------------------------------

    def server_version(self, conn: ConnectionSpec) -> str:
        return sqlite3.sqlite_version

    def tool_version(self) -> str:
        python = sys.version.split()[0]
        return f"sqlite3 backup API (SQLite {sqlite3.sqlite_version}, Python {python})"

    @staticmethod
    def _tables(con: sqlite3.Connection) -> List[str]:
        rows = con.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' "
            "ESCAPE '\\' ORDER BY name"
        ).fetchall()
        return [r[0] for r in rows]

    def _counts(self, con: sqlite3.Connection) -> Dict[str, int]:
        counts: Dict[str, int] = {}
        for table in self._tables(con):
            try:
                counts[table] = int(
                    con.execute(f"SELECT count(*) FROM {_ident(table)}").fetchone()[0]  # noqa: S608
                )
            except sqlite3.OperationalError:
                continue  # a virtual table whose module is not loaded here
        return counts

    def _schema(self, con: sqlite3.Connection) -> Dict[str, Any]:
        tables: List[Dict[str, Any]] = []
        for table in self._tables(con):
            info = con.execute(f"PRAGMA table_info({_ident(table)})").fetchall()
            columns = [
                {"name": r[1], "type": r[2], "nullable": not r[3], "default": r[4]} for r in info
            ]
            pk = [r[1] for r in sorted((r for r in info if r[5]), key=lambda r: r[5])]
            rowid_alias = [r[1] for r in info if r[5] and str(r[2]).upper() == "INTEGER"]
            if len(pk) == 1 and rowid_alias == pk:  # INTEGER PRIMARY KEY: never NULL
                for column in columns:
                    if column["name"] == pk[0]:
                        column["nullable"] = False
            indexes = []
            for row in con.execute(f"PRAGMA index_list({_ident(table)})").fetchall():
                name, unique = row[1], bool(row[2])
                cols = [
                    r[2] if r[2] is not None else "<expression>"
                    for r in con.execute(f"PRAGMA index_info({_ident(name)})").fetchall()
                ]
                indexes.append({"name": name, "columns": cols, "unique": unique})
            tables.append(
                {
                    "schema": "main",
                    "name": table,
                    "columns": columns,
                    "primaryKey": pk,
                    "indexes": indexes,
                }
            )
        return sort_snapshot(tables)

    def list_tables_with_counts(self, conn: ConnectionSpec) -> Dict[str, int]:
        con = self._open_ro(self._path(conn))
        try:
            return self._counts(con)
        finally:
            con.close()

    def schema_snapshot(self, conn: ConnectionSpec) -> Dict[str, Any]:
        con = self._open_ro(self._path(conn))
        try:
            return self._schema(con)
        finally:
            con.close()

    def is_empty(self, conn: ConnectionSpec) -> bool:
        path = self._path(conn)
        if not os.path.exists(path) or os.path.getsize(path) == 0:
            return True
        con = self._open_ro(path)
        try:
            row = con.execute(
                "SELECT count(*) FROM sqlite_master WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
            ).fetchone()
            return int(row[0]) == 0
        finally:
            con.close()

    # -- dump ----------------------------------------------------------------

    def prepare_dump(self, conn: ConnectionSpec, workdir: Path, cancel: Any = None) -> DumpPlan:
        path = self._path(conn)
        src = self._open_ro(path, "dump")
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        copy = workdir / f".sqlite-backup-{os.getpid()}-{os.urandom(6).hex()}.sqlite"
        fd = os.open(str(copy), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        plan = DumpPlan(source_file=copy, row_counts_exact=True)
        plan.add_cleanup(remove_file(copy))
        for suffix in ("-journal", "-wal", "-shm"):
            plan.add_cleanup(remove_file(Path(str(copy) + suffix)))
        try:
            dst = sqlite3.connect(str(copy))
            try:
                self._copy(src, dst, cancel)
                result = dst.execute("PRAGMA quick_check").fetchone()[0]
                if result != "ok":
                    raise EngineError(
                        f"backup copy of SQLite database {path!r} failed quick_check: {result}",
                        code=DUMP_FAIL,
                    )
                # A WAL-mode source gives a WAL-mode copy; fold it so one file is all.
                dst.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                plan.row_counts = self._counts(dst)
            finally:
                dst.close()
        except sqlite3.Error as exc:
            plan.close()
            raise EngineError(
                f"backup of SQLite database {path!r} failed: {exc}", code=DUMP_FAIL
            ) from None
        except BaseException:
            plan.close()
            raise
        finally:
            src.close()
        plan.extra = {
            "serverVersion": sqlite3.sqlite_version,
            "toolVersion": self.tool_version(),
            "rowCountsSource": "the backup copy itself (exact)",
        }
        return plan

    @staticmethod
    def _copy(src: sqlite3.Connection, dst: sqlite3.Connection, cancel: Any) -> None:
        """The online backup API, in steps, inside one read transaction on ``src``.

        Why steps: a job cancelled (SIGTERM, timeout) during a multi-GB copy
        must stop within the grace period, and the progress callback between
        steps is where it can. Why the read transaction: between steps the
        backup API would otherwise let go of the source, and a write by the
        application restarts the copy from the first page (forever, on a
        busy database). Held open, every step reads the same snapshot, the
        copy is consistent, and writers carry on (WAL) or wait as they would
        for a one-step copy (rollback journal).
        """

        def check_cancel(_status: int, _remaining: int, _total: int) -> None:
            if cancel is not None and cancel.cancelled:
                raise _Cancelled(cancel.reason or "CANCELLED")

        src.execute("BEGIN")
        try:
            src.execute("SELECT count(*) FROM sqlite_master").fetchone()  # take the snapshot
            src.backup(dst, pages=COPY_STEP_PAGES, progress=check_cancel)
        except _Cancelled as exc:
            word = "timed out" if exc.reason == "TIMEOUT" else "was cancelled"
            raise EngineError(f"the SQLite backup copy {word}", code=exc.reason) from None
        finally:
            src.rollback()

    # -- restore -------------------------------------------------------------

    def restore_argv(self, conn: ConnectionSpec) -> Tuple[List[str], Dict[str, str]]:
        return [sys.executable, "-c", RESTORE_SCRIPT, self._path(conn)], dict(os.environ)

    def prepare_restore(self, conn: ConnectionSpec, workdir: Path) -> DumpPlan:
        argv, env = self.restore_argv(conn)
        return DumpPlan(argv=argv, env=env)

    def classify_failure(
        self, conn: ConnectionSpec, returncode: int, stderr: Any, *, action: str = "dump"
    ) -> EngineError:
        text = stderr_tail(stderr)
        return EngineError(
            f"SQLite {action} of {conn.redacted_url()} failed (exit {returncode}): {text}",
            code=DUMP_FAIL if action == "dump" else RESTORE_FAIL,
        )
