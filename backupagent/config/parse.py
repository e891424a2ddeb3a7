"""Raw config document (JSON from ``GET /config`` or YAML) -> validated :class:`AgentConfig`.

A config is accepted whole or rejected whole: a half-applied config would back
up some databases with stale settings and hide the error. Rejection lists every
problem at once (:class:`~backupagent.errors.ConfigInvalid`), each naming the
field path, the bad value (never a secret) and what is expected. Unknown fields
are ignored so that a newer control plane can add fields without breaking
older agents. The rules are documented in ``docs/config.md``.

Values from config end up in file paths, object keys, argv lists and log
lines, so every string read here is checked for control characters, ``..``
path segments and length before anything else sees it.
"""

from __future__ import annotations

import ipaddress
import logging
import posixpath
import re
from dataclasses import replace
from typing import Any, Dict, List, Mapping, Optional, Tuple
from urllib.parse import urlsplit

from backupagent.config.cron import cron_problem, timezone_problem
from backupagent.config.fields import Fields, Problems, kind, show, string_problem
from backupagent.config.model import (
    ALERT_EVENTS,
    ALERT_TYPES,
    CHECK_TYPES,
    COMPRESSION_ALGORITHMS,
    DB_TYPES,
    DEFAULT_COMPRESSION_LEVEL,
    DEFAULT_PORTS,
    DEFAULT_TIMEZONE,
    TARGET_TYPES,
    AgentConfig,
    AlertChannel,
    Compression,
    DatabaseRef,
    Encryption,
    LocalSettings,
    Retention,
    S3Credentials,
    S3Settings,
    Schedule,
    SmtpSettings,
    Target,
    Verification,
    VerificationCheckSpec,
)
from backupagent.errors import ConfigInvalid

log = logging.getLogger(__name__)

SECTIONS = ("schedules", "targets", "alertChannels")
MAX_SECTION_ITEMS = 10000
MAX_RETENTION = 100000
MAX_CHECKS = 100
MAX_QUERY = 65536
MAX_URL = 2048
MAX_PREFIX = 512
S3_STORAGE_CLASSES = (
    "STANDARD",
    "REDUCED_REDUNDANCY",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER",
    "DEEP_ARCHIVE",
    "OUTPOSTS",
    "GLACIER_IR",
    "SNOW",
    "EXPRESS_ONEZONE",
)
S3_SSE = ("AES256", "aws:kms", "aws:kms:dsse")
UNSUPPORTED_DB = {
    "mongodb": "is not supported yet (MongoDB backups are planned); supported: "
    + ", ".join(DB_TYPES)
}

_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:@+-]{0,127}")
_HOST = re.compile(r"[A-Za-z0-9_.%:\[\]-]{1,253}")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_REGION = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}")
_EMAIL = re.compile(r"[^@\s]{1,64}@[A-Za-z0-9.-]{1,253}")
_AGE_PREFIX = "age1"


def parse_config(data: Any, source: str = "config") -> AgentConfig:
    """Validate a raw config document; raise ConfigInvalid listing every problem.

    ``source`` names where the document came from ("control plane",
    "/etc/backupagent/config.yaml") in the error's first line. A missing or
    ``null`` section reads as an empty list.
    """
    problems = Problems()
    config: Optional[AgentConfig] = None
    try:
        config = _parse_document(data, problems)
    except Exception as exc:  # defence in depth: a validator bug must not crash the daemon
        log.error("config validation failed unexpectedly (%s); rejecting it", type(exc).__name__)
        problems.add("document", f"could not be validated ({type(exc).__name__}); please report")
    if problems or config is None:
        ordered = sorted(problems.items, key=_document_order)
        raise ConfigInvalid(ordered or ["document: could not be validated"], source=source)
    _register_secrets(config)
    for warning in config.warnings:
        log.warning("%s: %s", source, warning)
    return config


_ENTRY = re.compile(r"(\w+)\[(\d+)\]")


def _document_order(problem: str) -> Tuple[int, int]:
    """Sort key putting problems in document order (sections, then entries); stable within."""
    match = _ENTRY.match(problem)
    if not match or match.group(1) not in SECTIONS:
        return (-1, 0)
    return (SECTIONS.index(match.group(1)), int(match.group(2)))


def _parse_document(data: Any, problems: Problems) -> Optional[AgentConfig]:
    if not isinstance(data, Mapping):
        problems.add(
            "document",
            f"expected a mapping with keys {', '.join(SECTIONS)}, got {kind(data)}",
        )
        return None
    doc = Fields(data, "", problems)
    warnings: List[str] = []

    raw_targets = _mappings(doc, "targets", problems)
    target_ids = _unique_ids(raw_targets, problems)
    targets = [_target(f, warnings) for f in raw_targets]

    raw_schedules = _mappings(doc, "schedules", problems)
    _unique_ids(raw_schedules, problems)
    schedules = [_schedule(f, target_ids) for f in raw_schedules]

    raw_channels = _mappings(doc, "alertChannels", problems)
    _unique_ids(raw_channels, problems)
    channels = [_alert_channel(f) for f in raw_channels]

    if problems:
        return None
    return AgentConfig(
        schedules=tuple(s for s in schedules if s is not None),
        targets=tuple(t for t in targets if t is not None),
        alert_channels=tuple(c for c in channels if c is not None),
        warnings=tuple(warnings),
    )


def _mappings(doc: Fields, key: str, problems: Problems) -> List[Fields]:
    out = []
    for path, item in doc.items(key, max_items=MAX_SECTION_ITEMS):
        if isinstance(item, Mapping):
            out.append(Fields(item, path, problems))
        else:
            problems.add(path, f"expected a mapping, got {kind(item)}")
    return out


def _id_problem(value: str) -> Optional[str]:
    if not _ID.fullmatch(value) or ".." in value:
        return (
            "is not a valid id; expected 1-128 letters, digits or _ . : @ + - "
            "(starting with a letter, digit or _, no '..')"
        )
    return None


def _unique_ids(items: List[Fields], problems: Problems) -> Dict[str, str]:
    """Check ``id`` of each entry; returns the valid ids with the path of their first use."""
    seen: Dict[str, str] = {}
    for f in items:
        ident = f.checked("id", _id_problem, required=True, expected="a non-empty id")
        if ident is None:
            continue
        if ident in seen:
            f.problem("id", f"{show(ident)} is already used by {seen[ident]}; ids must be unique")
        else:
            seen[ident] = f.path
    return seen


# ---------------------------------------------------------------- schedules


def _known_id(f: Fields) -> str:
    """The entry's id as given; ``_unique_ids`` has already reported a bad one."""
    value = f.raw("id")
    return value if isinstance(value, str) else ""


def _schedule(f: Fields, target_ids: Mapping[str, str]) -> Optional[Schedule]:
    database_id = f.checked("databaseId", _id_problem, expected="a database id")
    target_id = f.checked("targetId", _id_problem, required=True, expected="a target id")
    if target_id is not None and target_id not in target_ids:
        known = ", ".join(sorted(target_ids)[:10]) or "none defined"
        f.problem("targetId", f"{show(target_id)} does not match any target id (known: {known})")
    cron = f.string(
        "cron", required=True, max_len=256, expected='a cron expression "m h dom mon dow"'
    )
    if cron is not None:
        reason = cron_problem(cron)
        if reason:
            f.problem("cron", f"{show(cron)} is not a valid cron expression ({reason})")
    timezone = f.checked(
        "timezone", timezone_problem, default=DEFAULT_TIMEZONE, max_len=128, expected="a time zone"
    )
    enabled = f.boolean("enabled", True)
    name = f.string("name", max_len=256)
    database = _database(f)
    db_raw = f.raw("database")
    db_has_id = isinstance(db_raw, Mapping) and db_raw.get("id") not in (None, "")
    if not f.has("databaseId") and not db_has_id:
        f.problem("databaseId", "is required (or database.id); expected a database id")
    if database is not None and database_id is not None:
        if database.id and database.id != database_id:
            f.problems.add(
                f.at("database.id"),
                f"{show(database.id)} does not match databaseId {show(database_id)}",
            )
        database = replace(database, id=database_id)
    return Schedule(
        id=_known_id(f),
        database_id=database_id or (database.id if database else ""),
        target_id=target_id or "",
        cron=cron or "",
        timezone=timezone or DEFAULT_TIMEZONE,
        enabled=bool(enabled),
        database=database,  # type: ignore[arg-type]
        retention=_retention(f.mapping("retention")),
        compression=_compression(f.mapping("compression")),
        verification=_verification(f.mapping("verification")),
        name=name,
    )


def _database(parent: Fields) -> Optional[DatabaseRef]:
    f = parent.mapping("database", required=True)
    if f is None:
        return None
    ident = f.checked("id", _id_problem, expected="a database id") or ""
    db_type = f.choice("dbType", DB_TYPES, required=True, extra=UNSUPPORTED_DB)
    if db_type == "sqlite":
        path = f.checked(
            "databaseName", _abs_path_problem, required=True, expected="the database file's path"
        )
        return DatabaseRef(ident, db_type, "", "", path or "")
    host = f.checked("host", _host_problem, default="localhost", max_len=253, expected="a host")
    port = _port(f, "port", DEFAULT_PORTS.get(db_type or "", ""))
    if db_type == "redis":
        name = f.checked("databaseName", _redis_db_problem, default="0", expected="a number")
    else:
        name = f.string("databaseName", required=True, max_len=256, expected="a database name")
    return DatabaseRef(ident, db_type or "", host or "", port or "", name or "")


def _host_problem(value: str) -> Optional[str]:
    if value.startswith("/"):
        return _abs_path_problem(value)
    if not _HOST.fullmatch(value):
        return "is not a host name, IP address or absolute socket directory"
    return None


def _redis_db_problem(value: str) -> Optional[str]:
    if not (value.isascii() and value.isdigit() and len(value) <= 5):
        return 'is not a Redis database number; expected digits such as "0"'
    return None


def _port(f: Fields, key: str, default: str) -> Optional[str]:
    """A TCP port given as an integer or a numeric string; kept as a string (protocol.md)."""
    value = f.raw(key)
    if not f.has(key):
        return default
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 5:
        number: Any = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        f.problem(
            key, f"{show(value)} is not a port; expected an integer 1-65535 or a numeric string"
        )
        return None
    if not 1 <= number <= 65535:
        f.problem(key, f"{show(value)} is out of range; expected a port from 1 to 65535")
        return None
    return str(number)


def _retention(f: Optional[Fields]) -> Retention:
    if f is None:
        return Retention()
    keep = {
        attr: f.integer(key, lo=0, hi=MAX_RETENTION)
        for attr, key in (
            ("keep_last", "keepLast"),
            ("keep_daily", "keepDaily"),
            ("keep_weekly", "keepWeekly"),
            ("keep_monthly", "keepMonthly"),
        )
    }
    return Retention(**keep)


def _compression(f: Optional[Fields]) -> Compression:
    if f is None:
        return Compression()
    algorithm = f.choice("algorithm", COMPRESSION_ALGORITHMS, default="zstd")
    level = f.integer("level", lo=1, hi=22, default=DEFAULT_COMPRESSION_LEVEL)
    return Compression(algorithm or "zstd", level or DEFAULT_COMPRESSION_LEVEL)


def _verification(f: Optional[Fields]) -> Verification:
    if f is None:
        return Verification()
    enabled = f.boolean("enabled", False)
    image = f.checked("image", _image_problem, max_len=255, expected="a container image")
    checks = []
    for path, item in f.items("checks", max_items=MAX_CHECKS):
        if not isinstance(item, Mapping):
            f.problems.add(path, f"expected a mapping, got {kind(item)}")
            continue
        checks.append(_check(Fields(item, path, f.problems)))
    return Verification(bool(enabled), image, tuple(checks))


def _image_problem(value: str) -> Optional[str]:
    if not _IMAGE.fullmatch(value):
        return 'is not a container image reference; expected something like "postgres:16"'
    return None


def _check(f: Fields) -> VerificationCheckSpec:
    check_type = f.choice("checkType", CHECK_TYPES, required=True)
    name = f.string("checkName", max_len=256)
    query = f.string("query", max_len=MAX_QUERY, multiline=True, allow_dotdot=True)
    if check_type == "custom_query" and not f.has("query"):
        f.problem("query", "is required for a custom_query check; expected an SQL query")
    expected = f.raw("expectedValue")
    expected_value: Optional[str] = None
    if f.has("expectedValue"):
        if isinstance(expected, (int, float)) and not isinstance(expected, bool):
            expected_value = str(expected)
        else:
            expected_value = f.string("expectedValue", expected="a string or a number")
    tolerance = f.number("tolerancePct", lo=0, hi=100)
    return VerificationCheckSpec(check_type or "", name, query, expected_value, tolerance)


# ------------------------------------------------------------------ targets


def _target(f: Fields, warnings: List[str]) -> Optional[Target]:
    ident = _known_id(f)
    target_type = f.choice("type", TARGET_TYPES, required=True)
    encryption = _encryption(f.mapping("encryption"))
    if not encryption.recipients and target_type is not None:
        warnings.append(
            f"{f.path} ({ident}): no encryption recipients; "
            "backups to this target will be stored unencrypted"
        )
    s3 = _s3(f) if target_type == "s3" else None
    local = None
    if target_type == "local":
        path = f.checked("path", _abs_path_problem, required=True, expected="an absolute path")
        local = LocalSettings(path or "")
    return Target(ident, target_type or "", encryption, s3, local)


def _encryption(f: Optional[Fields]) -> Encryption:
    if f is None:
        return Encryption()
    recipients: List[str] = []
    for path, value in f.items("recipients"):
        problem = string_problem(value, max_len=256, expected="an age recipient (age1...)")
        if problem is None:
            reason = _recipient_problem(value)
            problem = f"{show(value)} {reason}" if reason else None
        if problem:
            f.problems.add(path, problem)
        elif value not in recipients:
            recipients.append(value)
    return Encryption(tuple(recipients))


def _recipient_problem(value: str) -> Optional[str]:
    """age X25519 recipients are Bech32 ``age1`` + 32 bytes, lowercase."""
    expected = "expected an age X25519 recipient (age1 + 58 characters, from age-keygen)"
    if not value.startswith(_AGE_PREFIX):
        return f"is not an age recipient; {expected}"
    try:
        from backupagent.crypto.bech32 import Bech32Error, decode
    except ImportError:  # pragma: no cover - bech32 ships with the package
        return None
    try:
        hrp, data = decode(value)
    except Bech32Error as exc:
        return f"is not a valid age recipient ({exc}); {expected}"
    if hrp != "age" or len(data) != 32:
        return f"is not an X25519 age recipient (wrong key type or length); {expected}"
    return None


def _s3(f: Fields) -> S3Settings:
    bucket = f.checked("bucket", _bucket_problem, required=True, max_len=63, expected="a bucket")
    prefix = f.checked(
        "prefix", _prefix_problem, default="", max_len=MAX_PREFIX, expected="a key prefix"
    )
    region = f.checked("region", _region_problem, max_len=64, expected="a region such as us-east-1")
    endpoint = _url(f, "endpointUrl", secret=False)
    storage_class = f.choice("storageClass", S3_STORAGE_CLASSES)
    sse = f.choice("serverSideEncryption", S3_SSE)
    path_style = f.boolean("forcePathStyle", endpoint is not None)
    credentials = None
    c = f.mapping("credentials")
    if c is not None:
        credentials = S3Credentials(
            access_key_id=c.string("accessKeyId", required=True, max_len=256) or "",
            secret_access_key=c.string("secretAccessKey", required=True, max_len=1024, secret=True)
            or "",
            session_token=c.string("sessionToken", max_len=8192, secret=True),
        )
    return S3Settings(
        bucket=bucket or "",
        prefix=(prefix or "").strip("/"),
        region=region,
        endpoint_url=endpoint,
        storage_class=storage_class,
        server_side_encryption=sse,
        force_path_style=bool(path_style),
        credentials=credentials,
    )


def _bucket_problem(value: str) -> Optional[str]:
    rule = (
        "expected 3-63 lowercase letters, digits, dots and hyphens, "
        "starting and ending with a letter or digit"
    )
    if not _BUCKET.fullmatch(value) or ".." in value or ".-" in value or "-." in value:
        return f"is not a valid S3 bucket name; {rule}"
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return None
    return "is not a valid S3 bucket name; it must not look like an IP address"


def _prefix_problem(value: str) -> Optional[str]:
    if value.startswith("/"):
        return "must be relative to the bucket; remove the leading '/'"
    segments = value.strip("/").split("/")
    if any(s in ("", ".", "..") for s in segments) and value.strip("/"):
        return "has an empty, '.' or '..' segment; expected segments like backups/prod"
    return None


def _region_problem(value: str) -> Optional[str]:
    if not _REGION.fullmatch(value):
        return "is not a region name; expected lowercase letters, digits and hyphens"
    return None


def _abs_path_problem(value: str) -> Optional[str]:
    if not value.startswith("/"):
        return "must be an absolute path (starting with '/')"
    if value.startswith("//") or posixpath.normpath(value) != value:
        return "must be a normalized path (no '.' or '..' segments, no '//', no trailing '/')"
    if value == "/":
        return "must not be the filesystem root"
    return None


# ----------------------------------------------------------- alert channels


def _alert_channel(f: Fields) -> Optional[AlertChannel]:
    ident = _known_id(f)
    channel_type = f.choice("type", ALERT_TYPES, required=True)
    events: Tuple[str, ...] = ALERT_EVENTS
    if f.has("events"):
        chosen: List[str] = []
        for path, value in f.items("events", max_items=len(ALERT_EVENTS) * 4):
            if value in ALERT_EVENTS:
                if value not in chosen:
                    chosen.append(value)
            else:
                expected = "one of: " + ", ".join(ALERT_EVENTS)
                problem = string_problem(value, expected=expected)
                f.problems.add(path, problem or f"{show(value)} is not {expected}")
        events = tuple(chosen)
    url = webhook_url = None
    to: Tuple[str, ...] = ()
    smtp = None
    if channel_type == "webhook":
        url = _url(f, "url", secret=True, required=not f.has("webhookUrl"))
        if url is None and f.has("webhookUrl"):
            url = _url(f, "webhookUrl", secret=True)
    elif channel_type == "slack":
        webhook_url = _url(f, "webhookUrl", secret=True, required=not f.has("url"))
        if webhook_url is None and f.has("url"):
            webhook_url = _url(f, "url", secret=True)
    elif channel_type == "email":
        to = _addresses(f)
        smtp = _smtp(f)
    return AlertChannel(ident, channel_type or "", events, url, webhook_url, to, smtp)


def _url(f: Fields, key: str, *, secret: bool, required: bool = False) -> Optional[str]:
    """An http(s) URL. Webhook URLs embed tokens, so only scheme and host are ever shown."""
    value = f.string(
        key,
        required=required,
        max_len=MAX_URL,
        secret=secret,
        allow_dotdot=True,
        expected="an http(s) URL",
    )
    if value is None:
        return None
    try:
        parts = urlsplit(value)
        scheme, host, _ = parts.scheme, parts.hostname, parts.port
        userinfo = parts.username is not None or parts.password is not None
    except ValueError:
        scheme, host, userinfo = "", None, False
    shown = f"the URL (scheme {show(scheme)}, host {show(host or '')})" if secret else show(value)
    if scheme not in ("http", "https") or not host:
        f.problem(key, f"{shown} is not an http(s) URL; expected https://host/path")
        return None
    if userinfo:
        f.problem(
            key, f"{shown} must not contain user:password; put credentials in their own fields"
        )
        return None
    return value


def _addresses(f: Fields) -> Tuple[str, ...]:
    out: List[str] = []
    entries = f.items("to", required=True, max_items=100)
    if f.has("to") and not entries and isinstance(f.raw("to"), list):
        f.problem("to", "is empty; expected at least one email address")
    for path, value in entries:
        problem = string_problem(value, max_len=254, expected="an email address")
        if problem is None and not _EMAIL.fullmatch(value):
            problem = f"{show(value)} is not an email address; expected name@example.com"
        if problem:
            f.problems.add(path, problem)
        elif value not in out:
            out.append(value)
    return tuple(out)


_FLAT_SMTP = {
    "host": "smtpHost",
    "port": "smtpPort",
    "username": "smtpUsername",
    "password": "smtpPassword",
    "starttls": "smtpStarttls",
    "from": "from",
}


def _smtp(parent: Fields) -> Optional[SmtpSettings]:
    """SMTP settings: an ``smtp`` mapping, or the flat ``smtpHost``... fields when it is absent."""
    f = parent.mapping("smtp")
    names = {k: k for k in _FLAT_SMTP}
    if f is None:
        if parent.has("smtp"):
            return None  # not a mapping: already reported
        if not parent.has("smtpHost"):
            parent.problem(
                "smtp",
                "is required for an email channel; expected a mapping with host "
                "(and optionally port, username, password, starttls, from)",
            )
            return None
        f, names = parent, _FLAT_SMTP
    host = f.checked(
        names["host"], _host_problem, required=True, max_len=253, expected="an SMTP host"
    )
    port = _port(f, names["port"], "587")
    username = f.string(names["username"], max_len=256)
    password = f.string(names["password"], max_len=1024, secret=True)
    starttls = f.boolean(names["starttls"], True)
    sender = f.string(names["from"], max_len=254, expected="an email address")
    if sender is not None and not _EMAIL.fullmatch(sender):
        f.problem(
            names["from"], f"{show(sender)} is not an email address; expected name@example.com"
        )
    return SmtpSettings(host or "", int(port or 587), username, password, bool(starttls), sender)


def _register_secrets(config: AgentConfig) -> None:
    """Teach the log redactor this config's secrets, so no log line can carry them."""
    from backupagent.logs import register_secret

    for target in config.targets:
        creds = target.s3.credentials if target.s3 else None
        if creds is not None:
            register_secret(creds.secret_access_key)
            register_secret(creds.session_token)
    for channel in config.alert_channels:
        register_secret(channel.url)
        register_secret(channel.webhook_url)
        if channel.smtp is not None:
            register_secret(channel.smtp.password)
