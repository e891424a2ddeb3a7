"""A throwaway PostgreSQL cluster per test session, with real password auth.

The cluster runs as the ``postgres`` system user (initdb and the server refuse
to run as root). TCP on 127.0.0.1 requires the superuser's password
(scram-sha-256), so code under test that connects over TCP really proves it
passes credentials the libpq way; the unix socket in ``socket_dir`` is
``trust`` so that setup and discovery-by-socket work without one.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import urllib.parse
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional

import pytest

from tests.servers import free_port, os_user_exists, require, wait_for

OS_USER = "postgres"
SUPERUSER = "postgres"


def _find_pg_binary(name: str) -> Optional[str]:
    """PATH first, then Debian's versioned directory (not always on PATH)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return candidates[0] if candidates else None


def _require_pg_binary(name: str) -> str:
    path = _find_pg_binary(name)
    require(path is not None, f"`{name}` not found (apt-get install postgresql)")
    assert path is not None
    return path


def _stop_process(proc: subprocess.Popen, sig: int, timeout: float) -> None:
    """Ask nicely with ``sig``; if that hangs, kill the whole process group."""
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(sig)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@dataclass
class PostgresServer:
    """Connection facts and small helpers for the session's cluster."""

    host: str
    port: int
    user: str
    password: str
    socket_dir: str
    data_dir: str
    base_dir: str
    bin_dir: str
    version: str
    pid: int
    _psql: str = field(repr=False, default="psql")

    def __repr__(self) -> str:  # never show the password in a test report
        return (
            f"PostgresServer(host={self.host!r}, port={self.port}, socket_dir={self.socket_dir!r})"
        )

    def dsn(self, dbname: str = "postgres", *, with_password: bool = True) -> str:
        """A libpq URL over TCP. The password is URL-quoted; pass ``env()`` to a
        subprocess instead of this URL when argv must stay secret-free."""
        auth = urllib.parse.quote(self.user, safe="")
        if with_password:
            auth += ":" + urllib.parse.quote(self.password, safe="")
        db = urllib.parse.quote(dbname, safe="")
        return f"postgresql://{auth}@{self.host}:{self.port}/{db}"

    def env(self, dbname: str = "postgres") -> Dict[str, str]:
        """libpq environment for TCP + password auth; the secret is in PGPASSWORD."""
        env = dict(os.environ)
        for key in list(env):
            if key.startswith("PG"):
                del env[key]
        env.update(
            PGHOST=self.host,
            PGPORT=str(self.port),
            PGUSER=self.user,
            PGPASSWORD=self.password,
            PGDATABASE=dbname,
            PGCONNECT_TIMEOUT="5",
        )
        return env

    def psql(self, sql: str, db: str = "postgres", *, timeout: float = 60) -> str:
        """Run SQL over TCP with password auth; unaligned, tuples-only output.

        The SQL goes in on stdin (not ``-c``) so it never shows in argv.
        """
        argv = [self._psql, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", db]
        res = subprocess.run(
            argv,
            input=sql,
            env=self.env(db),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if res.returncode != 0:
            raise RuntimeError(f"psql on database {db!r} failed ({res.returncode}): {res.stderr}")
        return res.stdout

    def create_database(self, name: str) -> str:
        self.psql(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _start_postgres(base: str) -> tuple:
    initdb = _require_pg_binary("initdb")
    bin_dir = os.path.dirname(os.path.realpath(initdb))
    postgres = os.path.join(bin_dir, "postgres")
    psql = _find_pg_binary("psql") or os.path.join(bin_dir, "psql")
    require(os.path.exists(postgres), f"`postgres` not found next to {initdb}")
    require(os.path.exists(psql), "`psql` not found (apt-get install postgresql-client)")
    if os.geteuid() == 0:
        require(os_user_exists(OS_USER), f"system user {OS_USER!r} to run the cluster")
        run_as: Dict[str, object] = {"user": OS_USER, "group": OS_USER, "extra_groups": []}
    else:
        run_as = {}

    password = "pg-" + secrets.token_hex(12)
    data_dir = os.path.join(base, "data")
    sock_dir = os.path.join(base, "sock")
    pwfile = os.path.join(base, "pwfile")
    os.mkdir(sock_dir, 0o755)
    fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    if run_as:
        import pwd

        pw = pwd.getpwnam(OS_USER)
        for path in (base, sock_dir, pwfile):
            os.chown(path, pw.pw_uid, pw.pw_gid)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C")
    init = subprocess.run(
        [
            initdb,
            "-D",
            data_dir,
            "-U",
            SUPERUSER,
            "--pwfile",
            pwfile,
            "-E",
            "UTF8",
            "--no-locale",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--no-sync",
        ],
        env=env,
        cwd=base,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        **run_as,  # type: ignore[arg-type]
    )
    os.unlink(pwfile)
    if init.returncode != 0:
        raise RuntimeError(f"initdb failed: {init.stdout}\n{init.stderr}")

    port = free_port()
    log = open(os.path.join(base, "postgres.log"), "wb")  # noqa: SIM115 - lives with the server
    proc = subprocess.Popen(
        [
            postgres,
            "-D",
            data_dir,
            "-p",
            str(port),
            "-k",
            sock_dir,
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "synchronous_commit=off",
        ],
        env=env,
        cwd=base,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        **run_as,  # type: ignore[arg-type]
    )
    log.close()
    ver = subprocess.run([postgres, "--version"], capture_output=True, text=True, check=False)
    version = ver.stdout.strip().split()[2] if ver.returncode == 0 else ""
    return proc, PostgresServer(
        host="127.0.0.1",
        port=port,
        user=SUPERUSER,
        password=password,
        socket_dir=sock_dir,
        data_dir=data_dir,
        base_dir=base,
        bin_dir=bin_dir,
        version=version,
        pid=proc.pid,
        _psql=psql,
    )


@pytest.fixture(scope="session")
def postgres_server(request: pytest.FixtureRequest) -> PostgresServer:
    """A PostgreSQL cluster on a free loopback port for the whole session."""
    # Not under pytest's tmp root: that is 0700 root, out of the postgres user's reach.
    base = tempfile.mkdtemp(prefix="ba-pg-")

    proc_box: List[subprocess.Popen] = []

    def cleanup() -> None:
        for proc in proc_box:
            _stop_process(proc, signal.SIGINT, timeout=30)  # SIGINT = fast shutdown
        shutil.rmtree(base, ignore_errors=True)

    request.addfinalizer(cleanup)
    proc, server = _start_postgres(base)
    proc_box.append(proc)

    def ready() -> bool:
        if proc.poll() is not None:
            with open(os.path.join(base, "postgres.log"), errors="replace") as f:
                raise RuntimeError(f"postgres exited early: {f.read()[-2000:]}")
        return server.psql("SELECT 1").strip() == "1"

    wait_for(ready, 60, f"PostgreSQL on port {server.port}", interval=0.2)
    return server


@dataclass
class PgDatabase:
    """A fresh database for one test: ``name``, ``dsn`` and a ``psql`` shortcut."""

    name: str
    server: PostgresServer

    @property
    def dsn(self) -> str:
        return self.server.dsn(self.name)

    def psql(self, sql: str) -> str:
        return self.server.psql(sql, self.name)

    def __str__(self) -> str:
        return self.name


SAMPLE_SQL = """
CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL,
                        created timestamptz DEFAULT now());
CREATE TABLE orders (id serial PRIMARY KEY, customer_id int REFERENCES customers(id),
                     amount numeric(10,2) NOT NULL);
INSERT INTO customers (name) SELECT 'customer ' || g FROM generate_series(1, 10) g;
INSERT INTO orders (customer_id, amount) SELECT 1 + g % 10, g * 1.5 FROM generate_series(1, 25) g;
"""


@pytest.fixture
def pg_database(postgres_server: PostgresServer) -> Iterator[PgDatabase]:
    """A uniquely named database with ``customers`` (10 rows) and ``orders`` (25 rows)."""
    name = "t_" + secrets.token_hex(6)
    postgres_server.create_database(name)
    try:
        postgres_server.psql(SAMPLE_SQL, name)
        yield PgDatabase(name=name, server=postgres_server)
    finally:
        with contextlib.suppress(Exception):  # the whole cluster goes at session end anyway
            postgres_server.drop_database(name)
