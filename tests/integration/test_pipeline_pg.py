"""pg_dump through the pipeline into a local target, restored with stock tools only.

The restore is ``age -d -i key | zstd -d | pg_restore -d newdb``: no agent
code on the way back, because that is what a user has in an emergency.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
from pathlib import Path

import pytest

from backupagent.pipeline.errors import PipelineError
from backupagent.pipeline.run import run_backup_pipeline
from backupagent.pipeline.source import ProcessSource
from backupagent.targets.local import LocalTarget
from tests.servers import require_binary
from tests.servers.postgres import PostgresServer, _find_pg_binary

pytestmark = pytest.mark.integration

DATA_SQL = """
CREATE TABLE people (id int PRIMARY KEY, name text NOT NULL, born date, note text);
INSERT INTO people SELECT g, 'person ' || g, date '1950-01-01' + g % 20000,
       CASE WHEN g % 7 = 0 THEN NULL ELSE md5(g::text) END
FROM generate_series(1, 60000) g;
CREATE TABLE events (id bigserial PRIMARY KEY, person_id int REFERENCES people(id),
                     kind text, payload jsonb, at timestamptz);
INSERT INTO events (person_id, kind, payload, at)
SELECT 1 + g % 60000, (ARRAY['login','logout','buy'])[1 + g % 3],
       jsonb_build_object('n', g, 'tag', md5((g * 7)::text)),
       timestamptz '2024-01-01' + g * interval '1 second'
FROM generate_series(1, 120000) g;
CREATE TABLE "Odd Name" (k text PRIMARY KEY, v bytea);
INSERT INTO "Odd Name" SELECT 'k' || g, decode(md5(g::text), 'hex') FROM generate_series(1, 500) g;
CREATE TABLE empty_one (x int);
"""
TABLES = ["people", "events", '"Odd Name"', "empty_one"]


def pg_tool(name: str) -> str:
    path = _find_pg_binary(name)
    if path is None:
        require_binary(name, "apt-get install postgresql-client")
    assert path is not None
    return path


def table_facts(server: PostgresServer, db: str) -> dict:
    facts = {}
    for table in TABLES:
        row = server.psql(
            f"SELECT count(*) || ' ' || coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)),"
            f" '-') FROM {table} t",
            db,
        ).strip()
        facts[table] = row
    return facts


@pytest.fixture
def source_db(postgres_server: PostgresServer):
    name = "pipe_" + secrets.token_hex(4)
    postgres_server.create_database(name)
    try:
        postgres_server.psql(DATA_SQL, name)
        yield name
    finally:
        postgres_server.drop_database(name)


def dump_source(server: PostgresServer, db: str, cancel=None) -> ProcessSource:
    argv = [
        pg_tool("pg_dump"),
        "--format=custom",
        "--compress=0",
        "--no-password",
        f"--dbname={db}",
    ]
    return ProcessSource(argv, server.env(db), cancel=cancel)


def test_pg_dump_backup_restores_with_stock_tools(postgres_server, source_db, tmp_path) -> None:
    age_bin = require_binary("age", "apt-get install age")
    keygen = require_binary("age-keygen", "apt-get install age")
    zstd_bin = require_binary("zstd", "apt-get install zstd")
    key = tmp_path / "key.txt"
    subprocess.run([keygen, "-o", str(key)], check=True, capture_output=True)
    pub = subprocess.run(
        [keygen, "-y", str(key)], check=True, capture_output=True, text=True
    ).stdout.strip()

    target = LocalTarget(str(tmp_path / "backups"))
    object_key = f"host/postgresql/{source_db}/b.dump.zst.age"
    stages = []
    with target.open_writer(object_key) as writer:
        res = run_backup_pipeline(
            dump_source(postgres_server, source_db),
            writer,
            level=3,
            recipients=[pub],
            on_stage=stages.append,
        )
        url = writer.commit()
    assert stages == ["dumping", "compressing", "encrypting", "uploading"]
    path = Path(url[len("file://") :])
    assert path.stat().st_size == res.stored_size
    assert res.dump_size > res.compressed_size > 0

    restored = "restored_" + secrets.token_hex(4)
    postgres_server.create_database(restored)
    try:
        env = postgres_server.env(restored)
        with open(path, "rb") as f:
            age = subprocess.Popen([age_bin, "-d", "-i", str(key)], stdin=f, stdout=subprocess.PIPE)
            zstd = subprocess.Popen(
                [zstd_bin, "-d", "-c"], stdin=age.stdout, stdout=subprocess.PIPE
            )
            age.stdout.close()
            pg = subprocess.run(
                [
                    pg_tool("pg_restore"),
                    "--no-owner",
                    "--exit-on-error",
                    "--no-password",
                    f"--dbname={restored}",
                ],
                stdin=zstd.stdout,
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            zstd.stdout.close()
        assert age.wait() == 0 and zstd.wait() == 0
        assert pg.returncode == 0, pg.stderr
        before = table_facts(postgres_server, source_db)
        after = table_facts(postgres_server, restored)
        assert after == before
        assert before["people"].startswith("60000 ")
        assert before["events"].startswith("120000 ")
    finally:
        postgres_server.drop_database(restored)


def test_pg_dump_killed_mid_stream_commits_nothing(postgres_server, source_db, tmp_path) -> None:
    target = LocalTarget(str(tmp_path / "backups"))
    object_key = f"host/postgresql/{source_db}/killed.dump.zst"
    source = dump_source(postgres_server, source_db)
    # a small chunk size so the first chunk arrives while pg_dump has lots left
    source.chunk_size = 64 * 1024

    def on_stage(stage: str) -> None:
        if stage == "compressing":
            os.kill(source.pid, signal.SIGKILL)

    writer = target.open_writer(object_key)
    # the job's pattern: any exception leaving the block aborts the writer
    with pytest.raises(PipelineError) as info, writer:
        run_backup_pipeline(source, writer, recipients=[], on_stage=on_stage, chunk_size=64 * 1024)
        writer.commit()
    assert info.value.code == "DUMP_FAIL"
    assert "SIGKILL" in str(info.value)
    assert not writer.committed
    assert not target.exists(object_key)
    assert list(target.list()) == []
    leftovers = [p for p in (tmp_path / "backups").rglob("*") if p.is_file()]
    assert leftovers == []


def test_pg_dump_auth_failure_is_dump_fail_without_the_password(
    postgres_server, source_db, tmp_path
) -> None:
    env = postgres_server.env(source_db)
    env["PGPASSWORD"] = "wrong-" + secrets.token_hex(6)
    argv = [pg_tool("pg_dump"), "--format=custom", "--no-password", f"--dbname={source_db}"]
    target = LocalTarget(str(tmp_path / "backups"))
    writer = target.open_writer("h/x.dump.zst")
    with pytest.raises(PipelineError) as info, writer:
        run_backup_pipeline(ProcessSource(argv, env), writer, recipients=[])
    assert info.value.code == "DUMP_FAIL"
    assert "password authentication failed" in str(info.value)
    assert env["PGPASSWORD"] not in str(info.value)
    assert not target.exists("h/x.dump.zst")
