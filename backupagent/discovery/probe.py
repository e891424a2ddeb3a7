"""Ask a server (or its binary) what it is: versions and database names.

Every probe is one short-lived CLI call (``psql``, ``mariadb``/``mysql``,
``<server> --version``) with a hard timeout and stdin closed, so a server
that hangs or a client that wants to prompt for a password costs a few
seconds, never a stuck heartbeat. Passwords travel only in the child's
environment (PGPASSWORD) or a 0600 option file, never in argv or logs.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple

from backupagent.discovery import parse
from backupagent.discovery.procs import ServerProcess

log = logging.getLogger(__name__)

PG_LIST_SQL = (
    "SELECT 'V', current_setting('server_version') UNION ALL "
    "(SELECT 'D', datname FROM pg_database WHERE datallowconn AND NOT datistemplate "
    "ORDER BY datname)"
)
# @@port lets a login through the client's default socket prove it reached
# the server being described, not another one on the same host.
MYSQL_LIST_SQL = "SELECT 'V', VERSION(); SELECT 'P', @@port; SHOW DATABASES"


@dataclass
class Login:
    """Credentials handed to discovery for one kind of server."""

    user: str = ""
    password: str = ""

    def __repr__(self) -> str:
        return f"Login(user={self.user!r}, password={'***' if self.password else ''!r})"


@dataclass
class Listing:
    version: str  # the server's own version text ("" if not asked)
    databases: List[str]


class Budget:
    """Wall-clock allowance shared by every probe of one discovery run."""

    def __init__(self, total: float, per_call: float) -> None:
        self._now = time.monotonic
        self._deadline = self._now() + total
        self.per_call = per_call

    def timeout(self) -> float:
        """Seconds the next call may take; 0 when the budget is spent."""
        left = self._deadline - self._now()
        return max(0.0, min(self.per_call, left))


def _run(
    argv: List[str],
    budget: Budget,
    env: Optional[Dict[str, str]] = None,
    user: Optional[str] = None,
) -> Optional[str]:
    """stdout of a successful call, else None (the reason goes to the debug log)."""
    timeout = budget.timeout()
    if timeout <= 0.2:
        log.debug("discovery time budget spent; skipping %s", argv[0])
        return None
    extra: Dict[str, object] = {}
    if user is not None:
        extra = {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []}
    try:
        res = subprocess.run(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
            cwd="/",
            **extra,  # type: ignore[arg-type]
        )
    except subprocess.TimeoutExpired:
        log.debug("%s timed out after %.1fs", os.path.basename(argv[0]), timeout)
        return None
    except (OSError, ValueError, KeyError) as exc:
        log.debug("cannot run %s: %s", os.path.basename(argv[0]), exc)
        return None
    if res.returncode != 0:
        err = res.stderr.decode("utf-8", "replace").strip().splitlines()
        log.debug(
            "%s exited %d: %s", os.path.basename(argv[0]), res.returncode, err[-1] if err else ""
        )
        return None
    return res.stdout.decode("utf-8", "replace")


def binary_version(server: ServerProcess, budget: Budget) -> str:
    """Version from ``<exe> --version``; the same-named binary on PATH when
    the process's executable is not readable to us."""
    exe = server.exe or shutil.which(server.name) or ""
    if not exe:
        return ""
    out = _run([exe, "--version"], budget)
    return out.strip() if out else ""


def _client_near(server: ServerProcess, names: Tuple[str, ...]) -> Optional[str]:
    """A client from the server's own bin dir (matching major version) or PATH."""
    if server.exe:
        bindir = os.path.dirname(server.exe)
        for name in names:
            cand = os.path.join(bindir, name)
            if os.access(cand, os.X_OK):
                return cand
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


def _clean_env(prefix: str) -> Dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(prefix)}


def _pg_attempts(
    server: ServerProcess, port: int, login: Optional[Login]
) -> List[Tuple[str, Dict[str, str], Optional[str]]]:
    """(description, env, run-as user) in the order worth trying."""
    attempts: List[Tuple[str, Dict[str, str], Optional[str]]] = []
    sockets = [d for d in server.socket_dirs if os.path.exists(os.path.join(d, f".s.PGSQL.{port}"))]
    hosts = ["127.0.0.1", *sockets]
    if login is not None and (login.user or login.password):
        for host in hosts:
            env = _clean_env("PG")
            env.update(PGHOST=host, PGPORT=str(port))
            if login.user:
                env["PGUSER"] = login.user
            if login.password:
                env["PGPASSWORD"] = login.password
            attempts.append((f"given credentials via {host}", env, None))
    # The agent's own libpq setup: PG* variables, ~/.pgpass, peer auth on the socket.
    for host in [*sockets, "127.0.0.1"]:
        env = dict(os.environ)
        env.update(PGHOST=host, PGPORT=str(port))
        attempts.append((f"local credentials via {host}", env, None))
    # As root, connect as the server's own OS user over the socket: the
    # `sudo -u postgres psql` of every PostgreSQL install (peer auth).
    owner = server.username
    if os.geteuid() == 0 and owner and owner != "root" and sockets:
        try:
            pwd.getpwnam(owner)
        except KeyError:
            owner = ""
        if owner:
            env = _clean_env("PG")
            env.update(PGHOST=sockets[0], PGPORT=str(port), PGUSER=owner, HOME="/")
            attempts.append((f"peer auth as OS user {owner}", env, owner))
    return attempts


def parse_pg_listing(out: str) -> Tuple[str, List[str]]:
    """Split ``psql -z -0`` output: NUL between fields and between records,
    so names with newlines or tabs cannot be mis-split. Every record is
    exactly (tag, value)."""
    tokens = out.split("\0")
    if tokens and tokens[-1].strip() == "":
        tokens.pop()
    version, names = "", []
    for tag, value in zip(tokens[0::2], tokens[1::2]):
        tag = tag.strip("\n")
        if tag == "V":
            version = value
        elif tag == "D" and value not in parse.PG_SYSTEM_DATABASES:
            names.append(value)
    return version, names


def parse_mysql_listing(out: str) -> Tuple[str, Optional[int], List[str]]:
    """``V<TAB>version``, ``P<TAB>port``, then one database per line (batch
    mode escapes tabs and newlines inside names); system schemas dropped."""
    version, port, names = "", None, []
    for line in out.splitlines():
        if line.startswith("V\t"):
            version = line[2:]
        elif line.startswith("P\t"):
            port = parse.parse_port(line[2:])
        elif line and line not in parse.MYSQL_SYSTEM_DATABASES:
            names.append(line)
    return version, port, names


def list_postgres(
    server: ServerProcess, port: int, login: Optional[Login], budget: Budget
) -> Optional[Listing]:
    """Version and non-template databases, or None when no login worked."""
    psql = _client_near(server, ("psql",))
    if psql is None:
        log.info("psql not found: cannot list PostgreSQL databases on port %d", port)
        return None
    for what, env, user in _pg_attempts(server, port, login):
        env.setdefault("PGCONNECT_TIMEOUT", "3")
        env.setdefault("PGDATABASE", "postgres")
        argv = [psql, "-X", "-w", "-A", "-t", "-q", "-z", "-0", "-c", PG_LIST_SQL]
        out = _run(argv, budget, env=env, user=user)
        if out is None:
            log.debug("PostgreSQL port %d: %s did not work", port, what)
            continue
        version, names = parse_pg_listing(out)
        log.debug("PostgreSQL port %d: listed %d databases (%s)", port, len(names), what)
        return Listing(version=version, databases=names)
    return None


def _mysql_option_file(directory: str, options: Mapping[str, str]) -> str:
    fd, path = tempfile.mkstemp(prefix="discover-", suffix=".cnf", dir=directory)
    with os.fdopen(fd, "w") as f:  # mkstemp creates it 0600
        f.write("[client]\n")
        for key, value in options.items():
            escaped = value.replace("\\", "\\\\").replace('"', '\\"')
            f.write(f'{key}="{escaped}"\n')
    return path


def _where(endpoint: Mapping[str, str]) -> str:
    if "socket" in endpoint:
        return endpoint["socket"]
    return "TCP" if endpoint else "the default socket"


def list_mysql(
    server: ServerProcess, port: int, login: Optional[Login], budget: Budget
) -> Optional[Listing]:
    """Version and user databases of a MySQL/MariaDB server, or None."""
    client = _client_near(server, ("mariadb", "mysql"))
    if client is None:
        log.info("mariadb/mysql client not found: cannot list databases on port %d", port)
        return None
    endpoints: List[Dict[str, str]] = []
    if server.mysql_socket and os.path.exists(server.mysql_socket):
        endpoints.append({"socket": server.mysql_socket, "protocol": "SOCKET"})
    elif not server.mysql_socket:
        endpoints.append({})  # the client's default socket (from /etc/mysql)
    endpoints.append({"host": "127.0.0.1", "port": str(port), "protocol": "TCP"})
    common = ["--batch", "--skip-column-names", "--connect-timeout=3", "-e", MYSQL_LIST_SQL]
    with tempfile.TemporaryDirectory(prefix="backupagent-discover-") as tmp:
        attempts: List[Tuple[str, List[str]]] = []
        if login is not None and (login.user or login.password):
            for ep in endpoints:
                opts = dict(ep)
                if login.user:
                    opts["user"] = login.user
                if login.password:
                    opts["password"] = login.password
                cnf = _mysql_option_file(tmp, opts)
                # --defaults-extra-file: the host's option files still apply,
                # the given login overrides them.
                attempts.append(
                    (
                        f"given credentials via {_where(ep)}",
                        [client, f"--defaults-extra-file={cnf}", *common],
                    )
                )
        for ep in endpoints:
            # Only the host's option files (~/.my.cnf, /etc/mysql): no password here.
            cnf = _mysql_option_file(tmp, ep)
            attempts.append(
                (
                    f"local option files via {_where(ep)}",
                    [client, f"--defaults-extra-file={cnf}", *common],
                )
            )
        for what, argv in attempts:
            out = _run(argv, budget, env=_clean_env("MYSQL_PWD"))
            if out is None:
                log.debug("MySQL port %d: %s did not work", port, what)
                continue
            version, seen_port, names = parse_mysql_listing(out)
            if seen_port != port:
                log.debug("MySQL port %d: %s reached the server on port %s", port, what, seen_port)
                continue
            log.debug("MySQL port %d: listed %d databases (%s)", port, len(names), what)
            return Listing(version=version, databases=names)
    return None
