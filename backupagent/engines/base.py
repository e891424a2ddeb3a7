"""The one small interface every database engine implements.

The job and pipeline layers only ever talk to :class:`Engine`, so adding an
engine means adding one module and one registry line. Engines never run a
shell and never put a secret into argv: a password travels in the child's
environment or in a 0600 file that the plan deletes when it is closed.
"""

from __future__ import annotations

import contextlib
import os
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Protocol, Tuple, runtime_checkable

from backupagent.errors import AgentError

# Error codes an engine raises. They are the protocol's ``errorCode`` words, so
# the job layer reports them as they are.
DUMP_FAIL = "DUMP_FAIL"
RESTORE_FAIL = "RESTORE_FAIL"
DB_UNREACHABLE = "DB_UNREACHABLE"
AUTH_FAIL = "AUTH_FAIL"
DB_NOT_FOUND = "DB_NOT_FOUND"
PERMISSION_DENIED = "PERMISSION_DENIED"
TOOL_MISSING = "TOOL_MISSING"
UNSUPPORTED = "UNSUPPORTED"
URL_INVALID = "CONFIG_INVALID"

_STDERR_TAIL = 2000


class EngineError(AgentError):
    """A dump, restore or query against a database failed.

    ``code`` says why (see the constants above); the message names what was
    tried and against which database, never a password.
    """

    code = DUMP_FAIL


def mask_url(url: str) -> str:
    """``scheme://user:***@host`` for any URL-ish string, even an unparseable one.

    The password ends at the *last* ``@``: a password may itself hold ``@``,
    ``/`` or ``?`` (unencoded, the URL is ambiguous), and masking too much is
    harmless where masking too little leaks.
    """
    start = url.find("://")
    start = start + 3 if start >= 0 else 0
    at = url.rfind("@")
    if at < start:
        return url
    user, sep, _ = url[start:at].partition(":")
    if not sep:
        return url
    return url[:start] + user + ":***" + url[at:]


def _password_pieces(url: str) -> List[str]:
    """The URL's password and the pieces a parser may echo (split at URL delimiters)."""
    start = url.find("://")
    start = start + 3 if start >= 0 else 0
    at = url.rfind("@")
    if at < start:
        return []
    _, sep, password = url[start:at].partition(":")
    if not sep or not password:
        return []
    pieces = {password, urllib.parse.unquote(password)}
    pieces.update(re.split(r"[/?#@\[\]:]", password))
    return sorted((p for p in pieces if len(p) >= 4), key=len, reverse=True)


def redact(text: str, *secrets: Optional[str]) -> str:
    """Replace every occurrence of each non-empty secret (raw and URL-quoted)."""
    for secret in secrets:
        if not secret:
            continue
        for form in {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote(secret)}:
            text = text.replace(form, "***")
    return text


def stderr_tail(data: Any, *secrets: Optional[str]) -> str:
    """The end of a tool's stderr, decoded, trimmed and with secrets removed.

    The tail is what names the cause (the first lines are often warnings).
    """
    if isinstance(data, bytes):
        data = data.decode("utf-8", errors="replace")
    text = redact((data or "").strip(), *secrets)
    if len(text) > _STDERR_TAIL:
        text = "..." + text[-_STDERR_TAIL:]
    return text


@dataclass(frozen=True)
class ConnectionSpec:
    """Where a database is and how to log in; never printed with its password.

    ``port`` is a string as in the protocol. ``database_name`` is the database
    (PostgreSQL/MySQL), the logical db number (Redis) or the file path (SQLite).
    ``socket`` is a unix socket path (MySQL) or socket directory (PostgreSQL).
    ``options`` carries engine connection options (``sslmode``, ...).
    """

    db_type: str
    host: str = ""
    port: str = ""
    database_name: str = ""
    user: Optional[str] = None
    password: Optional[str] = field(default=None, repr=False)
    socket: Optional[str] = None
    options: Dict[str, str] = field(default_factory=dict)

    def redacted_url(self) -> str:
        """A URL for logs and messages: the password, if any, shows as ``***``."""
        if self.db_type == "sqlite":
            return f"sqlite://{self.database_name}"
        auth = ""
        if self.user:
            auth = urllib.parse.quote(self.user, safe="")
        if self.password:
            auth += ":***"
        if auth:
            auth += "@"
        host = self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        netloc = auth + host + (f":{self.port}" if self.port else "")
        url = f"{self.db_type}://{netloc}/{urllib.parse.quote(self.database_name, safe='')}"
        query = dict(self.options)
        if self.socket:
            query["socket"] = self.socket
        if query:
            url += "?" + urllib.parse.urlencode(sorted(query.items()))
        return url

    def with_credentials(
        self,
        user: Optional[str] = None,
        password: Optional[str] = None,
        socket: Optional[str] = None,
        options: Optional[Dict[str, str]] = None,
    ) -> ConnectionSpec:
        """A copy with the gaps filled; what the spec already has wins."""
        merged = dict(options or {})
        merged.update(self.options)
        return ConnectionSpec(
            db_type=self.db_type,
            host=self.host,
            port=self.port,
            database_name=self.database_name,
            user=self.user if self.user else user,
            password=self.password if self.password else password,
            socket=self.socket if self.socket else socket,
            options=merged,
        )


DEFAULT_PORTS = {"postgresql": "5432", "mysql": "3306", "mariadb": "3306", "redis": "6379"}
_SCHEMES = {
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "mysql": "mysql",
    "mariadb": "mariadb",
    "redis": "redis",
    "sqlite": "sqlite",
}


def _url_error(url: str, problem: str, fix: str) -> EngineError:
    text = redact(f"database URL {mask_url(url)!r}: {problem}; {fix}", *_password_pieces(url))
    return EngineError(text, code=URL_INVALID)


def parse_database_url(url: str) -> ConnectionSpec:
    """Parse the engines' usual URIs into a :class:`ConnectionSpec`.

    Accepted: ``postgresql://`` (``postgres://``), ``mysql://``, ``mariadb://``,
    ``redis://[:pass@]host:port/N``, ``sqlite:///abs/path.db``. User, password
    and database are percent-decoded. Query parameters become ``options``,
    except ``host=/dir`` or ``socket=/path``, which name a unix socket.
    """
    if not isinstance(url, str) or "://" not in url:
        raise _url_error(
            str(url),
            "not a URL",
            "write it as postgresql://user@host:5432/dbname (or mysql://, "
            "mariadb://, redis://, sqlite:///abs/path.db)",
        )
    try:
        parts = urllib.parse.urlsplit(url)
        port_value = parts.port
    except ValueError as exc:
        # urllib's own text quotes pieces of the netloc, which may be the password's
        reason = "the port is not a number from 1 to 65535" if "Port" in str(exc) else "bad host"
        raise _url_error(url, f"cannot be parsed ({reason})", "check the host and port") from None
    scheme = parts.scheme.lower()
    db_type = _SCHEMES.get(scheme)
    if db_type is None:
        raise _url_error(
            url,
            f"unsupported scheme {scheme!r}",
            "use one of " + ", ".join(sorted(_SCHEMES)),
        )
    if parts.fragment:
        raise _url_error(url, "has a #fragment", "remove it (percent-encode '#' as %23)")

    if db_type == "sqlite":
        if parts.netloc:
            raise _url_error(
                url, "SQLite URLs carry no host", "write sqlite:///absolute/path/to/file.db"
            )
        path = urllib.parse.unquote(parts.path)
        if not path.startswith("/"):
            raise _url_error(url, "the path is not absolute", "write sqlite:///abs/path.db")
        path = "/" + path.lstrip("/")
        if path == "/" or path.endswith("/"):
            raise _url_error(url, "names a directory, not a file", "end it with the file name")
        return ConnectionSpec(db_type="sqlite", database_name=path)

    query = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    user = urllib.parse.unquote(parts.username) if parts.username else None
    password = urllib.parse.unquote(parts.password) if parts.password is not None else None
    host = urllib.parse.unquote(parts.hostname or "")
    socket: Optional[str] = None
    if host.startswith("/"):
        socket, host = host, ""
    for key in ("socket", "host", "unix_socket"):
        value = query.get(key, "")
        if value.startswith("/"):
            socket = query.pop(key)
    port = str(port_value) if port_value is not None else ""
    if port == "0":
        raise _url_error(url, "port 0 is not a valid port", "use the server's port (1-65535)")
    if not port and not socket:
        port = DEFAULT_PORTS[db_type]
    if not host and not socket:
        host = "localhost"
    name = urllib.parse.unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)

    if db_type == "redis":
        name = name or "0"
        if not name.isdigit():
            raise _url_error(
                url, f"Redis database {name!r} is not a number", "write redis://host:6379/0"
            )
        if user is None and password is None and parts.username == "":
            user = None
    elif not name:
        raise _url_error(
            url, "names no database", f"append the database name: {db_type}://user@host:port/NAME"
        )
    elif "/" in name:
        raise _url_error(url, f"database name {name!r} contains '/'", "percent-encode it as %2F")
    if user == "":
        user = None
    return ConnectionSpec(
        db_type=db_type,
        host=host,
        port=port,
        database_name=name,
        user=user,
        password=password or None,
        socket=socket,
        options=query,
    )


class DumpPlan:
    """Everything the pipeline needs to produce one dump, and what to undo after.

    Either ``argv`` (a process whose stdout is the dump) or ``source_file`` (a
    finished file to stream) is set. ``env`` is the complete environment for
    the process (the agent's own plus the engine's variables). Closing the plan
    ends snapshot transactions and deletes temp files; it is idempotent and
    also runs when the ``with`` block raises.
    """

    def __init__(
        self,
        *,
        argv: Optional[List[str]] = None,
        env: Optional[Dict[str, str]] = None,
        source_file: Optional[Path] = None,
        row_counts: Optional[Dict[str, int]] = None,
        row_counts_exact: bool = False,
        extra: Optional[Dict[str, Any]] = None,
        cleanups: Optional[List[Callable[[], None]]] = None,
    ) -> None:
        self.argv: List[str] = list(argv or [])
        self.env: Dict[str, str] = dict(env if env is not None else os.environ)
        self.source_file = source_file
        self._row_counts: Dict[str, int] = dict(row_counts or {})
        self._pending_counts: Optional[Callable[[], Dict[str, int]]] = None
        self.row_counts_exact = row_counts_exact
        self.extra: Dict[str, Any] = dict(extra or {})
        self._cleanups: List[Callable[[], None]] = list(cleanups or [])
        self._pending_snapshot: Optional[Callable[[], Optional[Dict[str, Any]]]] = None
        # Set by an engine that learnt them while preparing (PostgreSQL asks
        # its snapshot session), so the job need not ask the server again.
        self.server_version: Optional[str] = None
        self.tool_version: Optional[str] = None
        self.closed = False

    @property
    def row_counts(self) -> Dict[str, int]:
        """Per-table row counts; waits for counts still being taken (see
        ``defer_row_counts``) and raises their error if counting failed."""
        if self._pending_counts is not None:
            resolve, self._pending_counts = self._pending_counts, None
            self._row_counts = dict(resolve())
        return self._row_counts

    @row_counts.setter
    def row_counts(self, value: Dict[str, int]) -> None:
        self._row_counts = dict(value)
        self._pending_counts = None

    def defer_row_counts(self, resolve: Callable[[], Dict[str, int]]) -> None:
        """Counts taken concurrently with the dump: ``resolve`` blocks until
        they are ready. Lets an engine count while the dump already streams."""
        self._pending_counts = resolve

    def defer_schema_snapshot(self, resolve: Callable[[], Optional[Dict[str, Any]]]) -> None:
        """The schema taken beside the dump, in its snapshot (PostgreSQL).

        ``resolve`` blocks until it is ready. Without one, the job asks
        ``engine.schema_snapshot`` itself before the dump starts.
        """
        self._pending_snapshot = resolve

    @property
    def has_schema_snapshot(self) -> bool:
        return self._pending_snapshot is not None

    def schema_snapshot(self) -> Optional[Dict[str, Any]]:
        """Wait for the deferred schema snapshot; raises its error."""
        if self._pending_snapshot is None:
            return None
        return self._pending_snapshot()

    def add_cleanup(self, func: Callable[[], None]) -> None:
        self._cleanups.append(func)

    def close(self) -> None:
        """Run the cleanups, last registered first; every one runs even if one fails."""
        if self.closed:
            return
        self.closed = True
        first: Optional[BaseException] = None
        while self._cleanups:
            func = self._cleanups.pop()
            try:
                func()
            except BaseException as exc:  # keep cleaning; re-raise the first afterwards
                first = first or exc
        if first is not None:
            raise first

    def __enter__(self) -> DumpPlan:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"DumpPlan(argv={self.argv!r}, source_file={self.source_file!r}, "
            f"row_counts_exact={self.row_counts_exact}, tables={len(self._row_counts)})"
        )


# A restore plan has the same shape: argv fed on stdin, env, cleanups.
RestorePlan = DumpPlan


@runtime_checkable
class Engine(Protocol):
    """What the job and pipeline layers may ask of a database engine."""

    db_type: str
    dump_format: str
    file_extension: str

    def server_version(self, conn: ConnectionSpec) -> str: ...

    def tool_version(self) -> str: ...

    def prepare_dump(self, conn: ConnectionSpec, workdir: Path, cancel: Any = None) -> DumpPlan:
        """Open the snapshot and return the plan. ``cancel`` (a CancelToken):
        PostgreSQL kills its session when it is set mid-preparation (a hung
        connection); the other engines' preparation is short, except SQLite's
        online copy, which runs at disk speed and is not interrupted."""
        ...

    def restore_argv(self, conn: ConnectionSpec) -> Tuple[List[str], Dict[str, str]]: ...

    def prepare_restore(self, conn: ConnectionSpec, workdir: Path) -> DumpPlan: ...

    def list_tables_with_counts(self, conn: ConnectionSpec) -> Dict[str, int]: ...

    def schema_snapshot(self, conn: ConnectionSpec) -> Dict[str, Any]: ...

    def is_empty(self, conn: ConnectionSpec) -> bool: ...

    def classify_failure(
        self, conn: ConnectionSpec, returncode: int, stderr: Any, *, action: str = "dump"
    ) -> EngineError: ...


def write_secret_file(workdir: Path, prefix: str, content: str) -> Path:
    """Create a new 0600 file in ``workdir`` (never following a planted name)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    for attempt in range(100):
        path = workdir / f"{prefix}{os.getpid()}-{os.urandom(6).hex()}"
        try:
            fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            if attempt == 99:
                raise
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(content)
        return path
    raise AssertionError("unreachable")


def remove_file(path: Path) -> Callable[[], None]:
    def _remove() -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(str(path))

    return _remove


def sort_snapshot(tables: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Put a schema snapshot in its one canonical order.

    Tables by (schema, name), indexes by name; columns keep their ordinal order
    (it is part of the schema) and index/key columns keep key order.
    """
    for table in tables:
        table["indexes"] = sorted(table.get("indexes", []), key=lambda i: i["name"])
    return {"tables": sorted(tables, key=lambda t: (t["schema"], t["name"]))}
