"""Pydantic models of the Agent API bodies, with the reference's exact camelCase names.

Validation is strict on purpose: this server exists to tell an agent (ours or
anyone's) precisely where it deviates from the contract. So: no type coercion
(``"5"`` is not an integer, ``5`` is not a port string), no unknown fields, and
the value sets of protocol.md are closed. Every error names the field.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Dict, List, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# SQLite stores integers as signed 64-bit: larger values are a 400, not a 500.
MAX_INT64 = 2**63 - 1

# Go's GOOS/GOARCH names: the reference says `"os": "linux", "arch": "amd64"`,
# so `x86_64` or `Linux` (Python's platform names) are deviations to report.
GO_OS = [
    "aix",
    "android",
    "darwin",
    "dragonfly",
    "freebsd",
    "illumos",
    "ios",
    "js",
    "linux",
    "netbsd",
    "openbsd",
    "plan9",
    "solaris",
    "wasip1",
    "windows",
]
GO_ARCH = [
    "386",
    "amd64",
    "arm",
    "arm64",
    "loong64",
    "mips",
    "mips64",
    "mips64le",
    "mipsle",
    "ppc64",
    "ppc64le",
    "riscv64",
    "s390x",
    "wasm",
]
CONFIG_HASH_RE = re.compile(r"^(?:[0-9a-f]{64})?$")
ERROR_CODE_RE = r"^[A-Z][A-Z0-9_]*$"
URL_RE = r"^[a-z][a-z0-9+.-]*://\S+$"
# protocol.md: "timestamp is RFC 3339 UTC with milliseconds and Z".
TIMESTAMP_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
MAX_LOG_BATCH = 100

JobStatus = Literal["dumping", "compressing", "encrypting", "uploading", "completed", "failed"]
VerificationStatus = Literal["passed", "failed", "error"]
CheckType = Literal["row_count", "schema_match", "custom_query"]
CheckStatus = Literal["passed", "failed", "skipped"]
LogLevel = Literal["info", "warn", "error"]
AnomalyType = Literal["size_anomaly", "schema_drift", "restore_failure"]
Severity = Literal["info", "warning", "critical"]


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


# -- requests -----------------------------------------------------------------


class RegisterRequest(Strict):
    registrationToken: str = Field(min_length=1, max_length=512)
    hostname: str = Field(min_length=1, max_length=255)
    os: str
    arch: str
    agentVersion: str = Field(min_length=1, max_length=64)

    @field_validator("os")
    @classmethod
    def _go_os(cls, value: str) -> str:
        if value not in GO_OS:
            raise ValueError(f"{value!r} is not a Go-style OS name (e.g. linux, darwin)")
        return value

    @field_validator("arch")
    @classmethod
    def _go_arch(cls, value: str) -> str:
        if value not in GO_ARCH:
            raise ValueError(f"{value!r} is not a Go-style architecture (e.g. amd64, arm64)")
        return value


class DiscoveredDatabase(Strict):
    dbType: str = Field(min_length=1, max_length=64)
    dbVersion: str = Field(max_length=128)
    host: str = Field(min_length=1, max_length=255)
    port: str = Field(max_length=255, description='A string, as in the reference: `"5432"`.')
    databaseName: str = Field(max_length=255)


class HeartbeatRequest(Strict):
    status: str = Field(min_length=1, max_length=64)
    agentVersion: str = Field(min_length=1, max_length=64)
    configHash: Optional[str] = Field(
        default=None,
        description="Lowercase hex SHA-256 of the canonical JSON of the applied config;"
        " empty before any config was applied.",
    )
    discoveredDatabases: Optional[List[DiscoveredDatabase]] = None

    @field_validator("configHash")
    @classmethod
    def _hash_form(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not CONFIG_HASH_RE.match(value):
            raise ValueError("must be empty or 64 lowercase hex digits (SHA-256)")
        return value


class JobStartRequest(Strict):
    databaseId: str = Field(min_length=1, max_length=255)
    targetId: str = Field(min_length=1, max_length=255)
    scheduleId: Optional[str] = Field(default=None, min_length=1, max_length=255)


class JobStatusRequest(Strict):
    status: JobStatus
    dumpSize: Optional[int] = Field(default=None, ge=0, le=MAX_INT64)
    compressedSize: Optional[int] = Field(default=None, ge=0, le=MAX_INT64)
    uploadPath: Optional[str] = Field(default=None, pattern=URL_RE, max_length=4096)
    durationMs: Optional[int] = Field(default=None, ge=0, le=MAX_INT64)
    errorMessage: Optional[str] = Field(default=None, max_length=65536)
    errorCode: Optional[str] = Field(default=None, pattern=ERROR_CODE_RE, max_length=64)

    @model_validator(mode="after")
    def _terminal_fields(self) -> JobStatusRequest:
        # protocol.md, "Stage reporting": what each terminal status carries.
        required = {
            "completed": ("dumpSize", "compressedSize", "uploadPath", "durationMs"),
            "failed": ("errorCode", "errorMessage", "durationMs"),
        }.get(self.status, ())
        missing = [name for name in required if getattr(self, name) is None]
        if missing:
            raise ValueError(
                f"{', '.join(missing)}: required when status is {self.status!r}"
                f" (protocol.md: {self.status} carries {', '.join(required)})"
            )
        return self


class VerificationCheck(Strict):
    checkType: CheckType
    checkName: str = Field(min_length=1, max_length=1024)
    status: CheckStatus
    expectedValue: Optional[str] = Field(default=None, max_length=65536)
    actualValue: Optional[str] = Field(default=None, max_length=65536)
    deltaPct: Optional[float] = None


class VerificationRequest(Strict):
    status: VerificationStatus
    containerId: str = Field(max_length=255)
    restoreDurationMs: int = Field(ge=0, le=MAX_INT64)
    checks: List[VerificationCheck]


class LogEntry(Strict):
    level: LogLevel
    message: str = Field(max_length=65536)
    timestamp: str

    @field_validator("timestamp")
    @classmethod
    def _rfc3339(cls, value: str) -> str:
        if TIMESTAMP_RE.match(value):
            try:
                datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ")
                return value
            except ValueError:
                pass
        raise ValueError(
            f"{value!r} is not an RFC 3339 UTC timestamp with milliseconds and Z"
            " (e.g. 2026-04-09T02:00:01.000Z)"
        )


class LogsRequest(Strict):
    logs: List[LogEntry] = Field(min_length=1, max_length=MAX_LOG_BATCH)


class SchemaSnapshotRequest(Strict):
    databaseId: str = Field(min_length=1, max_length=255)
    snapshot: Dict[str, Any]
    tableCount: int = Field(ge=0, le=MAX_INT64)
    columnCount: int = Field(ge=0, le=MAX_INT64)

    @model_validator(mode="after")
    def _counts_match(self) -> SchemaSnapshotRequest:
        # protocol.md: snapshot is {"tables": [...]}, and the counts count what it holds.
        tables = self.snapshot.get("tables")
        if not isinstance(tables, list):
            raise ValueError("snapshot.tables: required list")
        columns = 0
        for i, table in enumerate(tables):
            if not isinstance(table, dict) or not isinstance(table.get("columns"), list):
                raise ValueError(f"snapshot.tables[{i}]: expected an object with a columns list")
            columns += len(table["columns"])
        if self.tableCount != len(tables):
            raise ValueError(
                f"tableCount: {self.tableCount} but snapshot.tables holds {len(tables)}"
            )
        if self.columnCount != columns:
            raise ValueError(f"columnCount: {self.columnCount} but the tables hold {columns}")
        return self


class AnomalyRequest(Strict):
    type: AnomalyType
    severity: Severity
    title: str = Field(min_length=1, max_length=1024)
    description: str = Field(max_length=65536)


# -- responses ----------------------------------------------------------------


class RegisterResponse(BaseModel):
    agentId: str
    apiKey: str


class HeartbeatResponse(BaseModel):
    configChanged: bool


class ConfigResponse(BaseModel):
    schedules: List[Any]
    targets: List[Any]
    alertChannels: List[Any]


class JobStartResponse(BaseModel):
    jobId: str


class SuccessResponse(BaseModel):
    success: bool


class VerificationResponse(BaseModel):
    verificationId: str


class LogsResponse(BaseModel):
    inserted: int


class SchemaSnapshotResponse(BaseModel):
    snapshotId: str


class AnomalyResponse(BaseModel):
    anomalyId: str


class ErrorResponse(BaseModel):
    error: str
    message: str


class HealthResponse(BaseModel):
    status: str
