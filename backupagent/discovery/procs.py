"""Find database server processes and what they listen on, using psutil.

Unprivileged agents cannot see other users' sockets or executables, so every
fact has a fallback: listening sockets -> the system-wide socket table ->
command line and config file -> the kind's default port. Nothing here raises
for a vanished or forbidden process; it is simply less precise.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set, Tuple

import psutil

from backupagent.discovery import parse

log = logging.getLogger(__name__)

_EXPECTED = (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError)


@dataclass
class ServerProcess:
    """One running server (the parent process, not its workers)."""

    kind: str  # parse.POSTGRES / MYSQL / MONGODB / REDIS
    pid: int
    name: str
    exe: str  # best guess at the binary; "" when unknown
    cmdline: List[str]
    username: str
    listen: Dict[int, List[str]] = field(default_factory=dict)  # port -> addresses
    port_source: str = ""  # how the ports were found, for the debug log
    socket_dirs: List[str] = field(default_factory=list)  # PostgreSQL only
    mysql_socket: str = ""  # MySQL/MariaDB only


def _connections(proc: psutil.Process) -> list:
    # psutil >= 6 renamed connections() to net_connections(); support both.
    getter = getattr(proc, "net_connections", None) or proc.connections
    return getter(kind="inet")


def _listening(conns: list) -> Dict[int, List[str]]:
    out: Dict[int, List[str]] = {}
    for c in conns:
        if c.status != psutil.CONN_LISTEN or not c.laddr:
            continue
        out.setdefault(c.laddr.port, [])
        if c.laddr.ip not in out[c.laddr.port]:
            out[c.laddr.port].append(c.laddr.ip)
    return out


def system_listeners() -> Dict[int, List[Tuple[Optional[int], str]]]:
    """port -> [(pid or None, address)] from the system socket table.

    On Linux an unprivileged caller still sees every socket here, just without
    the owning pid for other users' processes; that is enough to confirm a
    port guessed from a command line and to learn its bind address.
    """
    out: Dict[int, List[Tuple[Optional[int], str]]] = {}
    try:
        conns = psutil.net_connections(kind="inet")
    except (psutil.AccessDenied, OSError) as exc:
        log.debug("system socket table unavailable: %s", exc)
        return out
    for c in conns:
        if c.status == psutil.CONN_LISTEN and c.laddr:
            out.setdefault(c.laddr.port, []).append((c.pid, c.laddr.ip))
    return out


def _exe(proc: psutil.Process, name: str, cmdline: List[str]) -> str:
    """The server binary: /proc/PID/exe, else an absolute argv[0], else PATH."""
    try:
        exe = proc.exe()
        if exe and os.path.exists(exe):
            # Debian's redis-server is a symlink to redis-check-rdb, which
            # picks its role from argv[0]: run the binary by the server's name.
            sibling = os.path.join(os.path.dirname(exe), name)
            if os.path.basename(exe) != name and name and os.path.exists(sibling):
                return sibling
            return exe
    except _EXPECTED:
        pass
    first = cmdline[0].split()[0] if cmdline and cmdline[0].strip() else ""
    if first.startswith("/") and os.path.exists(first):
        return first
    return shutil.which(name) or ""


def _read_text(path: str, limit: int = 1 << 20) -> Optional[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(limit)
    except OSError:
        return None


def _pg_config(server: ServerProcess) -> Dict[str, str]:
    """Effective-enough PostgreSQL settings: command line over config files."""
    cmd = parse.pg_settings_from_cmdline(server.cmdline)
    data_dir = cmd.get("data_directory", "")
    conf_paths = []
    if cmd.get("config_file"):
        conf_paths.append(cmd["config_file"])
    elif data_dir:
        conf_paths.append(os.path.join(data_dir, "postgresql.conf"))
    if data_dir:
        conf_paths.append(os.path.join(data_dir, "postgresql.auto.conf"))
    merged: Dict[str, str] = {}
    for path in conf_paths:
        text = _read_text(path)
        if text is not None:
            merged.update(parse.parse_pg_conf(text))
    merged.update(cmd)
    return merged


def _mongo_config_port(cmdline: List[str]) -> List[int]:
    paths = parse.option_values(cmdline, "f", ("config",))
    if not paths:
        return []
    text = _read_text(paths[-1])
    if not text:
        return []
    try:
        import yaml

        doc = yaml.safe_load(text)
        port = doc.get("net", {}).get("port") if isinstance(doc, dict) else None
    except Exception as exc:  # a malformed config only costs us the hint
        log.debug("cannot read mongod config %s: %s", paths[-1], exc)
        return []
    return [port] if isinstance(port, int) else []


def _socket_file_ports(dirs: List[str]) -> List[int]:
    ports: List[int] = []
    for d in dirs:
        try:
            names = os.listdir(d)
        except OSError:
            continue
        ports += [p for p in (parse.pg_port_from_socket_name(n) for n in names) if p]
    return parse.dedup(ports)


def _fill_listen(
    server: ServerProcess,
    proc: psutil.Process,
    table: Dict[int, List[Tuple[Optional[int], str]]],
) -> None:
    try:
        listen = _listening(_connections(proc))
        if listen:
            server.listen, server.port_source = listen, "process sockets"
            return
    except _EXPECTED as exc:
        log.debug("pid %d sockets not visible (%s); using fallbacks", server.pid, exc)
    owned = {
        port: [ip for pid, ip in entries if pid == server.pid]
        for port, entries in table.items()
        if any(pid == server.pid for pid, _ in entries)
    }
    if owned:
        server.listen, server.port_source = owned, "system socket table"
        return

    guessed = parse.ports_from_cmdline(server.kind, server.cmdline)
    source = "command line"
    if server.kind == parse.POSTGRES:
        conf = _pg_config(server)
        conf_port = parse.parse_port(conf.get("port", ""))
        if not guessed and conf_port:
            guessed, source = [conf_port], "config file"
        if not guessed:
            guessed, source = _socket_file_ports(server.socket_dirs), "socket file"
    if server.kind == parse.MONGODB and not guessed:
        guessed, source = _mongo_config_port(server.cmdline), "config file"
    if not guessed:
        guessed, source = [parse.DEFAULT_PORTS[server.kind]], "default port"
    for port in guessed:
        # Unattributed listeners (other users' sockets) still give the address.
        server.listen[port] = [ip for pid, ip in table.get(port, []) if pid is None] or [""]
    server.port_source = source


def _netns(pid: object) -> Optional[str]:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:  # not Linux, or another user's process while unprivileged
        return None


def in_our_network(pid: int, ours: Optional[str]) -> bool:
    """False for a server in another network namespace (a container, e.g.
    the agent's own restore-verification containers): its port is not
    reachable as localhost:port here. Unknown counts as ours."""
    theirs = _netns(pid)
    return ours is None or theirs is None or theirs == ours


def find_servers(limit: int = 32) -> List[ServerProcess]:
    """Running database servers, one per server (worker processes skipped)."""
    found: List[Tuple[psutil.Process, ServerProcess]] = []
    ppids: Dict[int, Optional[int]] = {}
    attrs = ["pid", "ppid", "name", "cmdline", "username"]
    for proc in psutil.process_iter(attrs):
        try:
            info = proc.info
            name = info.get("name") or ""
            cmdline = list(info.get("cmdline") or [])
            kind = parse.classify_process(name, cmdline)
            if kind is None:
                continue
            server = ServerProcess(
                kind=kind,
                pid=info["pid"],
                name=name,
                exe="",
                cmdline=cmdline,
                username=info.get("username") or "",
            )
        except _EXPECTED:
            continue
        found.append((proc, server))
        ppids[server.pid] = info.get("ppid")
    # PostgreSQL's workers share the postmaster's name: keep only the parent.
    kinds_by_pid = {s.pid: s.kind for _, s in found}
    parents = [(p, s) for p, s in found if kinds_by_pid.get(ppids.get(s.pid) or -1) != s.kind]
    ours = _netns("self")
    elsewhere = [s.pid for _, s in parents if not in_our_network(s.pid, ours)]
    if elsewhere:
        log.debug("skipping servers in other network namespaces: pids %s", elsewhere)
        parents = [(p, s) for p, s in parents if s.pid not in elsewhere]
    if len(parents) > limit:
        log.warning("found %d database servers; reporting the first %d", len(parents), limit)
        parents = parents[:limit]

    table: Dict[int, List[Tuple[Optional[int], str]]] = {}
    if parents:
        table = system_listeners()
    servers: List[ServerProcess] = []
    seen: Set[int] = set()
    for proc, server in parents:
        if server.pid in seen:
            continue
        seen.add(server.pid)
        server.exe = _exe(proc, server.name, server.cmdline)
        if server.kind == parse.POSTGRES:
            conf = _pg_config(server)
            dirs = parse.pg_socket_dirs(conf.get("unix_socket_directories", ""))
            server.socket_dirs = dirs or ["/var/run/postgresql", "/tmp"]  # noqa: S108 - libpq defaults
        elif server.kind == parse.MYSQL:
            sockets = parse.option_values(server.cmdline, "S", ("socket",))
            server.mysql_socket = sockets[-1] if sockets else ""
        _fill_listen(server, proc, table)
        log.debug(
            "found %s pid %d (%s) ports %s via %s",
            server.kind,
            server.pid,
            server.exe or server.name,
            sorted(server.listen),
            server.port_source,
        )
        servers.append(server)
    return servers
