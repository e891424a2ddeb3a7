"""The server fixtures really work: password auth over TCP, create, query."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest

pytestmark = pytest.mark.integration


def test_postgres_password_auth_over_tcp(postgres_server, pg_database):
    assert pg_database.psql("SELECT count(*) FROM customers").strip() == "10"
    assert pg_database.psql("SELECT count(*) FROM orders").strip() == "25"
    assert postgres_server.psql("SELECT inet_server_addr()").strip() == "127.0.0.1"
    method = postgres_server.psql(
        "SELECT auth_method FROM pg_hba_file_rules WHERE type = 'host' LIMIT 1"
    ).strip()
    assert method == "scram-sha-256"


def test_postgres_wrong_password_is_refused(postgres_server):
    env = postgres_server.env()
    env["PGPASSWORD"] = "definitely-wrong"
    res = subprocess.run(
        ["psql", "-X", "-At", "-c", "SELECT 1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert res.returncode != 0
    assert "password authentication failed" in res.stderr


def test_postgres_socket_is_trusted(postgres_server):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    res = subprocess.run(
        [
            "psql",
            "-X",
            "-At",
            "-h",
            postgres_server.socket_dir,
            "-p",
            str(postgres_server.port),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
            "SELECT current_user",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "postgres"


def test_postgres_databases_are_isolated(postgres_server, pg_database):
    names = postgres_server.psql("SELECT datname FROM pg_database").split()
    assert pg_database.name in names
    assert postgres_server.version.startswith("15") or postgres_server.version[:2].isdigit()


def test_mariadb_password_auth_over_tcp(mariadb_server, mariadb_database):
    assert mariadb_database.sql("SELECT COUNT(*) FROM customers").strip() == "10"
    assert mariadb_database.sql("SELECT COUNT(*) FROM orders").strip() == "15"
    # The login really went over TCP as root@127.0.0.1, authenticated by password.
    assert mariadb_server.sql("SELECT CURRENT_USER()").strip() == "root@127.0.0.1"
    assert stat.S_IMODE(os.stat(mariadb_server.client_cnf).st_mode) == 0o600
    assert "MariaDB" in mariadb_server.version


def test_mariadb_wrong_password_is_refused(mariadb_server, tmp_path):
    from tests.servers.mariadb import write_option_file

    cnf = write_option_file(
        str(tmp_path / "bad.cnf"),
        user="root",
        password="wrong",
        host="127.0.0.1",
        port=str(mariadb_server.port),
        protocol="TCP",
    )
    res = subprocess.run(
        [mariadb_server.client, f"--defaults-file={cnf}", "-e", "SELECT 1"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert res.returncode != 0
    assert "Access denied" in res.stderr


def test_redis_set_get(redis_server):
    assert redis_server.cli("SET", "k", "v").strip() == "OK"
    assert redis_server.cli("GET", "k").strip() == "v"


def test_redis_requirepass(redis_server_auth):
    assert redis_server_auth.cli("SET", "k", "v").strip() == "OK"
    assert redis_server_auth.cli("GET", "k").strip() == "v"
    env = {k: v for k, v in os.environ.items() if k != "REDISCLI_AUTH"}
    res = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(redis_server_auth.port), "GET", "k"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert "NOAUTH" in res.stdout + res.stderr
