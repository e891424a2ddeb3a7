"""Pure parsing for discovery: process names, command lines, config files, versions.

Kept free of psutil and subprocesses so every rule here is unit-testable;
the messy real-world inputs (Debian's ``-c config_file=``, Redis rewriting its
process title, ``-p5432`` vs ``--port 5432``) are exactly what tests pin down.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, TypeVar

# Server kinds; MySQL and MariaDB share one kind until a version string tells
# them apart (Debian ships a ``mysqld`` that is really MariaDB).
POSTGRES = "postgresql"
MYSQL = "mysql"
MARIADB = "mariadb"
MONGODB = "mongodb"
REDIS = "redis"

PROCESS_NAMES: Dict[str, str] = {
    "postgres": POSTGRES,
    "postmaster": POSTGRES,
    "mysqld": MYSQL,
    "mariadbd": MYSQL,
    "mongod": MONGODB,
    "redis-server": REDIS,
}

DEFAULT_PORTS: Dict[str, int] = {POSTGRES: 5432, MYSQL: 3306, MONGODB: 27017, REDIS: 6379}

PG_SYSTEM_DATABASES = frozenset({"template0", "template1"})
MYSQL_SYSTEM_DATABASES = frozenset({"information_schema", "performance_schema", "mysql", "sys"})


def classify_process(name: str, cmdline: Sequence[str] = ()) -> Optional[str]:
    """The server kind of a process, or None.

    ``name`` is the kernel's comm (15 chars max). ``cmdline[0]`` is consulted
    only when the name is unhelpful, e.g. a server started through a symlink
    with a different name.
    """
    kind = PROCESS_NAMES.get(name)
    if kind is None and cmdline:
        first = cmdline[0].split()[0] if cmdline[0].strip() else ""
        kind = PROCESS_NAMES.get(first.rsplit("/", 1)[-1])
    return kind


def parse_port(value: str) -> Optional[int]:
    """A TCP port number from text, or None (quotes allowed, range-checked)."""
    value = value.strip().strip("'\"")
    if value.isdigit() and 0 < int(value) < 65536:
        return int(value)
    return None


def option_values(cmdline: Sequence[str], short: Iterable[str], long: Iterable[str]) -> List[str]:
    """Every value given to an option in any common spelling.

    Handles ``-p 5432``, ``-p5432``, ``--port 5432`` and ``--port=5432``.
    ``long`` names are given without dashes; MySQL's ``--port`` and
    ``--port_number``-style underscore variants are matched too.
    """
    shorts = tuple(short)
    longs = {n.replace("_", "-") for n in long}
    values: List[str] = []
    args = list(cmdline[1:]) if cmdline else []
    i = 0
    while i < len(args):
        arg = args[i]
        nxt = args[i + 1] if i + 1 < len(args) else None
        if arg.startswith("--"):
            key, eq, val = arg[2:].partition("=")
            if key.replace("_", "-") in longs:
                if eq:
                    values.append(val)
                elif nxt is not None:
                    values.append(nxt)
                    i += 1
        elif arg.startswith("-") and len(arg) >= 2 and arg[1:2] in shorts:
            if len(arg) > 2:
                values.append(arg[2:])
            elif nxt is not None:
                values.append(nxt)
                i += 1
        i += 1
    return values


def pg_settings_from_cmdline(cmdline: Sequence[str]) -> Dict[str, str]:
    """PostgreSQL settings given on the command line (``-c name=value``,
    ``--name=value``, and the short forms ``-p``, ``-D``, ``-k``, ``-h``)."""
    out: Dict[str, str] = {}
    for item in option_values(cmdline, "c", ()):
        key, eq, val = item.partition("=")
        if eq:
            out[key.strip().replace("-", "_").lower()] = val.strip()
    args = list(cmdline[1:]) if cmdline else []
    for arg in args:
        if arg.startswith("--") and "=" in arg:
            key, _, val = arg[2:].partition("=")
            out[key.replace("-", "_").lower()] = val
    shorts = {
        "p": "port",
        "D": "data_directory",
        "k": "unix_socket_directories",
        "h": "listen_addresses",
    }
    for flag, name in shorts.items():
        vals = option_values(cmdline, flag, ())
        if vals:
            out[name] = vals[-1]
    return out


_CONF_LINE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*=?\s*(.*?)\s*$")


def parse_pg_conf(text: str) -> Dict[str, str]:
    """``name = value`` lines of postgresql.conf (last one wins; quotes and
    trailing comments removed). Includes are not followed: discovery is a
    best-effort hint, not a config loader."""
    out: Dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _CONF_LINE.match(line)
        if not m:
            continue
        key, val = m.group(1).lower(), m.group(2)
        if val.startswith("'"):
            end = val.find("'", 1)
            while end != -1 and val[end + 1 : end + 2] == "'":  # '' is an escaped quote
                end = val.find("'", end + 2)
            val = val[1:end] if end != -1 else val[1:]
            val = val.replace("''", "'")
        else:
            val = val.split("#", 1)[0].strip()
        out[key] = val
    return out


def pg_socket_dirs(value: str) -> List[str]:
    """``unix_socket_directories`` is comma-separated; '@' entries are Linux
    abstract sockets, which psql cannot be pointed at by directory."""
    return [d.strip() for d in value.split(",") if d.strip() and not d.strip().startswith("@")]


def pg_port_from_socket_name(name: str) -> Optional[int]:
    """``.s.PGSQL.5432`` -> 5432 (the socket file names the port)."""
    if name.startswith(".s.PGSQL.") and not name.endswith(".lock"):
        return parse_port(name[len(".s.PGSQL.") :])
    return None


def ports_from_cmdline(kind: str, cmdline: Sequence[str]) -> List[int]:
    """Ports a server's command line says it listens on (may be empty)."""
    values: List[str] = []
    if kind == POSTGRES:
        settings = pg_settings_from_cmdline(cmdline)
        if "port" in settings:
            values.append(settings["port"])
    elif kind == MYSQL:
        values = option_values(cmdline, "P", ("port",))
    elif kind == MONGODB:
        values = option_values(cmdline, "", ("port",))
    elif kind == REDIS:
        values = option_values(cmdline, "", ("port",))
        title = redis_title_address(cmdline)
        if title is not None:
            values.append(str(title[1]))
    ports = [p for p in (parse_port(v) for v in values) if p is not None]
    return dedup(ports)


def redis_title_address(cmdline: Sequence[str]) -> Optional[Tuple[str, int]]:
    """Redis rewrites its process title to ``redis-server 127.0.0.1:6379`` (or
    ``*:6379``), hiding the original arguments but naming the address."""
    words = " ".join(cmdline).split()
    for word in reversed(words):
        host, sep, port = word.rpartition(":")
        if sep and host and parse_port(port) is not None and not word.startswith("-"):
            return host.strip("[]"), int(port)
    return None


def host_for_address(ip: str) -> str:
    """The reported ``host``: ``localhost`` for loopback or any-address
    listeners (the agent connects locally either way), else the address."""
    ip = ip.strip().strip("[]")
    if ip in ("", "*", "localhost"):
        return "localhost"
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if addr.is_loopback or addr.is_unspecified:
        return "localhost"
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return host_for_address(str(addr.ipv4_mapped))
    return str(addr)


def pick_host(addresses: Iterable[str]) -> str:
    """One host for a port that may be bound on several addresses: local
    access wins, since that is how the agent will connect."""
    hosts = [host_for_address(a) for a in addresses]
    if not hosts or "localhost" in hosts:
        return "localhost"
    return hosts[0]


_VERSION_PATTERNS: Dict[str, Sequence[str]] = {
    POSTGRES: (
        r"\(PostgreSQL\)\s+(\d+(?:\.\d+)*(?:[a-z]+\d*)?)",
        r"^\s*(\d+(?:\.\d+)*(?:[a-z]+\d*)?)",
    ),
    MYSQL: (r"\bVer\s+(\d+\.\d+\.\d+)", r"^\s*(\d+\.\d+\.\d+)"),
    MARIADB: (r"\bVer\s+(\d+\.\d+\.\d+)", r"^\s*(\d+\.\d+\.\d+)"),
    MONGODB: (r"db version v(\d+\.\d+\.\d+)", r"^\s*v?(\d+\.\d+\.\d+)"),
    REDIS: (r"\bv=(\d+\.\d+\.\d+)", r"redis_version:(\d+\.\d+\.\d+)", r"^\s*(\d+\.\d+\.\d+)"),
}


def parse_version(kind: str, text: str) -> str:
    """The bare version number in a ``--version`` line or a server's own
    answer (``SHOW server_version``, ``SELECT VERSION()``); "" if none.

    Examples: ``postgres (PostgreSQL) 15.18 (Debian ...)`` -> ``15.18``;
    ``mariadbd  Ver 10.11.19-MariaDB-0+deb12u1 for ...`` -> ``10.11.19``;
    ``Redis server v=7.0.15 sha=...`` -> ``7.0.15``.
    """
    for pattern in _VERSION_PATTERNS.get(kind, ()):
        m = re.search(pattern, text or "", re.MULTILINE)
        if m:
            return m.group(1)
    return ""


def mysql_flavour(name: str, version_text: str) -> str:
    """``mariadb`` or ``mysql``: the version string decides, the binary name
    only when there is no version (Debian's ``mysqld`` is MariaDB)."""
    if "mariadb" in (version_text or "").lower():
        return MARIADB
    if version_text:
        return MYSQL
    return MARIADB if name == "mariadbd" else MYSQL


T = TypeVar("T")


def dedup(items: Iterable[T]) -> List[T]:
    """Order-preserving de-duplication (first occurrence wins)."""
    seen: set = set()
    out: List[T] = []
    for item in items:
        if item in seen:
            continue
        seen.add(item)
        out.append(item)
    return out
