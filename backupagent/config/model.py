"""The typed, validated, immutable config: what to back up, where, and whom to tell.

Everything here is produced by :func:`backupagent.config.parse.parse_config`
and nothing else: once an object exists its values have passed validation, so
later layers (jobs, targets, alerts) can use them without re-checking. The
objects are frozen because one config is shared by concurrent jobs and a config
change replaces it whole, never edits it in place.

Targets carry their type-specific settings in one optional attribute per type
(``target.s3`` or ``target.local``, exactly one set, the one named by
``target.type``) rather than in subclasses: a caller dispatches on ``type`` and
reads one attribute, and adding a type adds one attribute.

Secrets (S3 secret key and session token, SMTP password, webhook URLs, which
embed tokens) are excluded from ``repr()`` so that logging a config object, or
an exception that carries one, never leaks them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Optional, Tuple

DB_TYPES: Tuple[str, ...] = ("postgresql", "mysql", "mariadb", "redis", "sqlite")
# Known to the control plane (discovery reports them) but not backed up yet.
UNSUPPORTED_DB_TYPES: Tuple[str, ...] = ("mongodb",)
DEFAULT_PORTS = {"postgresql": "5432", "mysql": "3306", "mariadb": "3306", "redis": "6379"}
TARGET_TYPES: Tuple[str, ...] = ("local", "s3")
ALERT_TYPES: Tuple[str, ...] = ("webhook", "slack", "email")
ALERT_EVENTS: Tuple[str, ...] = ("job_failed", "verification_failed", "anomaly")
CHECK_TYPES: Tuple[str, ...] = ("row_count", "schema_match", "custom_query")
COMPRESSION_ALGORITHMS: Tuple[str, ...] = ("zstd",)
DEFAULT_COMPRESSION_LEVEL = 3
DEFAULT_TIMEZONE = "UTC"


@dataclass(frozen=True)
class DatabaseRef:
    """The database a schedule backs up. Credentials never come from config.

    ``host`` and ``port`` are empty strings for ``sqlite``, whose
    ``database_name`` is the absolute path of the database file. ``host`` may
    be an absolute socket directory for PostgreSQL (libpq's convention).
    """

    id: str
    db_type: str
    host: str
    port: str
    database_name: str


@dataclass(frozen=True)
class Retention:
    """restic-style keep rules; ``None`` means the rule is not used.

    All four ``None`` means keep everything (no pruning at all).
    """

    keep_last: Optional[int] = None
    keep_daily: Optional[int] = None
    keep_weekly: Optional[int] = None
    keep_monthly: Optional[int] = None

    @property
    def keeps_everything(self) -> bool:
        return all(
            v is None
            for v in (self.keep_last, self.keep_daily, self.keep_weekly, self.keep_monthly)
        )


@dataclass(frozen=True)
class Compression:
    algorithm: str = "zstd"
    level: int = DEFAULT_COMPRESSION_LEVEL


@dataclass(frozen=True)
class VerificationCheckSpec:
    """One check to run after a test restore (protocol.md "Verification checks")."""

    check_type: str
    check_name: Optional[str] = None
    query: Optional[str] = None
    expected_value: Optional[str] = None
    tolerance_pct: Optional[float] = None


@dataclass(frozen=True)
class Verification:
    enabled: bool = False
    image: Optional[str] = None
    checks: Tuple[VerificationCheckSpec, ...] = ()


@dataclass(frozen=True)
class Schedule:
    id: str
    database_id: str
    target_id: str
    cron: str
    timezone: str
    enabled: bool
    database: DatabaseRef
    retention: Retention = field(default_factory=Retention)
    compression: Compression = field(default_factory=Compression)
    verification: Verification = field(default_factory=Verification)
    name: Optional[str] = None


@dataclass(frozen=True)
class S3Credentials:
    """Static keys for one target; absent means the standard AWS credential chain."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: Optional[str] = field(default=None, repr=False)


@dataclass(frozen=True)
class S3Settings:
    """``prefix`` has no leading or trailing ``/`` and no ``.``/``..`` segments ("" = bucket root).

    ``force_path_style`` defaults to true when ``endpoint_url`` is set, since
    S3-compatible stores (SeaweedFS, MinIO, ...) rarely serve virtual-host style.
    """

    bucket: str
    prefix: str = ""
    region: Optional[str] = None
    endpoint_url: Optional[str] = None
    storage_class: Optional[str] = None
    server_side_encryption: Optional[str] = None
    force_path_style: bool = False
    credentials: Optional[S3Credentials] = None


@dataclass(frozen=True)
class LocalSettings:
    """``path`` is absolute and normalized (no ``..``, no trailing ``/``)."""

    path: str


@dataclass(frozen=True)
class Encryption:
    """age X25519 recipients (``age1...``); empty means unencrypted (allowed, warned)."""

    recipients: Tuple[str, ...] = ()


@dataclass(frozen=True)
class Target:
    """Where backups go. Exactly one of ``s3`` / ``local`` is set, matching ``type``."""

    id: str
    type: str
    encryption: Encryption = field(default_factory=Encryption)
    s3: Optional[S3Settings] = None
    local: Optional[LocalSettings] = None

    @property
    def encrypted(self) -> bool:
        return bool(self.encryption.recipients)

    @property
    def url(self) -> str:
        """``s3://bucket/prefix`` or ``file:///path``: the form the targets registry takes."""
        if self.s3 is not None:
            return f"s3://{self.s3.bucket}/{self.s3.prefix}".rstrip("/")
        if self.local is not None:
            return f"file://{self.local.path}"
        raise ValueError(f"target {self.id!r} has no settings for type {self.type!r}")


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int = 587
    username: Optional[str] = None
    password: Optional[str] = field(default=None, repr=False)
    starttls: bool = True
    from_addr: Optional[str] = None


@dataclass(frozen=True)
class AlertChannel:
    """``url`` for webhook, ``webhook_url`` for slack, ``to`` + ``smtp`` for email."""

    id: str
    type: str
    events: Tuple[str, ...] = ALERT_EVENTS
    url: Optional[str] = field(default=None, repr=False)
    webhook_url: Optional[str] = field(default=None, repr=False)
    to: Tuple[str, ...] = ()
    smtp: Optional[SmtpSettings] = None

    def wants(self, event: str) -> bool:
        return event in self.events


@dataclass(frozen=True)
class AgentConfig:
    """One whole, valid config. ``warnings`` are accepted-but-risky choices, for the log."""

    schedules: Tuple[Schedule, ...] = ()
    targets: Tuple[Target, ...] = ()
    alert_channels: Tuple[AlertChannel, ...] = ()
    warnings: Tuple[str, ...] = field(default=(), compare=False)

    def target(self, target_id: str) -> Target:
        """The target with this id; KeyError names the id when there is none."""
        for t in self.targets:
            if t.id == target_id:
                return t
        raise KeyError(f"no target with id {target_id!r}")

    def schedule(self, schedule_id: str) -> Schedule:
        for s in self.schedules:
            if s.id == schedule_id:
                return s
        raise KeyError(f"no schedule with id {schedule_id!r}")

    def enabled_schedules(self) -> Iterator[Schedule]:
        return (s for s in self.schedules if s.enabled)

    def channels_for(self, event: str) -> Tuple[AlertChannel, ...]:
        return tuple(c for c in self.alert_channels if c.wants(event))


EMPTY_CONFIG = AgentConfig()
