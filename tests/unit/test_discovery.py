"""Pure parts of discovery: command lines, config files, versions, dedup, cache."""

from __future__ import annotations

import logging

import pytest

from backupagent.api.models import DiscoveredDatabase
from backupagent.discovery import DiscoveryCache, Login
from backupagent.discovery import parse as p
from backupagent.discovery.discover import _entries, discover_databases, login_for
from backupagent.discovery.probe import Budget, parse_mysql_listing, parse_pg_listing


@pytest.mark.parametrize(
    ("name", "cmdline", "kind"),
    [
        ("postgres", ["/usr/lib/postgresql/15/bin/postgres", "-D", "/d"], p.POSTGRES),
        ("postmaster", [], p.POSTGRES),
        ("mysqld", ["/usr/sbin/mysqld"], p.MYSQL),
        ("mariadbd", [], p.MYSQL),
        ("mongod", ["mongod", "--config", "/etc/mongod.conf"], p.MONGODB),
        ("redis-server", ["/usr/bin/redis-server 127.0.0.1:6379"], p.REDIS),
        ("bash", ["bash"], None),
        ("postgres_exporter", ["postgres_exporter"], None),
        ("python3", ["python3", "pg_dump.py"], None),
        # a renamed comm but a telling argv[0]
        ("3", ["/usr/sbin/mariadbd", "--port=3306"], p.MYSQL),
    ],
)
def test_classify_process(name, cmdline, kind):
    assert p.classify_process(name, cmdline) == kind


@pytest.mark.parametrize(
    ("kind", "cmdline", "ports"),
    [
        (p.POSTGRES, ["postgres", "-D", "/d", "-p", "5433"], [5433]),
        (p.POSTGRES, ["postgres", "-p5434"], [5434]),
        (p.POSTGRES, ["postgres", "-c", "port=5435"], [5435]),
        (p.POSTGRES, ["postgres", "-cport=5436"], [5436]),
        (p.POSTGRES, ["postgres", "--port=5437"], [5437]),
        (p.POSTGRES, ["postgres", "-D", "/var/lib/postgresql/15/main"], []),
        (p.POSTGRES, ["postgres: checkpointer ", "", ""], []),
        (p.MYSQL, ["mariadbd", "--port=3307"], [3307]),
        (p.MYSQL, ["mysqld", "--port", "3308"], [3308]),
        (p.MYSQL, ["mysqld", "-P", "3309"], [3309]),
        (p.MYSQL, ["mysqld", "-P3310", "--socket=/run/x.sock"], [3310]),
        (p.MYSQL, ["mysqld", "--port=notaport"], []),
        (p.MYSQL, ["mysqld", "--port=70000"], []),
        (p.MONGODB, ["mongod", "--port", "27018"], [27018]),
        (p.MONGODB, ["mongod", "--port=27019", "--bind_ip", "0.0.0.0"], [27019]),  # noqa: S104
        (p.REDIS, ["/usr/bin/redis-server 127.0.0.1:6380"], [6380]),
        (p.REDIS, ["/usr/bin/redis-server *:6381", "", ""], [6381]),
        (p.REDIS, ["redis-server", "--port", "6382"], [6382]),
        (p.REDIS, ["redis-server [::1]:6383"], [6383]),
    ],
)
def test_ports_from_cmdline(kind, cmdline, ports):
    assert p.ports_from_cmdline(kind, cmdline) == ports


def test_pg_settings_from_cmdline_debian_style():
    cmd = [
        "/usr/lib/postgresql/15/bin/postgres",
        "-D",
        "/var/lib/postgresql/15/main",
        "-c",
        "config_file=/etc/postgresql/15/main/postgresql.conf",
        "-k",
        "/tmp/sock",
    ]
    s = p.pg_settings_from_cmdline(cmd)
    assert s["data_directory"] == "/var/lib/postgresql/15/main"
    assert s["config_file"] == "/etc/postgresql/15/main/postgresql.conf"
    assert s["unix_socket_directories"] == "/tmp/sock"
    assert "port" not in s


def test_parse_pg_conf():
    text = """
# port = 1111
port = 5433                             # (change requires restart)
unix_socket_directories = '/var/run/postgresql, /tmp' # comma-separated
listen_addresses='localhost'
cluster_name = 'it''s main'
port 5434
"""
    conf = p.parse_pg_conf(text)
    assert conf["port"] == "5434"  # the last setting wins, like PostgreSQL
    assert p.pg_socket_dirs(conf["unix_socket_directories"]) == ["/var/run/postgresql", "/tmp"]
    assert conf["listen_addresses"] == "localhost"
    assert conf["cluster_name"] == "it's main"


def test_pg_socket_dirs_skip_abstract_and_blank():
    assert p.pg_socket_dirs("@abstract, /run/pg ,,") == ["/run/pg"]


def test_pg_port_from_socket_name():
    assert p.pg_port_from_socket_name(".s.PGSQL.5432") == 5432
    assert p.pg_port_from_socket_name(".s.PGSQL.5432.lock") is None
    assert p.pg_port_from_socket_name("mysqld.sock") is None


@pytest.mark.parametrize(
    ("kind", "text", "version"),
    [
        (p.POSTGRES, "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)", "15.18"),
        (p.POSTGRES, "15.18 (Debian 15.18-0+deb12u1)", "15.18"),
        (p.POSTGRES, "postgres (PostgreSQL) 17beta1", "17beta1"),
        (p.POSTGRES, "16.2", "16.2"),
        (p.MARIADB, "mariadbd  Ver 10.11.19-MariaDB-0+deb12u1 for debian-linux-gnu", "10.11.19"),
        (p.MARIADB, "10.11.19-MariaDB-0+deb12u1", "10.11.19"),
        (p.MYSQL, "/usr/sbin/mysqld  Ver 8.0.36-0ubuntu0.22.04.1 for Linux on x86_64", "8.0.36"),
        (p.MYSQL, "8.0.36", "8.0.36"),
        (p.REDIS, "Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64", "7.0.15"),
        (p.MONGODB, "db version v7.0.2\nBuild Info: {...}", "7.0.2"),
        (p.POSTGRES, "", ""),
        (p.REDIS, "garbage", ""),
    ],
)
def test_parse_version(kind, text, version):
    assert p.parse_version(kind, text) == version


def test_mysql_flavour():
    assert p.mysql_flavour("mysqld", "mysqld  Ver 10.11.6-MariaDB for debian") == p.MARIADB
    assert p.mysql_flavour("mysqld", "mysqld  Ver 8.0.36 for Linux") == p.MYSQL
    assert p.mysql_flavour("mariadbd", "") == p.MARIADB
    assert p.mysql_flavour("mysqld", "") == p.MYSQL


@pytest.mark.parametrize(
    ("ip", "host"),
    [
        ("127.0.0.1", "localhost"),
        ("127.0.1.1", "localhost"),
        ("0.0.0.0", "localhost"),  # noqa: S104
        ("::", "localhost"),
        ("::1", "localhost"),
        ("*", "localhost"),
        ("", "localhost"),
        ("10.1.2.3", "10.1.2.3"),
        ("::ffff:10.1.2.3", "10.1.2.3"),
        ("::ffff:127.0.0.1", "localhost"),
        ("fe80::1%eth0", "fe80::1"),
        ("db.example", "db.example"),
    ],
)
def test_host_for_address(ip, host):
    assert p.host_for_address(ip) == host


def test_pick_host_prefers_local():
    assert p.pick_host(["10.0.0.5", "127.0.0.1"]) == "localhost"
    assert p.pick_host(["10.0.0.5", "10.0.0.6"]) == "10.0.0.5"
    assert p.pick_host([]) == "localhost"


def test_dedup_keeps_first_and_order():
    a = DiscoveredDatabase("postgresql", "15", "localhost", "5432", "app")
    b = DiscoveredDatabase("redis", "7", "localhost", "6379", "0")
    assert p.dedup([a, b, a, b]) == [a, b]
    assert p.dedup([3, 1, 3, 2, 1]) == [3, 1, 2]


def test_entries_without_names_report_empty_database_name():
    (e,) = _entries("postgresql", "15.18", "localhost", 5432, [])
    assert e.databaseName == "" and e.port == "5432"
    names = [x.databaseName for x in _entries("mysql", "8.0.36", "localhost", 3306, ["a", "b"])]
    assert names == ["a", "b"]


def test_parse_pg_listing_handles_odd_names():
    out = "V\x0015.18 (Debian)\x00D\x00app\x00D\x00with\nnewline\x00D\x00template1\x00"
    version, names = parse_pg_listing(out)
    assert version == "15.18 (Debian)"
    assert names == ["app", "with\nnewline"]


def test_parse_mysql_listing_drops_system_schemas():
    out = (
        "V\t10.11.19-MariaDB\nP\t3307\ninformation_schema\napp\nmysql\n"
        "performance_schema\nsys\nshop\nwith\\ttab\n"
    )
    assert parse_mysql_listing(out) == ("10.11.19-MariaDB", 3307, ["app", "shop", "with\\ttab"])


def test_login_for_prefers_port_specific_and_accepts_mappings():
    creds = {
        "postgresql": {"user": "u1", "password": "p1"},
        "postgresql:5433": Login("u2", "p2"),
        "mysql": {"user": "root"},
    }
    assert login_for(creds, ["postgresql"], 5432) == Login("u1", "p1")
    assert login_for(creds, ["postgresql"], 5433) == Login("u2", "p2")
    assert login_for(creds, ["mariadb", "mysql"], 3306) == Login("root", "")
    assert login_for(None, ["postgresql"], 5432) is None
    assert login_for({"redis": {}}, ["postgresql"], 5432) is None


def test_login_repr_hides_password():
    assert "s3cret" not in repr(Login("u", "s3cret"))


def test_budget_is_capped_per_call_and_in_total():
    b = Budget(total=100, per_call=3)
    assert b.timeout() == 3
    spent = Budget(total=0.0001, per_call=3)
    import time

    time.sleep(0.01)
    assert spent.timeout() == 0


def test_cache_reuses_results_within_ttl_and_refreshes_after():
    now = [1000.0]
    calls = []

    def fake_discover(settings, credentials):
        calls.append((settings, credentials))
        return [DiscoveredDatabase("redis", "7", "localhost", str(6379 + len(calls)), "0")]

    cache = DiscoveryCache(
        ttl=300, settings="S", credentials={"x": 1}, discover=fake_discover, clock=lambda: now[0]
    )
    first = cache.get()
    now[0] += 299
    assert cache.get() == first
    assert len(calls) == 1
    now[0] += 2
    second = cache.get()
    assert len(calls) == 2 and second != first
    assert calls[0] == ("S", {"x": 1})
    cache.invalidate()
    cache.get()
    assert len(calls) == 3


def test_discover_never_raises(monkeypatch, caplog):
    import backupagent.discovery.discover as d

    def boom(*a, **k):
        raise RuntimeError("process table exploded")

    monkeypatch.setattr(d, "find_servers", boom)
    with caplog.at_level(logging.WARNING):
        assert discover_databases() == []
    assert "process table exploded" in caplog.text


def test_discover_can_be_disabled_in_settings():
    class S:
        extra = {"discovery": {"enabled": False}}

    assert discover_databases(S()) == []


class _DeniedProc:
    pid = 4242

    def net_connections(self, kind):
        import psutil

        raise psutil.AccessDenied(self.pid)


def _pg(cmdline, socket_dirs=()):
    from backupagent.discovery.procs import ServerProcess

    return ServerProcess(
        kind=p.POSTGRES,
        pid=4242,
        name="postgres",
        exe="",
        cmdline=cmdline,
        username="postgres",
        socket_dirs=list(socket_dirs),
    )


def test_pg_port_from_config_file_when_sockets_hidden(tmp_path):
    from backupagent.discovery.procs import _fill_listen

    (tmp_path / "postgresql.conf").write_text("port = 5499\n")
    (tmp_path / "postgresql.auto.conf").write_text("port = '5498'\n")
    server = _pg(["postgres", "-D", str(tmp_path)])
    _fill_listen(server, _DeniedProc(), {5498: [(None, "0.0.0.0")]})  # noqa: S104
    assert server.listen == {5498: ["0.0.0.0"]}  # noqa: S104 - auto.conf overrides
    assert server.port_source == "config file"


def test_pg_port_from_socket_file_then_default(tmp_path):
    from backupagent.discovery.procs import _fill_listen

    (tmp_path / ".s.PGSQL.5477").touch()
    (tmp_path / ".s.PGSQL.5477.lock").touch()
    server = _pg(["postgres"], socket_dirs=[str(tmp_path)])
    _fill_listen(server, _DeniedProc(), {})
    assert list(server.listen) == [5477] and server.port_source == "socket file"

    empty = tmp_path / "empty"
    empty.mkdir()
    server = _pg(["postgres"], socket_dirs=[str(empty)])
    _fill_listen(server, _DeniedProc(), {})
    assert list(server.listen) == [5432] and server.port_source == "default port"


def test_pid_attributed_table_entries_win(tmp_path):
    from backupagent.discovery.procs import _fill_listen

    server = _pg(["postgres", "-p", "5000"])
    _fill_listen(server, _DeniedProc(), {5001: [(4242, "10.0.0.9")], 5000: [(None, "::")]})
    assert server.listen == {5001: ["10.0.0.9"]}
    assert server.port_source == "system socket table"
