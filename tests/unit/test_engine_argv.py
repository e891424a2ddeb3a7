"""argv building: secrets never in argv, credentials files private, errors classified.

These use the real tools only for ``--version``-style lookups (no server);
anything needing a server is in tests/integration.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from backupagent.engines import get_engine, supported_db_types
from backupagent.engines.base import DumpPlan, Engine, EngineError, write_secret_file
from backupagent.engines.mysql import MySQLEngine, option_file_text
from backupagent.engines.postgresql import conninfo, libpq_env, select_tool
from backupagent.engines.redis import RedisEngine, parse_keyspace
from backupagent.engines.registry import get_engine as registry_get
from tests.servers import require

SECRET = "Sup3r'Secret\"pw\\with spaces"


def _assert_no_secret(argv) -> None:
    for arg in argv:
        assert SECRET not in arg
        assert "Sup3r" not in arg


def test_registry_knows_every_engine_and_each_meets_the_protocol() -> None:
    assert supported_db_types() == ("mariadb", "mysql", "postgresql", "redis", "sqlite")
    for db_type in supported_db_types():
        engine = get_engine(db_type)
        assert isinstance(engine, Engine)
        assert engine.db_type == db_type
        assert engine.dump_format and engine.file_extension
    assert registry_get("Postgres").db_type == "postgresql"
    with pytest.raises(EngineError) as info:
        get_engine("oracle")
    assert info.value.code == "UNSUPPORTED" and "oracle" in str(info.value)


def test_postgres_conninfo_has_no_password_and_quotes_values() -> None:
    spec = get_spec("postgresql", password=SECRET, name="we'ird db")
    info = conninfo(spec)
    _assert_no_secret([info])
    assert "dbname='we\\'ird db'" in info
    assert "host='127.0.0.1'" in info and "port='5432'" in info
    assert libpq_env(spec)["PGPASSWORD"] == SECRET


def test_postgres_socket_file_is_split_into_dir_and_port() -> None:
    from backupagent.engines.base import ConnectionSpec

    spec = ConnectionSpec("postgresql", "", "", "db", socket="/run/pg/.s.PGSQL.5433")
    info = conninfo(spec)
    assert "host='/run/pg'" in info and "port='5433'" in info


def test_postgres_restore_argv_never_carries_the_password() -> None:
    require(bool(_which("pg_restore")), "pg_restore (apt-get install postgresql-client)")
    spec = get_spec("postgresql", password=SECRET, port="1")  # nothing listens: no version
    argv, env = get_engine("postgresql").restore_argv(spec)
    _assert_no_secret(argv)
    assert "--no-owner" in argv and env["PGPASSWORD"] == SECRET
    assert os.path.basename(argv[0]) == "pg_restore"


def test_select_tool_picks_matching_major_and_refuses_older() -> None:
    require(bool(_which("pg_dump")), "pg_dump (apt-get install postgresql-client)")
    path, line = select_tool("pg_dump", 10)
    assert os.path.basename(path) == "pg_dump" and "PostgreSQL" in line
    with pytest.raises(EngineError) as info:
        select_tool("pg_dump", 99)
    assert info.value.code == "TOOL_MISSING" and "postgresql-client-99" in str(info.value)


def test_mysql_defaults_file_is_first_argument_and_private(tmp_path: Path) -> None:
    require(bool(_which("mariadb-dump") or _which("mysqldump")), "mariadb-client")
    engine = MySQLEngine("mariadb")
    spec = get_spec("mariadb", password=SECRET)
    defaults = write_secret_file(tmp_path, ".my-", option_file_text(spec))
    argv = engine.dump_argv(defaults, spec)
    assert argv[1] == f"--defaults-extra-file={defaults}"
    for flag in ("--single-transaction", "--routines", "--triggers", "--events", "--hex-blob"):
        assert flag in argv
    assert argv[-1] == "app"
    _assert_no_secret(argv)
    assert stat.S_IMODE(os.stat(defaults).st_mode) == 0o600
    text = defaults.read_text()
    assert 'password="Sup3r\'Secret\\"pw\\\\with spaces"' in text


def test_mysql_restore_paths_keep_password_out_of_argv(tmp_path: Path) -> None:
    require(bool(_which("mariadb") or _which("mysql")), "mariadb-client")
    engine = MySQLEngine("mysql")
    spec = get_spec("mysql", password=SECRET)
    argv, env = engine.restore_argv(spec)
    _assert_no_secret(argv)
    assert env["MYSQL_PWD"] == SECRET
    with engine.prepare_restore(spec, tmp_path) as plan:
        _assert_no_secret(plan.argv)
        assert plan.argv[1].startswith("--defaults-extra-file=")
        cnf = Path(plan.argv[1].split("=", 1)[1])
        assert cnf.exists() and stat.S_IMODE(os.stat(cnf).st_mode) == 0o600
    assert not cnf.exists()


def test_redis_argv_uses_env_for_the_password() -> None:
    require(bool(_which("redis-cli")), "redis-tools")
    engine = RedisEngine()
    spec = get_spec("redis", password=SECRET, user="backup", name="0", port="6379")
    argv = [*engine.base_argv(spec), "--rdb", "-"]
    _assert_no_secret(argv)
    assert "-a" not in argv and "--pass" not in argv
    assert argv[argv.index("--user") + 1] == "backup"
    assert engine.env(spec)["REDISCLI_AUTH"] == SECRET
    with pytest.raises(EngineError) as info:
        engine.restore_argv(spec)
    assert info.value.code == "UNSUPPORTED" and "dump.rdb" in str(info.value)


def test_redis_keyspace_parsing() -> None:
    info = "# Keyspace\r\ndb10:keys=1,expires=0\r\ndb0:keys=42,expires=3,avg_ttl=0\r\n"
    assert parse_keyspace(info) == {"db0": 42, "db10": 1}
    assert list(parse_keyspace(info)) == ["db0", "db10"]
    assert parse_keyspace("# Keyspace\r\n") == {}


def test_sqlite_restore_argv_runs_python_not_a_shell() -> None:
    import sys

    spec = get_spec("sqlite", name="/tmp/x.db")
    argv, _ = get_engine("sqlite").restore_argv(spec)
    assert argv[0] == sys.executable and argv[1] == "-c" and argv[-1] == "/tmp/x.db"


@pytest.mark.parametrize(
    "db_type, stderr, code",
    [
        ("postgresql", 'FATAL:  password authentication failed for user "u"', "AUTH_FAIL"),
        (
            "postgresql",
            'connection to server at "h", port 1 failed: Connection refused',
            "DB_UNREACHABLE",
        ),
        ("postgresql", 'FATAL:  database "nope" does not exist', "DB_NOT_FOUND"),
        ("postgresql", "ERROR:  permission denied for table secret", "PERMISSION_DENIED"),
        ("postgresql", "pg_dump: error: something else", "DUMP_FAIL"),
        (
            "mysql",
            "ERROR 1045 (28000): Access denied for user 'u'@'h' (using password: YES)",
            "AUTH_FAIL",
        ),
        ("mysql", "ERROR 2002 (HY000): Can't connect to server on 'h' (115)", "DB_UNREACHABLE"),
        ("mysql", "ERROR 1049 (42000): Unknown database 'x'", "DB_NOT_FOUND"),
        (
            "mysql",
            "Access denied; you need (at least one of) the PROCESS privilege(s)",
            "PERMISSION_DENIED",
        ),
        ("redis", "AUTH failed: WRONGPASS invalid username-password pair", "AUTH_FAIL"),
        (
            "redis",
            "Could not connect to Redis at 127.0.0.1:1: Connection refused",
            "DB_UNREACHABLE",
        ),
    ],
)
def test_failures_are_classified_without_the_password(db_type: str, stderr: str, code: str) -> None:
    engine = get_engine(db_type)
    spec = get_spec(db_type, password=SECRET)
    try:
        err = engine.classify_failure(spec, 1, (stderr + " " + SECRET).encode(), action="dump")
    except EngineError as exc:  # a tool lookup failed: still must be classified
        from tests.servers import require

        require(False, f"tool missing: {exc}")
        raise
    assert err.code == code, str(err)
    assert SECRET not in str(err)


def test_killed_dump_is_a_dump_failure() -> None:
    spec = get_spec("postgresql", password=SECRET)
    err = get_engine("postgresql").classify_failure(spec, -9, b"", action="dump")
    assert err.code == "DUMP_FAIL" and "signal 9" in str(err)


def test_dump_plan_runs_every_cleanup_once_even_when_one_fails() -> None:
    calls = []

    def boom() -> None:
        calls.append("boom")
        raise RuntimeError("cleanup failed")

    plan = DumpPlan(argv=["true"], cleanups=[lambda: calls.append("a"), boom])
    plan.add_cleanup(lambda: calls.append("c"))
    with pytest.raises(RuntimeError), plan:
        pass
    assert calls == ["c", "boom", "a"]
    plan.close()
    assert calls == ["c", "boom", "a"] and plan.closed


def test_write_secret_file_is_0600_and_never_reuses_a_name(tmp_path: Path) -> None:
    a = write_secret_file(tmp_path, "s-", "one")
    b = write_secret_file(tmp_path, "s-", "two")
    assert a != b
    assert stat.S_IMODE(os.stat(a).st_mode) == 0o600
    assert a.read_text() == "one"


# -- helpers ------------------------------------------------------------------


def _which(name: str):
    import shutil

    return shutil.which(name)


def get_spec(db_type: str, *, password=None, user="u", name="app", port=None):
    from backupagent.engines.base import DEFAULT_PORTS, ConnectionSpec

    if db_type == "sqlite":
        return ConnectionSpec("sqlite", database_name=name)
    return ConnectionSpec(
        db_type,
        "127.0.0.1",
        port or DEFAULT_PORTS[db_type],
        name,
        user=user,
        password=password,
    )


def test_versioned_install_paths_name_their_major() -> None:
    from backupagent.engines.postgresql import _path_major

    assert _path_major("/usr/lib/postgresql/15/bin/pg_dump") == 15
    assert _path_major("/usr/pgsql-16/bin/pg_dump") == 16
    assert _path_major("/usr/bin/pg_dump") is None
    assert _path_major("/usr/lib/postgresql/15/bin/../../../../tmp/pg_dump") is None


def test_choosing_pg_dump_asks_only_the_chosen_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each ``--version`` is a process before the dump starts (Debian's
    /usr/bin wrapper is Perl, ~40 ms): a packaged install's major comes from
    its directory and only the chosen binary is asked, for the manifest."""
    import glob

    from backupagent.engines import postgresql as pg

    versioned = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_dump"))
    require(bool(versioned), "a packaged pg_dump under /usr/lib/postgresql/N/bin")
    asked = []
    real = pg.run_tool

    def spy(argv, env, **kw):
        asked.append(argv[0])
        return real(argv, env, **kw)

    monkeypatch.setattr(pg, "run_tool", spy)
    pg._binary_major.cache_clear()
    try:
        major = pg._path_major(versioned[0])
        path, line = select_tool("pg_dump", major)
    finally:
        pg._binary_major.cache_clear()
    assert path == versioned[0] and f"(PostgreSQL) {major}" in line
    assert asked == [path]
    on_path = _which("pg_dump")
    if on_path and os.path.basename(os.path.realpath(on_path)) == "pg_wrapper":
        assert on_path not in pg.tool_candidates("pg_dump")
        assert get_engine("postgresql").psql_path().startswith("/usr/lib/postgresql/")
