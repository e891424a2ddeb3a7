"""Discovery against real servers started by the fixtures.

Other servers may be running on this machine, so every assertion looks for
the fixtures' own ports rather than for an exact list.
"""

from __future__ import annotations

import os
import time

import pytest

from backupagent.discovery import DiscoveryCache, Login, discover_databases
from backupagent.discovery.probe import Budget, list_mysql, list_postgres
from backupagent.discovery.procs import find_servers

pytestmark = pytest.mark.integration


def _on_port(found, port):
    return [d for d in found if d.port == str(port)]


def _server(pid):
    (server,) = [s for s in find_servers() if s.pid == pid]
    return server


def test_finds_postgres_with_port_version_and_databases(postgres_server, pg_database):
    found = _on_port(discover_databases(), postgres_server.port)
    assert found, f"test PostgreSQL on port {postgres_server.port} not discovered"
    assert {d.dbType for d in found} == {"postgresql"}
    assert {d.host for d in found} == {"localhost"}
    assert {d.dbVersion for d in found} == {postgres_server.version}
    names = {d.databaseName for d in found}
    # As root, the socket + the server's OS user (peer/trust) lists the databases.
    assert pg_database.name in names
    assert "postgres" in names
    assert not names & {"template0", "template1", ""}


def test_postgres_only_one_entry_per_server_not_per_worker(postgres_server):
    servers = [s for s in find_servers() if postgres_server.port in s.listen]
    assert [s.pid for s in servers] == [postgres_server.pid]
    assert servers[0].socket_dirs == [postgres_server.socket_dir]


def test_postgres_listing_with_password_over_tcp(postgres_server, pg_database):
    server = _server(postgres_server.pid)
    server.socket_dirs = []  # leave TCP + password as the only way in
    budget = Budget(total=20, per_call=5)
    good = Login(user="postgres", password=postgres_server.password)
    listing = list_postgres(server, postgres_server.port, good, budget)
    assert listing is not None
    assert pg_database.name in listing.databases
    assert listing.version.startswith(postgres_server.version)

    bad = Login(user="postgres", password="wrong-password")
    assert list_postgres(server, postgres_server.port, bad, budget) is None


def test_postgres_listing_with_pgpass(postgres_server, pg_database, tmp_path, monkeypatch):
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"127.0.0.1:{postgres_server.port}:*:postgres:{postgres_server.password}\n")
    os.chmod(pgpass, 0o600)
    monkeypatch.setenv("PGPASSFILE", str(pgpass))
    monkeypatch.setenv("PGUSER", "postgres")
    server = _server(postgres_server.pid)
    server.socket_dirs = []
    listing = list_postgres(server, postgres_server.port, None, Budget(20, 5))
    assert listing is not None and pg_database.name in listing.databases


def test_postgres_unlistable_reports_empty_database_name(postgres_server, monkeypatch):
    # Not root and no credentials: only the version and port can be reported.
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("PGUSER", "nobody-here")
    monkeypatch.delenv("PGPASSWORD", raising=False)
    found = _on_port(discover_databases(), postgres_server.port)
    assert [d.databaseName for d in found] == [""]
    assert found[0].dbVersion == postgres_server.version


def test_finds_mariadb_without_credentials(mariadb_server):
    found = _on_port(discover_databases(), mariadb_server.port)
    assert len(found) == 1, found
    (entry,) = found
    assert entry.dbType == "mariadb"
    assert entry.host == "localhost"
    assert entry.databaseName == ""  # root needs a password we were not given
    assert mariadb_server.version.startswith(entry.dbVersion)


def test_finds_mariadb_databases_with_credentials(mariadb_server, mariadb_database):
    creds = {"mariadb": {"user": "root", "password": mariadb_server.password}}
    found = _on_port(discover_databases(credentials=creds), mariadb_server.port)
    names = {d.databaseName for d in found}
    assert mariadb_database.name in names
    assert not names & {"mysql", "sys", "information_schema", "performance_schema"}
    assert {d.dbType for d in found} == {"mariadb"}
    assert {d.dbVersion for d in found} == {mariadb_server.version.split("-")[0]}


def test_mariadb_listing_from_option_file_over_tcp(mariadb_server, mariadb_database, monkeypatch):
    # The client reads ~/.my.cnf: a host's own option file is enough.
    home = mariadb_server.base_dir + "/home"
    os.makedirs(home, exist_ok=True)
    with open(mariadb_server.client_cnf) as src, open(home + "/.my.cnf", "w") as dst:
        dst.write(
            "".join(line for line in src if not line.startswith(("host", "port", "protocol")))
        )
    os.chmod(home + "/.my.cnf", 0o600)
    monkeypatch.setenv("HOME", home)
    server = _server(mariadb_server.pid)
    server.mysql_socket = ""  # TCP only
    listing = list_mysql(server, mariadb_server.port, None, Budget(20, 5))
    assert listing is not None
    assert mariadb_database.name in listing.databases
    bad = Login(user="root", password="wrong")
    monkeypatch.setenv("HOME", str(mariadb_server.base_dir))  # no ~/.my.cnf there
    assert list_mysql(server, mariadb_server.port, bad, Budget(20, 5)) is None


def test_finds_redis(redis_server, redis_server_auth):
    found = discover_databases()
    for srv in (redis_server, redis_server_auth):
        entries = _on_port(found, srv.port)
        assert len(entries) == 1, entries
        (e,) = entries
        assert (e.dbType, e.host, e.databaseName) == ("redis", "localhost", "0")
        assert e.dbVersion == srv.version and e.dbVersion


def test_discovery_is_bounded_and_cached(postgres_server, mariadb_server, redis_server):
    start = time.monotonic()
    cache = DiscoveryCache(ttl=300)
    first = cache.get()
    took = time.monotonic() - start
    assert took < 25, f"discovery took {took:.1f}s"
    start = time.monotonic()
    assert cache.get() == first
    assert time.monotonic() - start < 0.05
    ports = {d.port for d in first}
    assert {str(postgres_server.port), str(mariadb_server.port), str(redis_server.port)} <= ports


def test_tiny_budget_still_reports_servers(postgres_server):
    class S:
        extra = {"discovery": {"timeoutSeconds": 0.001}}

    found = _on_port(discover_databases(S()), postgres_server.port)
    # No time for psql or --version: the server is still reported by its port.
    assert [(d.dbType, d.databaseName) for d in found] == [("postgresql", "")]


def test_servers_in_other_network_namespaces_are_skipped(request, redis_server, tmp_path):
    """A server inside a container (another network namespace) is not at
    localhost:port here, so it must not be reported."""
    import shutil
    import subprocess

    from tests.servers import free_port, require, wait_for

    unshare = shutil.which("unshare")
    require(unshare is not None and os.geteuid() == 0, "root and `unshare` (util-linux)")
    port = free_port()
    proc = subprocess.Popen(
        [
            unshare,
            "--net",
            "--",
            "redis-server",
            "--port",
            str(port),
            "--save",
            "",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )

    def stop():
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()

    request.addfinalizer(stop)

    wait_for(lambda: _redis_in_other_ns(port), 10, "redis in a separate network namespace")
    found = discover_databases()
    assert not _on_port(found, port)
    assert _on_port(found, redis_server.port)  # the host's own server still is


def _redis_in_other_ns(port):
    """The namespaced redis is up: its title names the port."""
    import psutil

    for proc in psutil.process_iter(["name", "cmdline"]):
        if proc.info["name"] == "redis-server" and f":{port}" in " ".join(
            proc.info["cmdline"] or []
        ):
            return True
    return False


def test_unprivileged_fallbacks_still_find_ports(
    monkeypatch, postgres_server, mariadb_server, redis_server
):
    """As a non-root agent, other users' sockets are not attributable to pids:
    the ports must then come from command lines (manually checked as
    `nobody` too; see docs/discovery.md)."""
    import psutil

    from backupagent.discovery import procs

    def denied(proc):
        raise psutil.AccessDenied(proc.pid)

    real_table = procs.system_listeners

    def anonymous_table():
        return {port: [(None, ip) for _, ip in entries] for port, entries in real_table().items()}

    monkeypatch.setattr(procs, "_connections", denied)
    monkeypatch.setattr(procs, "system_listeners", anonymous_table)
    by_pid = {s.pid: s for s in procs.find_servers()}
    for srv in (postgres_server, mariadb_server, redis_server):
        server = by_pid[srv.pid]
        assert list(server.listen) == [srv.port], server
        assert server.listen[srv.port] == ["127.0.0.1"]
        assert server.port_source == "command line"
