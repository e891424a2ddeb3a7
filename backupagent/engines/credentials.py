"""Database logins from the host only: ``<config-dir>/credentials.yaml``.

The control plane never sends database passwords, so they live here (or in
the tools' own places: libpq's ``PGPASSWORD``/``~/.pgpass``, MySQL option
files such as ``~/.my.cnf``, which the native tools read by themselves when
this file has nothing for a database). The file holds passwords, so it is
refused unless only its owner can read it.

Format::

    databases:
      # by the control plane's database id (most specific) ...
      "3f2a9c1e-...":
        user: backup
        password: "s3cret"
      # ... or by dbType://host:port/name ...
      "postgresql://127.0.0.1:5432/app":
        user: backup
        passwordFile: /etc/backupagent/app.pass   # also 0600
      # ... or any database on that server ...
      "mysql://127.0.0.1:3306/*":
        user: backup
        password: "..."
        socket: /run/mysqld/mysqld.sock
        options: {ssl-ca: /etc/ssl/db-ca.pem}
      # ... or every server of a type on a port, or of a type at all
      "redis:6379": {password: "..."}
      "postgresql": {user: backup}
"""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import yaml

from backupagent.engines.base import DEFAULT_PORTS, ConnectionSpec, parse_database_url
from backupagent.errors import SettingsError

CREDENTIALS_FILENAME = "credentials.yaml"
_ENTRY_FIELDS = {"user", "password", "passwordFile", "socket", "options"}
_TYPE_ALIASES = {"postgres": "postgresql"}


class CredentialsError(SettingsError):
    """credentials.yaml (or a password file it names) is unsafe or malformed."""

    code = "CREDENTIALS_INVALID"


@dataclass(frozen=True)
class Credential:
    user: Optional[str] = None
    password: Optional[str] = field(default=None, repr=False)
    socket: Optional[str] = None
    options: Dict[str, str] = field(default_factory=dict)


def default_credentials_file() -> Path:
    config_dir = os.environ.get("BACKUPAGENT_CONFIG_DIR") or "/etc/backupagent"
    return Path(config_dir) / CREDENTIALS_FILENAME


def check_private(path: Path, what: str = "credentials file") -> None:
    """Refuse a secrets file others can read or write, or that another user owns."""
    st = os.stat(path)
    if st.st_mode & 0o077:
        raise CredentialsError(
            f"{what} {path} has mode {st.st_mode & 0o777:04o}, but it holds passwords and "
            f"must not be accessible to group or others; fix it with: chmod 600 {path}"
        )
    if st.st_uid not in (os.geteuid(), 0):
        raise CredentialsError(
            f"{what} {path} is owned by uid {st.st_uid}, not by the agent's user "
            f"(uid {os.geteuid()}) or root; fix it with: chown $(id -un) {path}"
        )


def normalize_key(key: str) -> str:
    """One spelling per target: lower-case type and host, default port filled in.

    ``postgres://H/db`` and ``postgresql://H:5432/db`` are the same key; a
    database id (no ``://``) is kept as it is.
    """
    key = key.strip()
    if "://" not in key:
        if ":" in key:
            db_type, _, port = key.partition(":")
            return f"{_TYPE_ALIASES.get(db_type.lower(), db_type.lower())}:{port}"
        lowered = key.lower()
        return _TYPE_ALIASES.get(lowered, lowered) if lowered in DEFAULT_PORTS or lowered in (
            "postgres", "sqlite"
        ) else key  # fmt: skip
    scheme, _, rest = key.partition("://")
    db_type = _TYPE_ALIASES.get(scheme.lower(), scheme.lower())
    if db_type == "sqlite":
        return "sqlite://" + "/" + rest.lstrip("/")
    netloc, _, name = rest.partition("/")
    if "@" in netloc:
        netloc = netloc.rsplit("@", 1)[1]
    if netloc.startswith("["):  # [v6]:port
        host, _, port = netloc[1:].partition("]")
        port = port.lstrip(":")
    elif netloc.count(":") == 1:
        host, _, port = netloc.partition(":")
    else:
        host, port = netloc, ""
    host = host.lower() or "localhost"
    port = port or DEFAULT_PORTS.get(db_type, "")
    return f"{db_type}://{host}:{port}/{urllib.parse.unquote(name)}"


def lookup_keys(spec: ConnectionSpec, database_id: Optional[str] = None) -> List[str]:
    """The keys tried for ``spec``, most specific first."""
    keys: List[str] = []
    if database_id:
        keys.append(database_id)
    if spec.db_type == "sqlite":
        keys.append(f"sqlite://{spec.database_name}")
    else:
        host = spec.host.lower() or "localhost"
        if ":" in host:
            host = f"[{host}]"
        keys.append(f"{spec.db_type}://{host}:{spec.port}/{spec.database_name}")
        keys.append(f"{spec.db_type}://{host}:{spec.port}/*")
        if spec.port:
            keys.append(f"{spec.db_type}:{spec.port}")
    keys.append(spec.db_type)
    return keys


def _parse_entry(path: Path, key: str, raw: Any, problems: List[str]) -> Optional[Credential]:
    where = f"databases[{key!r}]"
    if not isinstance(raw, Mapping):
        problems.append(f"{where}: must be a mapping with user/password/socket")
        return None
    unknown = sorted(set(raw) - _ENTRY_FIELDS)
    if unknown:
        problems.append(
            f"{where}: unknown field(s) {', '.join(unknown)}; allowed: "
            + ", ".join(sorted(_ENTRY_FIELDS))
        )
    values: Dict[str, Optional[str]] = {}
    for name in ("user", "password", "passwordFile", "socket"):
        value = raw.get(name)
        if value is not None and not isinstance(value, (str, int)):
            problems.append(f"{where}.{name}: must be a string")
            value = None
        values[name] = None if value is None else str(value)
    options = raw.get("options") or {}
    if not isinstance(options, Mapping):
        problems.append(f"{where}.options: must be a mapping of option to value")
        options = {}
    password = values["password"]
    if values["passwordFile"]:
        if password is not None:
            problems.append(f"{where}: give password or passwordFile, not both")
        pw_path = Path(values["passwordFile"])
        if not pw_path.is_absolute():
            pw_path = path.parent / pw_path
        try:
            check_private(pw_path, "password file")
            password = pw_path.read_text(encoding="utf-8").rstrip("\r\n")
        except FileNotFoundError:
            problems.append(f"{where}.passwordFile: {pw_path} does not exist")
        except CredentialsError as exc:
            problems.append(f"{where}.passwordFile: {exc}")
        except OSError as exc:
            problems.append(f"{where}.passwordFile: cannot read {pw_path}: {exc.strerror}")
    return Credential(
        user=values["user"] or None,
        password=password or None,
        socket=values["socket"] or None,
        options={str(k): str(v) for k, v in options.items()},
    )


def load_credentials(path: Union[str, os.PathLike, None] = None) -> Dict[str, Credential]:
    """Parse the credentials file into ``{normalized key: Credential}``.

    A missing file means "no stored credentials" (the tools' own sources still
    apply); a file with loose permissions or a bad entry is an error naming
    every problem, since silently skipping it would fail later, less clearly.
    """
    path = Path(path) if path is not None else default_credentials_file()
    try:
        check_private(path)
    except FileNotFoundError:
        return {}
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise CredentialsError(f"credentials file {path} is not valid YAML{at}") from None
    except PermissionError:
        raise CredentialsError(f"cannot read credentials file {path}: permission denied") from None
    if raw is None:
        return {}
    if not isinstance(raw, Mapping) or not isinstance(raw.get("databases", {}), Mapping):
        raise CredentialsError(
            f"credentials file {path}: expected a top-level 'databases:' mapping of "
            "database id or dbType://host:port/name to {user, password, socket}"
        )
    problems: List[str] = []
    result: Dict[str, Credential] = {}
    for key, entry in (raw.get("databases") or {}).items():
        cred = _parse_entry(path, str(key), entry, problems)
        if cred is not None:
            result[normalize_key(str(key))] = cred
    if problems:
        raise CredentialsError(f"credentials file {path} is invalid:\n  " + "\n  ".join(problems))
    return result


def _field(ref: Any, *names: str) -> Any:
    for name in names:
        if isinstance(ref, Mapping):
            if ref.get(name) is not None:
                return ref[name]
        elif getattr(ref, name, None) is not None:
            return getattr(ref, name)
    return None


def spec_from_ref(database_ref: Any) -> ConnectionSpec:
    """A spec from a URL, a spec, or a config ``database`` object/mapping."""
    if isinstance(database_ref, ConnectionSpec):
        return database_ref
    if isinstance(database_ref, str):
        return parse_database_url(database_ref)
    db_type = _field(database_ref, "dbType", "db_type")
    if not db_type:
        raise CredentialsError(f"database reference {database_ref!r} has no dbType")
    db_type = _TYPE_ALIASES.get(str(db_type).lower(), str(db_type).lower())
    name = str(_field(database_ref, "databaseName", "database_name") or "")
    if db_type == "sqlite":
        return ConnectionSpec(db_type="sqlite", database_name=name)
    port = _field(database_ref, "port")
    return ConnectionSpec(
        db_type=db_type,
        host=str(_field(database_ref, "host") or "localhost"),
        port=str(port) if port not in (None, "") else DEFAULT_PORTS.get(db_type, ""),
        database_name=name or ("0" if db_type == "redis" else ""),
    )


def resolve_connection(
    database_ref: Any,
    credentials_file: Union[str, os.PathLike, None] = None,
    *,
    database_id: Optional[str] = None,
) -> ConnectionSpec:
    """The full connection for a database: its location plus the host's login.

    What the reference itself carries (a URL's user or password) wins; the
    first matching credentials entry fills the rest. An entry naming a
    different user than the URL is not used for the password. Nothing found
    leaves the gaps to libpq/MySQL/Redis defaults on the host.
    """
    spec = spec_from_ref(database_ref)
    if database_id is None:
        ref_id = _field(database_ref, "id", "databaseId") if not isinstance(
            database_ref, (str, ConnectionSpec)
        ) else None  # fmt: skip
        database_id = str(ref_id) if ref_id else None
    creds = load_credentials(credentials_file)
    for key in lookup_keys(spec, database_id):
        cred = creds.get(key if key == database_id else normalize_key(key))
        if cred is None:
            continue
        if spec.user and cred.user and cred.user != spec.user:
            continue
        return spec.with_credentials(
            user=cred.user, password=cred.password, socket=cred.socket, options=cred.options
        )
    return spec
