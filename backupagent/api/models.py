"""Request and response bodies of the Agent API, field for field.

Attribute names are the reference's camelCase keys on purpose: the JSON keys
are the contract (``../shared/seeds/agent-api-reference.txt``), and spelling
them once, here, keeps a snake_case/camelCase mapping from ever drifting.
Optional fields left as ``None`` are omitted from the JSON body.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

JOB_STAGES = ("dumping", "compressing", "encrypting", "uploading")
JOB_TERMINAL = ("completed", "failed")
JOB_STATUSES = JOB_STAGES + JOB_TERMINAL
VERIFICATION_STATUSES = ("passed", "failed", "error")
CHECK_TYPES = ("row_count", "schema_match", "custom_query")
CHECK_STATUSES = ("passed", "failed", "skipped")
LOG_LEVELS = ("info", "warn", "error")
ANOMALY_TYPES = ("size_anomaly", "schema_drift", "restore_failure")
SEVERITIES = ("info", "warning", "critical")
MAX_LOG_BATCH = 100


def to_json(obj: Any) -> Any:
    """Turn a model (or nested models) into JSON-ready data, dropping ``None``s."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {
            f.name: to_json(getattr(obj, f.name))
            for f in dataclasses.fields(obj)
            if getattr(obj, f.name) is not None
        }
    if isinstance(obj, (list, tuple)):
        return [to_json(x) for x in obj]
    if isinstance(obj, dict):
        return {k: to_json(v) for k, v in obj.items()}
    return obj


@dataclass(frozen=True)
class RegisterRequest:
    registrationToken: str
    hostname: str
    os: str
    arch: str
    agentVersion: str

    def __repr__(self) -> str:  # the token is a secret: never let it reach a log
        return f"RegisterRequest(hostname={self.hostname!r}, os={self.os!r}, arch={self.arch!r})"


@dataclass(frozen=True)
class RegisterResponse:
    agentId: str
    apiKey: str

    def __repr__(self) -> str:
        return f"RegisterResponse(agentId={self.agentId!r})"


@dataclass(frozen=True)
class DiscoveredDatabase:
    dbType: str  # postgresql, mysql, mariadb, mongodb, redis, sqlite
    dbVersion: str
    host: str
    port: str  # a string, as in the reference
    databaseName: str


@dataclass(frozen=True)
class HeartbeatRequest:
    status: str
    agentVersion: str
    configHash: str
    discoveredDatabases: List[DiscoveredDatabase] = field(default_factory=list)


@dataclass(frozen=True)
class HeartbeatResponse:
    configChanged: bool


@dataclass(frozen=True)
class JobStartRequest:
    databaseId: str
    targetId: str
    scheduleId: Optional[str] = None


@dataclass(frozen=True)
class JobStatusUpdate:
    status: str
    dumpSize: Optional[int] = None
    compressedSize: Optional[int] = None
    uploadPath: Optional[str] = None
    durationMs: Optional[int] = None
    errorMessage: Optional[str] = None
    errorCode: Optional[str] = None


@dataclass(frozen=True)
class VerificationCheck:
    checkType: str
    checkName: str
    status: str
    expectedValue: Optional[str] = None
    actualValue: Optional[str] = None
    deltaPct: Optional[float] = None


@dataclass(frozen=True)
class VerificationReport:
    status: str
    containerId: str
    restoreDurationMs: int
    checks: List[VerificationCheck] = field(default_factory=list)


@dataclass(frozen=True)
class LogEntry:
    level: str
    message: str
    timestamp: str  # RFC 3339 UTC with milliseconds and Z


@dataclass(frozen=True)
class SchemaSnapshotRequest:
    databaseId: str
    snapshot: Dict[str, Any]
    tableCount: int
    columnCount: int


@dataclass(frozen=True)
class AnomalyReport:
    type: str
    severity: str
    title: str
    description: str
