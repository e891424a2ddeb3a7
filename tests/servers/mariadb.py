"""A throwaway MariaDB server per test session, with real password auth.

``root`` has a password for both ``localhost`` (the socket) and ``127.0.0.1``
(TCP; the server runs with ``skip-name-resolve`` so TCP logins match that
host exactly). Clients get the password only through a 0600 option file
(``client_cnf``), never argv. ``--no-defaults`` keeps the host's
/etc/mysql config (system socket, data dir) out of the throwaway server.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Iterator, List, Optional

import pytest

from tests.servers import free_port, require_binary, wait_for


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


def write_option_file(path: str, **options: str) -> str:
    """A ``[client]`` option file of mode 0600 (created so, never widened)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("[client]\n")
        for key, value in options.items():
            escaped = value.replace("\\", "\\\\").replace('"', '\\"')
            f.write(f'{key.replace("_", "-")}="{escaped}"\n')
    os.chmod(path, 0o600)
    return path


@dataclass
class MariaDBServer:
    """Connection facts and helpers for the session's MariaDB."""

    host: str
    port: int
    user: str
    password: str
    socket: str
    data_dir: str
    base_dir: str
    client_cnf: str  # 0600 option file: root, password, TCP 127.0.0.1:port
    version: str
    pid: int
    client: str = "mariadb"

    def __repr__(self) -> str:  # never show the password in a test report
        return f"MariaDBServer(host={self.host!r}, port={self.port}, socket={self.socket!r})"

    def dsn(self, dbname: str = "", *, with_password: bool = True) -> str:
        import urllib.parse

        auth = urllib.parse.quote(self.user, safe="")
        if with_password:
            auth += ":" + urllib.parse.quote(self.password, safe="")
        return f"mysql://{auth}@{self.host}:{self.port}/{urllib.parse.quote(dbname, safe='')}"

    def sql(self, sql: str, db: Optional[str] = None, *, timeout: float = 60) -> str:
        """Run SQL over TCP with the password from the option file; the SQL goes
        on stdin. Output: tab-separated rows without a header."""
        argv = [self.client, f"--defaults-file={self.client_cnf}", "--batch", "--skip-column-names"]
        if db:
            argv += ["--database", db]
        res = subprocess.run(
            argv, input=sql, capture_output=True, text=True, timeout=timeout, check=False
        )
        if res.returncode != 0:
            raise RuntimeError(
                f"mariadb on database {db!r} failed ({res.returncode}): {res.stderr}"
            )
        return res.stdout

    def create_database(self, name: str) -> str:
        self.sql(f"CREATE DATABASE `{name}`")
        return name

    def drop_database(self, name: str) -> None:
        self.sql(f"DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture(scope="session")
def mariadb_server(request: pytest.FixtureRequest) -> MariaDBServer:
    """A MariaDB server on a free loopback port for the whole session."""
    install_db = require_binary("mariadb-install-db", "apt-get install mariadb-server")
    mariadbd = shutil.which("mariadbd") or shutil.which("mysqld")
    if mariadbd is None:
        mariadbd = require_binary("mariadbd", "apt-get install mariadb-server")
    client = shutil.which("mariadb") or require_binary("mysql", "apt-get install mariadb-client")

    base = tempfile.mkdtemp(prefix="ba-maria-")
    data_dir = os.path.join(base, "data")
    socket = os.path.join(base, "sock")
    port = free_port()
    proc_box: List[subprocess.Popen] = []

    def cleanup() -> None:
        for proc in proc_box:
            _stop_process(proc, signal.SIGTERM, timeout=30)  # SIGTERM = clean shutdown
        shutil.rmtree(base, ignore_errors=True)

    request.addfinalizer(cleanup)
    init = subprocess.run(
        [
            install_db,
            "--no-defaults",
            f"--datadir={data_dir}",
            "--user=root",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        cwd=base,
    )
    if init.returncode != 0:
        raise RuntimeError(f"mariadb-install-db failed: {init.stdout}\n{init.stderr}")

    log = os.path.join(base, "err.log")
    proc = subprocess.Popen(
        [
            mariadbd,
            "--no-defaults",
            f"--datadir={data_dir}",
            f"--socket={socket}",
            f"--port={port}",
            "--bind-address=127.0.0.1",
            "--user=root",
            f"--pid-file={base}/pid",
            f"--log-error={log}",
            "--skip-name-resolve",
            "--innodb-buffer-pool-size=64M",
            "--innodb-flush-log-at-trx-commit=0",
        ],
        cwd=base,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    proc_box.append(proc)

    # Bootstrap over the socket: root has no password yet.
    boot_cnf = write_option_file(os.path.join(base, "boot.cnf"), user="root", socket=socket)

    def run_boot(sql: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [client, f"--defaults-file={boot_cnf}", "--batch", "--skip-column-names"],
            input=sql,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def ready() -> bool:
        if proc.poll() is not None:
            with open(log, errors="replace") as f:
                raise RuntimeError(f"mariadbd exited early: {f.read()[-2000:]}")
        return run_boot("SELECT 1").returncode == 0

    wait_for(ready, 60, f"MariaDB on port {port}", interval=0.2)

    password = "maria-" + secrets.token_hex(12)
    # install-db may create root@127.0.0.1/::1 without a password, and anonymous
    # users: give every root login the password and drop the anonymous ones.
    boot_sql = "DELETE FROM mysql.global_priv WHERE User = '';\nFLUSH PRIVILEGES;\n"
    for host in ("localhost", "127.0.0.1", "::1"):
        boot_sql += (
            f"CREATE USER IF NOT EXISTS 'root'@'{host}';\n"
            f"ALTER USER 'root'@'{host}' IDENTIFIED BY '{password}';\n"
            f"GRANT ALL PRIVILEGES ON *.* TO 'root'@'{host}' WITH GRANT OPTION;\n"
        )
    set_pw = run_boot(boot_sql + "FLUSH PRIVILEGES;\n")
    os.unlink(boot_cnf)
    if set_pw.returncode != 0:
        raise RuntimeError(f"setting the MariaDB root password failed: {set_pw.stderr}")
    cnf = write_option_file(
        os.path.join(base, "client.cnf"),
        user="root",
        password=password,
        host="127.0.0.1",
        port=str(port),
        protocol="TCP",
    )
    ver = subprocess.run([mariadbd, "--version"], capture_output=True, text=True, check=False)
    server = MariaDBServer(
        host="127.0.0.1",
        port=port,
        user="root",
        password=password,
        socket=socket,
        data_dir=data_dir,
        base_dir=base,
        client_cnf=cnf,
        version=ver.stdout.strip(),
        pid=proc.pid,
        client=client,
    )
    server.version = server.sql("SELECT VERSION()").strip()
    return server


@dataclass
class MariaDBDatabase:
    """A fresh database for one test."""

    name: str
    server: MariaDBServer

    @property
    def dsn(self) -> str:
        return self.server.dsn(self.name)

    def sql(self, sql: str) -> str:
        return self.server.sql(sql, self.name)

    def __str__(self) -> str:
        return self.name


SAMPLE_SQL = """
CREATE TABLE customers (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(100) NOT NULL)
  ENGINE=InnoDB;
CREATE TABLE orders (id INT AUTO_INCREMENT PRIMARY KEY, customer_id INT NOT NULL,
  amount DECIMAL(10,2) NOT NULL, FOREIGN KEY (customer_id) REFERENCES customers(id))
  ENGINE=InnoDB;
INSERT INTO customers (name) VALUES
  ('customer 1'),('customer 2'),('customer 3'),('customer 4'),('customer 5'),
  ('customer 6'),('customer 7'),('customer 8'),('customer 9'),('customer 10');
INSERT INTO orders (customer_id, amount)
  SELECT c.id, c.id * 1.5 FROM customers c;
INSERT INTO orders (customer_id, amount)
  SELECT c.id, c.id * 2.5 FROM customers c WHERE c.id <= 5;
"""


@pytest.fixture
def mariadb_database(mariadb_server: MariaDBServer) -> Iterator[MariaDBDatabase]:
    """A uniquely named database with ``customers`` (10 rows) and ``orders`` (15 rows)."""
    name = "t_" + secrets.token_hex(6)
    mariadb_server.create_database(name)
    try:
        mariadb_server.sql(SAMPLE_SQL, name)
        yield MariaDBDatabase(name=name, server=mariadb_server)
    finally:
        with contextlib.suppress(Exception):  # the whole server goes at session end anyway
            mariadb_server.drop_database(name)
