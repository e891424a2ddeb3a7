"""Prometheus metrics as a node_exporter textfile: backups, verification, heartbeats.

The agent serves no HTTP port of its own (one less listener on a database
host, one less thing to firewall); instead it rewrites one ``.prom`` file that
node_exporter's textfile collector already exposes, usually
``/var/lib/node_exporter/textfile_collector/backupagent.prom``, set by
``metricsFile`` in agent.yaml. Without that setting nothing is written.

The file is replaced atomically (same-directory temp file, then rename) so a
scrape never sees half of it, and it is 0644 because node_exporter runs as
another user. The values behind it live in a small JSON file in the state dir,
so a restarted agent still exports when each database last backed up, and the
failure counters keep counting instead of resetting.

Recording must never break a backup or a heartbeat: every public method logs
and carries on instead of raising.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from backupagent import __version__
from backupagent.fsutil import atomic_write

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
STATE_FILE = "metrics-state.json"
STATE_VERSION = 1
SETTING = "metricsFile"
DEFAULT_TEXTFILE = "/var/lib/node_exporter/textfile_collector/backupagent.prom"

# (name, type, help, state field). Order is the order in the file.
_BACKUP_METRICS: Tuple[Tuple[str, str, str, str], ...] = (
    (
        "backupagent_backup_last_success_timestamp_seconds",
        "gauge",
        "Unix time the last successful backup of this database finished.",
        "lastSuccess",
    ),
    (
        "backupagent_backup_last_run_timestamp_seconds",
        "gauge",
        "Unix time the last backup run of this database finished, successful or not.",
        "lastRun",
    ),
    (
        "backupagent_backup_last_status",
        "gauge",
        "Outcome of the last backup run: 1 completed, 0 failed.",
        "lastStatus",
    ),
    (
        "backupagent_backup_duration_seconds",
        "gauge",
        "Duration of the last backup run, in seconds.",
        "durationSeconds",
    ),
    (
        "backupagent_backup_dump_bytes",
        "gauge",
        "Uncompressed dump size of the last successful backup, in bytes.",
        "dumpBytes",
    ),
    (
        "backupagent_backup_stored_bytes",
        "gauge",
        "Stored (compressed, encrypted) size of the last successful backup, in bytes.",
        "storedBytes",
    ),
    (
        "backupagent_backup_failures_total",
        "counter",
        "Failed backup runs of this database since metrics were first recorded.",
        "failuresTotal",
    ),
    (
        "backupagent_verification_last_status",
        "gauge",
        "Outcome of the last restore verification: 1 passed, 0 failed or error.",
        "verificationStatus",
    ),
    (
        "backupagent_verification_last_timestamp_seconds",
        "gauge",
        "Unix time the last restore verification of this database finished.",
        "verificationAt",
    ),
)
_HEARTBEAT_METRICS: Tuple[Tuple[str, str, str, str], ...] = (
    (
        "backupagent_heartbeat_last_success_timestamp_seconds",
        "gauge",
        "Unix time of the last heartbeat the control plane accepted.",
        "lastSuccess",
    ),
    (
        "backupagent_heartbeat_failures_total",
        "counter",
        "Heartbeats that failed (unreachable control plane, rejected key, server error).",
        "failuresTotal",
    ),
)
_INFO = ("backupagent_info", "gauge", "Agent build information; the value is always 1.")


def escape_label_value(value: str) -> str:
    """Exposition-format escaping: backslash, double quote and line feed."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    """HELP text escapes only backslash and line feed."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    """Integers without a fraction (byte counts read better), floats in full precision."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def _labels(pairs: List[Tuple[str, str]]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{escape_label_value(v)}"' for k, v in pairs) + "}"


def _clean_label(value: Any) -> str:
    """A label value as text that always encodes as UTF-8 (lone surrogates replaced)."""
    text = value if isinstance(value, str) else str(value)
    return text.encode("utf-8", "replace").decode("utf-8")


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


class Metrics:
    """Per-database backup metrics and heartbeat health, exported as a textfile.

    ``path`` None (no ``metricsFile`` setting) makes every method a no-op, so
    callers need not check whether metrics are wanted.
    """

    def __init__(
        self,
        path: Optional[PathLike],
        state_dir: PathLike,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path: Optional[Path] = Path(path) if path else None
        self.state_path = Path(state_dir) / STATE_FILE
        self._clock = clock
        self._lock = threading.Lock()
        self._backups: Dict[Tuple[str, str], Dict[str, Any]] = {}
        self._heartbeat: Dict[str, Any] = {}
        self._write_failed = False
        if self.path is None:
            return
        try:
            with self._lock:
                self._load()
                self._write_textfile()
        except Exception as exc:  # metrics are never a reason for the agent not to start
            log.warning("metrics: could not initialise %s: %s", self.path, exc)

    @classmethod
    def from_settings(cls, settings: Any) -> Metrics:
        """From host settings: ``metricsFile`` in agent.yaml, state in the state dir."""
        raw = (getattr(settings, "extra", None) or {}).get(SETTING)
        path = raw if isinstance(raw, str) and raw.strip() else None
        if raw is not None and path is None:
            log.warning("metrics: %s in agent.yaml must be a file path; metrics are off", SETTING)
        return cls(path, settings.state_dir)

    @property
    def enabled(self) -> bool:
        return self.path is not None

    # -- recording -------------------------------------------------------------

    def record_backup(
        self,
        database_label: str,
        db_type: str,
        result: Any,
        *,
        duration_seconds: Optional[float] = None,
    ) -> None:
        """Record one finished backup run (a ``JobResult``).

        ``duration_seconds`` is used when the result does not carry
        ``durationMs`` (a run that failed before it started reports none).
        """
        if self.path is None:
            return
        try:
            with self._lock:
                self._apply_backup(database_label, db_type, result, duration_seconds)
                self._save_state()
                self._write_textfile()
        except Exception as exc:
            log.warning("metrics: could not record the backup of %s: %s", database_label, exc)

    def record_heartbeat(self, ok: bool) -> None:
        if self.path is None:
            return
        try:
            with self._lock:
                if ok:
                    self._heartbeat["lastSuccess"] = round(self._clock(), 3)
                else:
                    self._heartbeat["failuresTotal"] = (
                        int(self._heartbeat.get("failuresTotal") or 0) + 1
                    )
                self._heartbeat.setdefault("failuresTotal", 0)
                self._save_state()
                self._write_textfile()
        except Exception as exc:
            log.warning("metrics: could not record the heartbeat: %s", exc)

    def _apply_backup(
        self, database: str, db_type: str, result: Any, duration_seconds: Optional[float]
    ) -> None:
        now = round(self._clock(), 3)
        key = (_clean_label(database), _clean_label(db_type))
        entry = self._backups.setdefault(key, {"failuresTotal": 0})
        details = getattr(result, "details", None) or {}
        ok = bool(getattr(result, "ok", False))
        entry["lastRun"] = now
        entry["lastStatus"] = 1 if ok else 0
        duration_ms = _number(details.get("durationMs"))
        if duration_ms is not None:
            entry["durationSeconds"] = duration_ms / 1000.0
        elif _number(duration_seconds) is not None:
            entry["durationSeconds"] = round(float(duration_seconds), 3)  # type: ignore[arg-type]
        if ok:
            entry["lastSuccess"] = now
            for field, name in (("dumpBytes", "dumpSize"), ("storedBytes", "storedSize")):
                size = _number(details.get(name))
                if size is not None:
                    entry[field] = size
        else:
            entry["failuresTotal"] = int(entry.get("failuresTotal") or 0) + 1
        verification = details.get("verification")
        if isinstance(verification, str) and verification:
            entry["verificationStatus"] = 1 if verification == "passed" else 0
            entry["verificationAt"] = now

    # -- output ------------------------------------------------------------------

    def render(self) -> str:
        """The textfile's content (exposition format 0.0.4)."""
        with self._lock:
            return self._render()

    def _render(self) -> str:
        lines: List[str] = []

        def family(name: str, kind: str, text: str) -> None:
            lines.append(f"# HELP {name} {escape_help(text)}")
            lines.append(f"# TYPE {name} {kind}")

        family(*_INFO)
        lines.append(f"{_INFO[0]}{_labels([('version', __version__)])} 1")
        keys = sorted(self._backups)
        for name, kind, text, field in _BACKUP_METRICS:
            samples = []
            for database, db_type in keys:
                value = _number(self._backups[(database, db_type)].get(field))
                if value is not None:
                    labels = _labels([("database", database), ("db_type", db_type)])
                    samples.append(f"{name}{labels} {format_value(value)}")
            if samples:
                family(name, kind, text)
                lines.extend(samples)
        for name, kind, text, field in _HEARTBEAT_METRICS:
            value = _number(self._heartbeat.get(field))
            if value is not None:
                family(name, kind, text)
                lines.append(f"{name} {format_value(value)}")
        return "\n".join(lines) + "\n"

    def _write_textfile(self) -> None:
        assert self.path is not None
        try:
            atomic_write(self.path, self._render().encode("utf-8"), mode=0o644)
        except OSError as exc:
            # Once per outage: a heartbeat a minute must not flood the journal.
            level = logging.DEBUG if self._write_failed else logging.WARNING
            log.log(
                level,
                "metrics: cannot write %s (%s); check that the directory exists and is "
                "writable by the agent's user (ReadWritePaths= under systemd)",
                self.path,
                exc.strerror or exc,
            )
            self._write_failed = True
            return
        if self._write_failed:
            log.info("metrics: writing %s again", self.path)
        self._write_failed = False

    # -- state -----------------------------------------------------------------

    def _save_state(self) -> None:
        body = {
            "version": STATE_VERSION,
            "backups": [
                {"database": database, "dbType": db_type, **values}
                for (database, db_type), values in sorted(self._backups.items())
            ],
            "heartbeat": self._heartbeat,
        }
        try:
            atomic_write(self.state_path, json.dumps(body, sort_keys=True).encode(), mode=0o640)
        except OSError as exc:
            log.debug("metrics: cannot save %s: %s", self.state_path, exc)

    def _load(self) -> None:
        """Read the persisted values; anything unreadable is dropped, not fatal."""
        try:
            data = json.loads(self.state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("metrics: ignoring unreadable %s: %s", self.state_path, exc)
            return
        if not isinstance(data, dict):
            return
        for item in data.get("backups") or []:
            if not isinstance(item, dict):
                continue
            database, db_type = item.get("database"), item.get("dbType")
            if not isinstance(database, str) or not isinstance(db_type, str):
                continue
            values = {
                k: v
                for k, v in item.items()
                if k not in ("database", "dbType") and _number(v) is not None
            }
            values.setdefault("failuresTotal", 0)
            self._backups[(database, db_type)] = values
        heartbeat = data.get("heartbeat")
        if isinstance(heartbeat, dict):
            self._heartbeat = {k: v for k, v in heartbeat.items() if _number(v) is not None}
