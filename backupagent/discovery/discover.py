"""Turn running servers into the heartbeat's ``discoveredDatabases`` entries.

Reporting rules (also in docs/discovery.md):

* one entry per database for PostgreSQL and MySQL/MariaDB when a local login
  can list them; template0/template1 and MySQL's system schemas are left out;
* one entry with ``databaseName ""`` when the server is found but its
  databases cannot be listed (no usable credentials, client missing, time
  budget spent) or it has no user databases: the control plane still learns
  that the server exists, and "" cannot be mistaken for a real database;
* Redis: one entry with ``databaseName "0"`` (its default logical database;
  an RDB snapshot covers every logical database anyway);
* MongoDB: one entry with ``databaseName ""`` (listing needs mongosh and
  credentials; not attempted);
* ``host`` is ``localhost`` for loopback or any-address listeners, else the
  bound address; ``port`` is a string, as in the reference.
"""

from __future__ import annotations

import logging
from typing import Any, List, Mapping, Optional

from backupagent.api.models import DiscoveredDatabase
from backupagent.discovery import parse
from backupagent.discovery.probe import (
    Budget,
    Listing,
    Login,
    binary_version,
    list_mysql,
    list_postgres,
)
from backupagent.discovery.procs import ServerProcess, find_servers

log = logging.getLogger(__name__)

DEFAULT_TOTAL_SECONDS = 20.0
DEFAULT_CALL_SECONDS = 3.0


def login_for(
    credentials: Optional[Mapping[str, Any]], kinds: List[str], port: int
) -> Optional[Login]:
    """Pick the login for a server from ``credentials``.

    Keys are ``"<dbType>:<port>"`` (most specific) or ``"<dbType>"``; values
    are a :class:`Login` or a mapping with ``user`` and ``password``. MySQL
    and MariaDB look under both names, since which one a server is may only
    be known after logging in.
    """
    if not credentials:
        return None
    keys = [f"{k}:{port}" for k in kinds] + list(kinds)
    for key in keys:
        value = credentials.get(key)
        if value is None:
            continue
        if isinstance(value, Login):
            return value
        if isinstance(value, Mapping):
            return Login(
                user=str(value.get("user") or ""), password=str(value.get("password") or "")
            )
        log.warning("discovery credentials for %r are not a mapping; ignoring them", key)
    return None


def _entries(
    db_type: str, version: str, host: str, port: int, names: List[str]
) -> List[DiscoveredDatabase]:
    return [
        DiscoveredDatabase(
            dbType=db_type, dbVersion=version, host=host, port=str(port), databaseName=n
        )
        for n in (names or [""])
    ]


def _describe(
    server: ServerProcess, credentials: Optional[Mapping[str, Any]], budget: Budget
) -> List[DiscoveredDatabase]:
    out: List[DiscoveredDatabase] = []
    bin_text = ""  # `<exe> --version`, asked at most once per server
    for port in sorted(server.listen):
        host = parse.pick_host(server.listen[port])
        listing: Optional[Listing] = None
        if server.kind == parse.POSTGRES:
            login = login_for(credentials, [parse.POSTGRES], port)
            listing = list_postgres(server, port, login, budget)
            version = parse.parse_version(parse.POSTGRES, listing.version) if listing else ""
            if not version:
                bin_text = bin_text or binary_version(server, budget)
                version = parse.parse_version(parse.POSTGRES, bin_text)
            out += _entries(
                parse.POSTGRES, version, host, port, listing.databases if listing else []
            )
        elif server.kind == parse.MYSQL:
            login = login_for(credentials, [parse.MARIADB, parse.MYSQL], port)
            listing = list_mysql(server, port, login, budget)
            text = listing.version if listing else ""
            if not text:
                bin_text = bin_text or binary_version(server, budget)
                text = bin_text
            db_type = parse.mysql_flavour(server.name, text)
            version = parse.parse_version(db_type, text)
            out += _entries(db_type, version, host, port, listing.databases if listing else [])
        elif server.kind == parse.REDIS:
            bin_text = bin_text or binary_version(server, budget)
            out += _entries(
                parse.REDIS, parse.parse_version(parse.REDIS, bin_text), host, port, ["0"]
            )
        elif server.kind == parse.MONGODB:
            bin_text = bin_text or binary_version(server, budget)
            out += _entries(
                parse.MONGODB, parse.parse_version(parse.MONGODB, bin_text), host, port, []
            )
        if server.kind in (parse.POSTGRES, parse.MYSQL) and listing is None:
            log.info(
                "%s on port %d: databases not listed (no local login worked; docs/discovery.md)",
                server.kind,
                port,
            )
    return out


def _options(settings: Any) -> Mapping[str, Any]:
    extra = getattr(settings, "extra", None)
    opts = extra.get("discovery") if isinstance(extra, Mapping) else None
    return opts if isinstance(opts, Mapping) else {}


def _seconds(opts: Mapping[str, Any], key: str, default: float) -> float:
    value = opts.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        log.warning(
            "discovery.%s: %r is not a positive number of seconds; using %s", key, value, default
        )
        return default
    return float(value)


def discover_databases(
    settings: Any = None, credentials: Optional[Mapping[str, Any]] = None
) -> List[DiscoveredDatabase]:
    """Databases served on this host. Never raises: a failure is logged and
    whatever was found so far (possibly ``[]``) is returned, because a
    heartbeat must never fail over discovery.

    ``settings`` (a :class:`backupagent.settings.Settings`) may carry an
    agent.yaml ``discovery`` section: ``enabled`` (default true),
    ``timeoutSeconds`` (whole run, default 20) and ``commandTimeoutSeconds``
    (each CLI call, default 3). ``credentials`` maps ``"postgresql"``,
    ``"mysql"``/``"mariadb"`` (optionally ``":<port>"``-suffixed) to
    ``{"user": ..., "password": ...}``; without them, only the host's own
    libpq/MySQL client setup (PG* env, ~/.pgpass, option files, peer/socket
    auth) is used.
    """
    found: List[DiscoveredDatabase] = []
    try:
        opts = _options(settings)
        if opts.get("enabled", True) is False:
            log.debug("discovery disabled in settings")
            return []
        budget = Budget(
            _seconds(opts, "timeoutSeconds", DEFAULT_TOTAL_SECONDS),
            _seconds(opts, "commandTimeoutSeconds", DEFAULT_CALL_SECONDS),
        )
        for server in find_servers():
            try:
                found += _describe(server, credentials, budget)
            except Exception as exc:  # one odd server must not hide the others
                log.warning("discovery of %s pid %d failed: %s", server.kind, server.pid, exc)
    except Exception as exc:
        log.warning("database discovery failed, reporting what was found so far: %s", exc)
    return parse.dedup(found)
