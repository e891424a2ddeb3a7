"""PostgreSQL engine against a real server: dump, restore, exact snapshot counts, failures."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Dict, Iterator

import pytest

from backupagent.engines import get_engine, parse_database_url
from backupagent.engines.base import ConnectionSpec, EngineError
from backupagent.engines.credentials import resolve_connection
from backupagent.engines.process import restore_from_file, stream_dump
from tests.servers import free_port

pytestmark = pytest.mark.integration

EXTRA_SQL = '''
CREATE SCHEMA "Sales Dept";
CREATE TABLE "Sales Dept"."Odd ""Name""" (
  k text NOT NULL, n int NOT NULL, payload bytea, note text DEFAULT 'x',
  PRIMARY KEY (n, k));
CREATE UNIQUE INDEX odd_lower_k ON "Sales Dept"."Odd ""Name""" (lower(k), n);
INSERT INTO "Sales Dept"."Odd ""Name""" (k, n, payload, note)
  SELECT 'k' || g, g, decode(md5(g::text), 'hex'), CASE WHEN g % 3 = 0 THEN NULL ELSE 'n' END
  FROM generate_series(1, 37) g;
CREATE TABLE events (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now(), v int)
  PARTITION BY RANGE (id);
CREATE TABLE events_a PARTITION OF events FOR VALUES FROM (1) TO (20);
CREATE TABLE events_b PARTITION OF events FOR VALUES FROM (20) TO (1000000);
INSERT INTO events (v) SELECT g FROM generate_series(1, 30) g;
CREATE TABLE empty_one (id int);
CREATE VIEW big_orders AS SELECT * FROM orders WHERE amount > 10;
'''


def qident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def checksums(db, tables) -> Dict[str, str]:
    """md5 over each table's rows, in a stable order: content, not just counts."""
    out = {}
    for key in tables:
        schema, _, table = key.partition(".")
        rel = f"{qident(schema)}.{qident(table)}"
        out[key] = db.psql(
            f"SELECT md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) FROM {rel} t"
        ).strip()
    return out


def spec_for(db) -> ConnectionSpec:
    return parse_database_url(db.dsn)


@pytest.fixture
def fresh_db(postgres_server) -> Iterator:
    from tests.servers.postgres import PgDatabase

    name = "r_" + secrets.token_hex(6)
    postgres_server.create_database(name)
    try:
        yield PgDatabase(name=name, server=postgres_server)
    finally:
        postgres_server.drop_database(name)


def dump_to(engine, conn, workdir: Path, dest: Path, **kw):
    with engine.prepare_dump(conn, workdir) as plan, open(dest, "wb") as f:
        size = stream_dump(engine, conn, plan, f.write, **kw)
        # Taken beside the dump: awaited before the plan ends, as the job does.
        plan.row_counts  # noqa: B018
    return plan, size


def test_round_trip_counts_checksums_and_schema(pg_database, fresh_db, tmp_path: Path) -> None:
    pg_database.psql(EXTRA_SQL)
    engine = get_engine("postgresql")
    src, dst = spec_for(pg_database), spec_for(fresh_db)

    assert engine.server_version(src).startswith(pg_database.server.version.split()[0])
    assert "pg_dump" in engine.tool_version()
    assert engine.is_empty(dst) and not engine.is_empty(src)

    plan, size = dump_to(engine, src, tmp_path, tmp_path / "db.dump")
    assert size > 0 and (tmp_path / "db.dump").read_bytes()[:5] == b"PGDMP"
    assert plan.row_counts_exact is True
    assert plan.row_counts == {
        'Sales Dept.Odd "Name"': 37,
        "public.customers": 10,
        "public.empty_one": 0,
        "public.events_a": 19,
        "public.events_b": 11,
        "public.orders": 25,
    }
    assert plan.extra["snapshot"] and "pg_dump" in plan.extra["toolVersion"]
    assert os.listdir(tmp_path) == ["db.dump"]  # no temp file left behind

    restore_from_file(engine, dst, tmp_path / "db.dump", tmp_path)
    assert engine.list_tables_with_counts(dst) == plan.row_counts
    assert checksums(fresh_db, plan.row_counts) == checksums(pg_database, plan.row_counts)
    assert engine.schema_snapshot(dst) == engine.schema_snapshot(src)
    assert not engine.is_empty(dst)


def test_restore_argv_is_a_working_stdin_restore(pg_database, fresh_db, tmp_path: Path) -> None:
    engine = get_engine("postgresql")
    src, dst = spec_for(pg_database), spec_for(fresh_db)
    plan, _ = dump_to(engine, src, tmp_path, tmp_path / "db.dump")
    argv, env = engine.restore_argv(dst)
    assert dst.password not in " ".join(argv)
    with open(tmp_path / "db.dump", "rb") as f:
        res = subprocess.run(argv, env=env, stdin=f, capture_output=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    assert engine.list_tables_with_counts(dst) == plan.row_counts


def test_schema_snapshot_is_correct_and_deterministic(pg_database) -> None:
    pg_database.psql(EXTRA_SQL)
    engine = get_engine("postgresql")
    first = engine.schema_snapshot(spec_for(pg_database))
    second = engine.schema_snapshot(spec_for(pg_database))
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)
    names = [(t["schema"], t["name"]) for t in first["tables"]]
    assert names == sorted(names)
    assert ("public", "big_orders") not in names  # views are not tables
    assert ("public", "events") in names  # partitioned parent is part of the schema
    tables = {(t["schema"], t["name"]): t for t in first["tables"]}
    customers = tables[("public", "customers")]
    assert customers["columns"] == [
        {
            "name": "id",
            "type": "integer",
            "nullable": False,
            "default": "nextval('customers_id_seq'::regclass)",
        },
        {"name": "name", "type": "text", "nullable": False, "default": None},
        {
            "name": "created",
            "type": "timestamp with time zone",
            "nullable": True,
            "default": "now()",
        },
    ]
    assert customers["primaryKey"] == ["id"]
    assert customers["indexes"] == [{"name": "customers_pkey", "columns": ["id"], "unique": True}]
    odd = tables[("Sales Dept", 'Odd "Name"')]
    assert odd["primaryKey"] == ["n", "k"]
    assert {"name": "odd_lower_k", "columns": ["lower(k)", "n"], "unique": True} in odd["indexes"]
    assert [c["type"] for c in tables[("public", "orders")]["columns"]] == [
        "integer",
        "integer",
        "numeric(10,2)",
    ]


def test_counts_come_from_the_dump_snapshot_under_concurrent_writes(
    pg_database, fresh_db, tmp_path: Path
) -> None:
    """A writer keeps inserting while we count and dump: the plan's counts must
    equal the restored database's counts exactly, though the source moved on."""
    server = pg_database.server
    pg_database.psql("CREATE TABLE ticks (id bigserial PRIMARY KEY, at timestamptz DEFAULT now())")
    stop = threading.Event()
    writer = subprocess.Popen(
        [server._psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", pg_database.name],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=server.env(pg_database.name),
    )

    def write_loop() -> None:
        assert writer.stdin is not None
        while not stop.is_set():
            writer.stdin.write(b"INSERT INTO ticks DEFAULT VALUES;\n")
            writer.stdin.flush()
            time.sleep(0.002)
        writer.stdin.close()

    thread = threading.Thread(target=write_loop)
    thread.start()
    try:
        time.sleep(0.5)
        engine = get_engine("postgresql")
        src = spec_for(pg_database)
        with engine.prepare_dump(src, tmp_path) as plan:
            counted = plan.row_counts["public.ticks"]
            time.sleep(0.7)  # the writer moves on before pg_dump even starts
            live_before = int(pg_database.psql("SELECT count(*) FROM ticks"))
            with open(tmp_path / "db.dump", "wb") as f:
                stream_dump(engine, src, plan, f.write)
            live_after = int(pg_database.psql("SELECT count(*) FROM ticks"))
    finally:
        stop.set()
        thread.join()
        writer.wait(timeout=30)
    assert counted > 0
    assert live_before > counted and live_after > live_before  # writes really happened
    restore_from_file(engine, spec_for(fresh_db), tmp_path / "db.dump", tmp_path)
    assert engine.list_tables_with_counts(spec_for(fresh_db)) == plan.row_counts
    assert int(fresh_db.psql("SELECT count(*) FROM ticks")) == counted


def _backupagent_sessions(db) -> list:
    out = db.server.psql(
        "SELECT state FROM pg_stat_activity WHERE application_name = 'backupagent' "
        "AND pid <> pg_backend_pid()"
    )
    return [line for line in out.splitlines() if line.strip()]


def test_snapshot_session_is_held_during_and_released_after_the_plan(
    pg_database, tmp_path: Path
) -> None:
    engine = get_engine("postgresql")
    with engine.prepare_dump(spec_for(pg_database), tmp_path) as plan:
        assert plan.row_counts  # taken beside the dump, on the exporting session
        # One session: it holds the snapshot for pg_dump and did the counting.
        assert _backupagent_sessions(pg_database) == ["idle in transaction"]
        assert plan.argv[0].endswith("pg_dump")
    deadline = time.monotonic() + 10
    while _backupagent_sessions(pg_database) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _backupagent_sessions(pg_database) == []


def test_pg_dump_killed_mid_stream_is_dump_fail(pg_database, tmp_path: Path) -> None:
    pg_database.psql(
        "CREATE TABLE bulk AS SELECT g, repeat(md5(g::text), 8) AS filler "
        "FROM generate_series(1, 40000) g"
    )
    engine = get_engine("postgresql")
    src = spec_for(pg_database)
    procs = []
    written = []

    def write(chunk: bytes) -> None:
        written.append(len(chunk))
        if len(written) == 1:
            procs[0].kill()

    with pytest.raises(EngineError) as info, engine.prepare_dump(src, tmp_path) as plan:
        stream_dump(engine, src, plan, write, chunk_size=4096, on_start=procs.append)
    assert info.value.code == "DUMP_FAIL"
    assert "signal 9" in str(info.value)
    assert src.password not in str(info.value)
    assert sum(written) < 40000 * 256  # cut short, and reported as a failure
    assert _backupagent_sessions(pg_database) == [] or _wait_no_sessions(pg_database)


def _wait_no_sessions(db) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not _backupagent_sessions(db):
            return True
        time.sleep(0.1)
    return False


def test_wrong_password_is_auth_fail_without_the_password(pg_database, tmp_path: Path) -> None:
    engine = get_engine("postgresql")
    wrong = "wrong-" + secrets.token_hex(8)
    spec = parse_database_url(
        f"postgresql://postgres:{urllib.parse.quote(wrong)}@127.0.0.1:"
        f"{pg_database.server.port}/{pg_database.name}"
    )
    for call in (
        lambda: engine.prepare_dump(spec, tmp_path),
        lambda: engine.list_tables_with_counts(spec),
        lambda: engine.schema_snapshot(spec),
    ):
        with pytest.raises(EngineError) as info:
            call()
        assert info.value.code == "AUTH_FAIL", str(info.value)
        assert wrong not in str(info.value)
    assert os.listdir(tmp_path) == []


def test_unreachable_host_is_db_unreachable(tmp_path: Path) -> None:
    engine = get_engine("postgresql")
    spec = parse_database_url(f"postgresql://u:hunter2secret@127.0.0.1:{free_port()}/x")
    with pytest.raises(EngineError) as info:
        engine.prepare_dump(spec, tmp_path)
    assert info.value.code == "DB_UNREACHABLE"
    assert "hunter2secret" not in str(info.value)
    assert "127.0.0.1" in str(info.value)


def test_missing_database_is_db_not_found(postgres_server, tmp_path: Path) -> None:
    engine = get_engine("postgresql")
    spec = parse_database_url(postgres_server.dsn("no_such_db_here"))
    with pytest.raises(EngineError) as info:
        engine.server_version(spec)
    assert info.value.code == "DB_NOT_FOUND"


def test_least_privilege_role_pg_read_all_data(pg_database, fresh_db, tmp_path: Path) -> None:
    """The documented backup role works; a role without read rights is PERMISSION_DENIED."""
    server = pg_database.server
    role, pw = "bk_" + secrets.token_hex(4), "pw-" + secrets.token_hex(8)
    nobody = "nb_" + secrets.token_hex(4)
    server.psql(
        f"CREATE ROLE {role} LOGIN PASSWORD '{pw}' IN ROLE pg_read_all_data;"
        f"CREATE ROLE {nobody} LOGIN PASSWORD '{pw}';"
    )
    try:
        engine = get_engine("postgresql")
        base = f"@127.0.0.1:{server.port}/{pg_database.name}"
        good = parse_database_url(f"postgresql://{role}:{pw}{base}")
        plan, _ = dump_to(engine, good, tmp_path, tmp_path / "db.dump")
        assert plan.row_counts["public.orders"] == 25
        restore_from_file(engine, spec_for(fresh_db), tmp_path / "db.dump", tmp_path)
        assert engine.list_tables_with_counts(spec_for(fresh_db)) == plan.row_counts

        bad = parse_database_url(f"postgresql://{nobody}:{pw}{base}")
        with pytest.raises(EngineError) as info:  # noqa: SIM117 - the error may come from either
            with engine.prepare_dump(bad, tmp_path) as plan:
                plan.row_counts  # noqa: B018 - counted beside the dump: the error surfaces here
        assert info.value.code == "PERMISSION_DENIED"
        assert "pg_read_all_data" in str(info.value) and pw not in str(info.value)
    finally:
        server.psql(f"DROP OWNED BY {role}; DROP ROLE {role}; DROP ROLE {nobody};")


def test_credentials_file_supplies_the_password(pg_database, tmp_path: Path) -> None:
    server = pg_database.server
    creds = tmp_path / "credentials.yaml"
    creds.write_text(
        "databases:\n"
        f'  "postgresql://127.0.0.1:{server.port}/*":\n'
        f"    user: {server.user}\n"
        f'    password: "{server.password}"\n'
    )
    os.chmod(creds, 0o600)
    spec = resolve_connection(
        {"dbType": "postgresql", "host": "127.0.0.1", "port": str(server.port),
         "databaseName": pg_database.name},
        creds,
    )  # fmt: skip
    assert spec.password == server.password
    assert get_engine("postgresql").list_tables_with_counts(spec)["public.customers"] == 10


def test_restore_into_a_non_empty_database_fails_as_restore_fail(
    pg_database, fresh_db, tmp_path: Path
) -> None:
    engine = get_engine("postgresql")
    src, dst = spec_for(pg_database), spec_for(fresh_db)
    dump_to(engine, src, tmp_path, tmp_path / "db.dump")
    restore_from_file(engine, dst, tmp_path / "db.dump", tmp_path)
    with pytest.raises(EngineError) as info:
        restore_from_file(engine, dst, tmp_path / "db.dump", tmp_path)
    assert info.value.code == "RESTORE_FAIL"
    assert "already exists" in str(info.value)
    assert dst.password not in str(info.value)


def test_schema_and_counts_are_taken_in_the_dumps_snapshot(pg_database, tmp_path: Path) -> None:
    """What changes after the snapshot is exported is in none of the three:
    the dump, the counts and the schema snapshot all describe one instant."""
    pg_database.psql("CREATE TABLE early (id int PRIMARY KEY); INSERT INTO early VALUES (1), (2)")
    engine = get_engine("postgresql")
    src = spec_for(pg_database)
    with engine.prepare_dump(src, tmp_path) as plan:
        # Only changes that do not wait for the dump's table locks (an ALTER
        # TABLE would queue behind them until the backup ends, as with pg_dump).
        pg_database.psql(
            "INSERT INTO early VALUES (3); CREATE INDEX early_late ON early (id); "
            "CREATE TABLE later (id int)"
        )
        with open(tmp_path / "db.dump", "wb") as f:
            stream_dump(engine, src, plan, f.write)
        schema = plan.schema_snapshot()
        counts = plan.row_counts
    assert plan.server_version and plan.tool_version and "pg_dump" in plan.tool_version
    assert counts["public.early"] == 2
    assert "public.later" not in counts
    tables = {t["name"]: t for t in schema["tables"]}
    assert "later" not in tables
    assert "early_late" not in [i["name"] for i in tables["early"]["indexes"]]
    # ... and the live schema has moved on, so the test could tell them apart.
    live = {t["name"]: t for t in engine.schema_snapshot(src)["tables"]}
    assert "later" in live
    assert "early_late" in [i["name"] for i in live["early"]["indexes"]]


def test_a_failed_optional_query_keeps_the_snapshot_session(pg_database) -> None:
    """The schema query runs on the session that holds pg_dump's snapshot:
    if it fails (an old server lacking a catalog column), the transaction
    and the session must survive it."""
    from backupagent.engines.pg_session import PsqlSession
    from backupagent.engines.postgresql import classify, conninfo, libpq_env

    src = spec_for(pg_database)
    session = PsqlSession(
        get_engine("postgresql").psql_path(),
        conninfo(src),
        libpq_env(src),
        lambda rc, err: classify(src, "psql", rc, err, "query"),
    )
    try:
        session.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        snap = session.query("SELECT pg_export_snapshot()")
        out, error = session.query_or_error("SELECT no_such_column FROM pg_class")
        assert out is None and error is not None and "no_such_column" in error
        out, error = session.query_or_error("SELECT 6 * 7")
        assert (out, error) == ("42", None)
        assert session.query("SELECT pg_export_snapshot() IS NOT NULL") == "t"
        assert not session.exited
        # The first export is still importable: the transaction never aborted.
        imported = pg_database.psql(
            f"BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT '{snap}'; "
            "SELECT 'ok'; COMMIT"
        )
        assert "ok" in imported
    finally:
        session.close()


def test_a_cancel_while_connecting_to_a_hung_server_ends_at_once(tmp_path: Path) -> None:
    """A server that accepts the connection and then says nothing would hold
    the preparation for connect_timeout (10 s); a cancelled job must not wait."""
    import socket

    from backupagent.jobs.result import CancelToken

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    held: list = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])  # and never answer
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    token = CancelToken()
    spec = parse_database_url(f"postgresql://u:pw@127.0.0.1:{listener.getsockname()[1]}/db")
    threading.Timer(0.5, token.cancel).start()
    t0 = time.monotonic()
    try:
        with pytest.raises(EngineError):
            get_engine("postgresql").prepare_dump(spec, tmp_path, cancel=token)
        elapsed = time.monotonic() - t0
    finally:
        stop.set()
        t.join(timeout=5)
        for conn in held:
            conn.close()
        listener.close()
    assert held, "psql never connected: the test did not exercise a hung server"
    assert elapsed < 3, elapsed
    assert os.listdir(tmp_path) == []
