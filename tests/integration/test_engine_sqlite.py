"""SQLite engine: online backup of a live WAL database, stdin restore, schema, failures."""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import stat
import subprocess
import threading
import time
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

from backupagent.engines import get_engine
from backupagent.engines.base import ConnectionSpec, EngineError
from backupagent.engines.process import restore_from_file, stream_dump

pytestmark = pytest.mark.integration


def make_db(path: Path) -> None:
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.executescript(
        '''
        CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE,
                            name TEXT DEFAULT 'anon', avatar BLOB);
        CREATE TABLE "odd ""name""" (a INT, b TEXT, PRIMARY KEY (b, a));
        CREATE INDEX users_name ON users (name, lower(email));
        CREATE TABLE log (id INTEGER PRIMARY KEY AUTOINCREMENT, msg TEXT);
        CREATE VIEW v_users AS SELECT id FROM users;
        '''
    )
    con.executemany(
        "INSERT INTO users (email, name, avatar) VALUES (?, ?, ?)",
        [(f"u{i}@x", None if i % 4 == 0 else f"n{i}", bytes([i % 256]) * 10) for i in range(200)],
    )
    con.executemany('INSERT INTO "odd ""name""" VALUES (?, ?)', [(i, f"b{i}") for i in range(9)])
    con.commit()
    con.close()


def checksums(path: Path, tables) -> Dict[str, str]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        out = {}
        for table in tables:
            ident = '"' + table.replace('"', '""') + '"'
            rows = con.execute(f"SELECT * FROM {ident} ORDER BY 1, 2").fetchall()
            out[table] = hashlib.sha256(repr(rows).encode()).hexdigest()
        return out
    finally:
        con.close()


def spec(path: Path) -> ConnectionSpec:
    return ConnectionSpec("sqlite", database_name=str(path))


@contextlib.contextmanager
def busy_writer(path: Path, sql: str) -> Iterator[List[int]]:
    """Another connection committing ``sql`` every millisecond while the block
    runs; yields the list of commits so far (one item each), after the first."""
    stop = threading.Event()
    commits: List[int] = []

    def write() -> None:
        con = sqlite3.connect(path, timeout=30)
        while not stop.is_set():
            con.execute(sql)
            con.commit()
            commits.append(1)
            time.sleep(0.0005)
        con.close()

    thread = threading.Thread(target=write)
    thread.start()
    try:
        while not commits:
            time.sleep(0.01)
        yield commits
    finally:
        stop.set()
        thread.join()


def test_round_trip_while_a_writer_is_busy(tmp_path: Path) -> None:
    src = tmp_path / "live.db"
    make_db(src)
    work = tmp_path / "work"
    with busy_writer(src, "INSERT INTO log (msg) VALUES ('tick')"):
        engine = get_engine("sqlite")
        with engine.prepare_dump(spec(src), work) as plan:
            assert plan.source_file is not None and plan.argv == []
            assert stat.S_IMODE(os.stat(plan.source_file).st_mode) == 0o600
            with open(tmp_path / "backup.sqlite", "wb") as f:
                stream_dump(engine, spec(src), plan, f.write)
    assert os.listdir(work) == []  # the private copy is gone
    assert plan.row_counts_exact is True
    assert plan.row_counts["users"] == 200 and plan.row_counts['odd "name"'] == 9
    assert plan.row_counts["log"] > 0
    assert int(sqlite3.connect(src).execute("SELECT count(*) FROM log").fetchone()[0]) > 0

    target = tmp_path / "restored" / "app.db"
    target.parent.mkdir()
    assert engine.is_empty(spec(target))
    restore_from_file(engine, spec(target), tmp_path / "backup.sqlite", tmp_path)
    assert engine.list_tables_with_counts(spec(target)) == plan.row_counts
    assert not engine.is_empty(spec(target))
    static = ["users", 'odd "name"']
    assert checksums(target, static) == checksums(src, static)
    assert engine.schema_snapshot(spec(target)) == engine.schema_snapshot(spec(src))


def test_schema_snapshot_contents(tmp_path: Path) -> None:
    src = tmp_path / "s.db"
    make_db(src)
    snap = get_engine("sqlite").schema_snapshot(spec(src))
    assert [t["name"] for t in snap["tables"]] == ["log", 'odd "name"', "users"]
    users = snap["tables"][2]
    assert users["schema"] == "main"
    id_column = {"name": "id", "type": "INTEGER", "nullable": False, "default": None}
    assert users["columns"][0] == id_column
    assert users["columns"][2]["default"] == "'anon'"
    assert users["primaryKey"] == ["id"]
    assert {"name": "users_name", "columns": ["name", "<expression>"], "unique": False} in users[
        "indexes"
    ]
    assert any(i["unique"] and i["columns"] == ["email"] for i in users["indexes"])
    assert snap["tables"][1]["primaryKey"] == ["b", "a"]


def test_restore_replaces_atomically_and_drops_a_stale_wal(tmp_path: Path) -> None:
    engine = get_engine("sqlite")
    src = tmp_path / "src.db"
    make_db(src)
    with engine.prepare_dump(spec(src), tmp_path / "w") as plan:
        backup = Path(plan.source_file).read_bytes()
    (tmp_path / "b.sqlite").write_bytes(backup)

    target = tmp_path / "t.db"
    old = sqlite3.connect(target)
    old.execute("PRAGMA journal_mode=WAL")
    old.execute("CREATE TABLE stale (x)")
    old.commit()
    old.close()
    Path(str(target) + "-wal").write_bytes(b"garbage that must not be replayed")
    restore_from_file(engine, spec(target), tmp_path / "b.sqlite", tmp_path)
    assert not Path(str(target) + "-wal").exists()
    assert "stale" not in engine.list_tables_with_counts(spec(target))
    assert engine.list_tables_with_counts(spec(target))["users"] == 200


def test_restore_refuses_garbage_and_leaves_the_target_alone(tmp_path: Path) -> None:
    engine = get_engine("sqlite")
    target = tmp_path / "t.db"
    make_db(target)
    before = target.read_bytes()
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"not a database at all" * 100)
    with pytest.raises(EngineError) as info:
        restore_from_file(engine, spec(target), garbage, tmp_path)
    assert info.value.code == "RESTORE_FAIL" and "not an SQLite database" in str(info.value)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage.bin", "t.db"]

    argv, env = engine.restore_argv(spec(target))
    res = subprocess.run(argv, env=env, input=b"", capture_output=True, timeout=30, check=False)
    assert res.returncode != 0 and target.read_bytes() == before


def test_missing_file_is_db_not_found(tmp_path: Path) -> None:
    with pytest.raises(EngineError) as info:
        get_engine("sqlite").prepare_dump(spec(tmp_path / "nope.db"), tmp_path)
    assert info.value.code == "DB_NOT_FOUND"
    assert os.listdir(tmp_path) == []


def _big_db(path: Path, rows: int = 20000) -> None:
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE blobs (id INTEGER PRIMARY KEY, b BLOB)")
    con.executemany("INSERT INTO blobs (b) VALUES (?)", [(os.urandom(400),) for _ in range(rows)])
    con.commit()
    con.close()


def test_copy_in_many_steps_is_one_consistent_snapshot_under_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between steps the source's read transaction stays open: a writer does not
    restart the copy, and the copy is the snapshot its counts describe."""
    from backupagent.engines import sqlite as sqlite_engine

    monkeypatch.setattr(sqlite_engine, "COPY_STEP_PAGES", 8)
    src = tmp_path / "busy.db"
    _big_db(src)
    pages = sqlite3.connect(src).execute("PRAGMA page_count").fetchone()[0]
    looks = _CancelAfter(10**9, "CANCELLED")  # never cancels; counts the steps
    with busy_writer(src, "INSERT INTO blobs (b) VALUES (x'00')") as inserted:
        engine = get_engine("sqlite")
        with engine.prepare_dump(spec(src), tmp_path / "work", cancel=looks) as plan:
            copy = sqlite3.connect(f"file:{plan.source_file}?mode=ro", uri=True)
            copied = copy.execute("SELECT count(*) FROM blobs").fetchone()[0]
            copy.close()
            counts = plan.row_counts
    assert counts["blobs"] == copied >= 20000
    steps = 10**9 - looks.n
    assert steps <= pages // 8 + 5, f"{steps} steps for {pages} pages: the copy restarted"
    final = sqlite3.connect(src).execute("SELECT count(*) FROM blobs").fetchone()[0]
    assert final == 20000 + len(inserted)


class _CancelAfter:
    """A token that turns cancelled after ``n`` looks (mid-copy, deterministically)."""

    def __init__(self, n: int, reason: str) -> None:
        self.n, self.reason = n, reason

    @property
    def cancelled(self) -> bool:
        self.n -= 1
        return self.n < 0


@pytest.mark.parametrize("reason", ["CANCELLED", "TIMEOUT"])
def test_cancel_during_the_copy_stops_it_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reason: str
) -> None:
    from backupagent.engines import sqlite as sqlite_engine

    monkeypatch.setattr(sqlite_engine, "COPY_STEP_PAGES", 8)
    src = tmp_path / "big.db"
    _big_db(src)
    work = tmp_path / "work"
    with pytest.raises(EngineError) as info:
        get_engine("sqlite").prepare_dump(spec(src), work, cancel=_CancelAfter(3, reason))
    assert info.value.code == reason
    assert os.listdir(work) == []
    # the source is untouched and not left locked
    con = sqlite3.connect(src, timeout=1)
    con.execute("INSERT INTO blobs (b) VALUES (x'01')")
    con.commit()
    con.close()
