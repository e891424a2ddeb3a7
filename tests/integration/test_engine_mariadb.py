"""MariaDB engine (the mysql module) against a real server: round trips and failures."""

from __future__ import annotations

import os
import secrets
import subprocess
import urllib.parse
from pathlib import Path
from typing import Dict, Iterator

import pytest

from backupagent.engines import get_engine, parse_database_url
from backupagent.engines.base import ConnectionSpec, EngineError
from backupagent.engines.process import restore_from_file, stream_dump
from tests.servers import free_port

pytestmark = pytest.mark.integration

EXTRA_SQL = """
CREATE TABLE `odd ``name``` (k VARCHAR(20) NOT NULL, n INT NOT NULL, blob_col BLOB,
  note VARCHAR(10) DEFAULT 'x', PRIMARY KEY (n, k), UNIQUE KEY uk (k)) ENGINE=InnoDB;
INSERT INTO `odd ``name``` VALUES ('a\\tb', 1, UNHEX('00FF10'), NULL), ('c\\nd', 2, NULL, 'y'),
  ('e', 3, UNHEX(''), 'z');
CREATE TABLE audit (id INT AUTO_INCREMENT PRIMARY KEY, msg VARCHAR(50)) ENGINE=InnoDB;
CREATE TRIGGER customers_ai AFTER INSERT ON customers FOR EACH ROW
  INSERT INTO audit (msg) VALUES (CONCAT('new ', NEW.name));
CREATE PROCEDURE order_total(OUT t DECIMAL(12,2)) SELECT SUM(amount) INTO t FROM orders;
CREATE VIEW big_orders AS SELECT * FROM orders WHERE amount > 10;
INSERT INTO customers (name) VALUES ('customer 11');
"""


def spec_for(db) -> ConnectionSpec:
    spec = parse_database_url(db.dsn)
    return ConnectionSpec(
        "mariadb", spec.host, spec.port, spec.database_name, spec.user, spec.password
    )


def checksums(db, tables) -> Dict[str, str]:
    """Content checksum per table (same server version on both sides)."""
    out = {}
    for table in tables:
        ident = "`" + table.replace("`", "``") + "`"
        out[table] = db.sql(f"CHECKSUM TABLE {ident} EXTENDED").split("\t")[-1].strip()
    return out


@pytest.fixture
def fresh_db(mariadb_server) -> Iterator:
    from tests.servers.mariadb import MariaDBDatabase

    name = "r_" + secrets.token_hex(6)
    mariadb_server.create_database(name)
    try:
        yield MariaDBDatabase(name=name, server=mariadb_server)
    finally:
        mariadb_server.drop_database(name)


def test_round_trip_with_routines_triggers_and_checksums(
    mariadb_database, fresh_db, tmp_path: Path
) -> None:
    mariadb_database.sql(EXTRA_SQL)
    engine = get_engine("mariadb")
    src, dst = spec_for(mariadb_database), spec_for(fresh_db)
    assert "MariaDB" in engine.server_version(src)
    assert engine.tool_version()
    assert engine.is_empty(dst) and not engine.is_empty(src)

    with engine.prepare_dump(src, tmp_path) as plan:
        assert plan.argv[1].startswith("--defaults-extra-file=")
        assert src.password not in " ".join(plan.argv)
        with open(tmp_path / "db.sql", "wb") as f:
            stream_dump(engine, src, plan, f.write)
    assert os.listdir(tmp_path) == ["db.sql"]  # the credentials file is gone
    assert plan.row_counts == {"audit": 1, "customers": 11, "odd `name`": 3, "orders": 15}
    assert plan.row_counts_exact is False and "rowCountsCaveat" in plan.extra

    restore_from_file(engine, dst, tmp_path / "db.sql", tmp_path)
    assert os.listdir(tmp_path) == ["db.sql"]
    assert engine.list_tables_with_counts(dst) == plan.row_counts
    assert checksums(fresh_db, plan.row_counts) == checksums(mariadb_database, plan.row_counts)
    routines = fresh_db.sql(
        "SELECT ROUTINE_NAME FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = DATABASE()"
    )
    assert routines.split() == ["order_total"]
    assert fresh_db.sql("SHOW TRIGGERS").split("\t")[0] == "customers_ai"

    src_schema, dst_schema = engine.schema_snapshot(src), engine.schema_snapshot(dst)
    for table in dst_schema["tables"]:
        table["schema"] = mariadb_database.name
    assert src_schema == dst_schema


def test_restore_argv_with_password_in_env(mariadb_database, fresh_db, tmp_path: Path) -> None:
    engine = get_engine("mariadb")
    src, dst = spec_for(mariadb_database), spec_for(fresh_db)
    with engine.prepare_dump(src, tmp_path) as plan, open(tmp_path / "db.sql", "wb") as f:
        stream_dump(engine, src, plan, f.write)
    argv, env = engine.restore_argv(dst)
    assert dst.password not in " ".join(argv)
    with open(tmp_path / "db.sql", "rb") as f:
        res = subprocess.run(argv, env=env, stdin=f, capture_output=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    assert engine.list_tables_with_counts(dst) == plan.row_counts


def test_schema_snapshot_contents(mariadb_database) -> None:
    mariadb_database.sql(EXTRA_SQL)
    engine = get_engine("mariadb")
    snap = engine.schema_snapshot(spec_for(mariadb_database))
    tables = {t["name"]: t for t in snap["tables"]}
    assert sorted(tables) == ["audit", "customers", "odd `name`", "orders"]  # no view
    odd = tables["odd `name`"]
    assert odd["primaryKey"] == ["n", "k"]
    assert [c["name"] for c in odd["columns"]] == ["k", "n", "blob_col", "note"]
    assert odd["columns"][0]["nullable"] is False and odd["columns"][2]["nullable"] is True
    assert odd["columns"][3]["default"] == "'x'"
    assert odd["columns"][2]["default"] is None
    assert {"name": "uk", "columns": ["k"], "unique": True} in odd["indexes"]
    orders = tables["orders"]
    assert any(not i["unique"] and i["columns"] == ["customer_id"] for i in orders["indexes"])
    assert snap == engine.schema_snapshot(spec_for(mariadb_database))


def test_wrong_password_is_auth_fail(mariadb_database, tmp_path: Path) -> None:
    engine = get_engine("mariadb")
    good = spec_for(mariadb_database)
    wrong = "wrong-" + secrets.token_hex(8)
    bad = ConnectionSpec("mariadb", good.host, good.port, good.database_name, good.user, wrong)
    with pytest.raises(EngineError) as info:
        engine.prepare_dump(bad, tmp_path)
    assert info.value.code == "AUTH_FAIL"
    assert wrong not in str(info.value)
    assert os.listdir(tmp_path) == []


def test_unreachable_and_unknown_database(mariadb_server, tmp_path: Path) -> None:
    engine = get_engine("mysql")
    spec = parse_database_url(f"mysql://root:secretpw123@127.0.0.1:{free_port()}/x")
    with pytest.raises(EngineError) as info:
        engine.prepare_dump(spec, tmp_path)
    assert info.value.code == "DB_UNREACHABLE" and "secretpw123" not in str(info.value)
    missing = parse_database_url(
        f"mysql://root:{urllib.parse.quote(mariadb_server.password, safe='')}"
        f"@127.0.0.1:{mariadb_server.port}/no_such_db"
    )
    with pytest.raises(EngineError) as info:
        engine.server_version(missing)
    assert info.value.code == "DB_NOT_FOUND"
    assert mariadb_server.password not in str(info.value)


def test_dump_killed_mid_stream_is_dump_fail(mariadb_database, tmp_path: Path) -> None:
    mariadb_database.sql(
        "CREATE TABLE bulk (id INT PRIMARY KEY, filler TEXT);"
        "INSERT INTO bulk SELECT seq, REPEAT(MD5(seq), 8) FROM seq_1_to_30000;"
    )
    engine = get_engine("mariadb")
    src = spec_for(mariadb_database)
    procs = []

    def write(chunk: bytes) -> None:
        if procs and procs[0].poll() is None:
            procs[0].kill()

    with pytest.raises(EngineError) as info, engine.prepare_dump(src, tmp_path) as plan:
        stream_dump(engine, src, plan, write, chunk_size=4096, on_start=procs.append)
    assert info.value.code == "DUMP_FAIL" and "signal 9" in str(info.value)
    assert os.listdir(tmp_path) == []
