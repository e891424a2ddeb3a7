"""What the daemon last did, on disk, for ``backupagent status`` and restarts.

A small JSON document rewritten atomically. It is advisory: losing it costs a
status line and an anacron-style catch-up decision, never a backup.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any, Dict, Optional

from backupagent.fsutil import atomic_write
from backupagent.logs import utc_timestamp

log = logging.getLogger(__name__)
STATE_FILE = "agent-state.json"


class AgentState:
    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / STATE_FILE
        self._lock = threading.Lock()
        self._data: Dict[str, Any] = self._read()

    def _read(self) -> Dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable state file %s: %s", self.path, exc)
            return {}
        return data if isinstance(data, dict) else {}

    def snapshot(self) -> Dict[str, Any]:
        with self._lock:
            return json.loads(json.dumps(self._data))

    def update(self, **sections: Any) -> None:
        with self._lock:
            self._data.update(sections)
            self._flush()

    def record_heartbeat(
        self, ok: bool, error: Optional[str] = None, config_changed: Optional[bool] = None
    ) -> None:
        with self._lock:
            entry: Dict[str, Any] = {"at": utc_timestamp(), "ok": ok}
            if error:
                entry["error"] = error
            if config_changed is not None:
                entry["configChanged"] = config_changed
            self._data["lastHeartbeat"] = entry
            if ok:
                self._data["lastHeartbeatOk"] = entry["at"]
            self._flush()

    def record_config(self, config_hash: str, source: str, schedules: int) -> None:
        self.update(
            lastConfig={
                "at": utc_timestamp(),
                "hash": config_hash,
                "source": source,
                "schedules": schedules,
            }
        )

    def record_run(
        self,
        schedule_id: str,
        *,
        started_at: str,
        status: str,
        job_id: Optional[str] = None,
        error: Optional[str] = None,
    ) -> None:
        with self._lock:
            runs = self._data.setdefault("schedules", {})
            runs[schedule_id] = {
                "lastRunAt": started_at,
                "lastStatus": status,
                "lastJobId": job_id,
                "lastError": error,
            }
            self._flush()

    def last_run_at(self, schedule_id: str) -> Optional[str]:
        with self._lock:
            return (self._data.get("schedules", {}).get(schedule_id) or {}).get("lastRunAt")

    def _flush(self) -> None:
        try:
            atomic_write(
                self.path, json.dumps(self._data, indent=2, sort_keys=True).encode(), mode=0o640
            )
        except OSError as exc:  # a full disk must not stop heartbeats or backups
            log.warning("could not write state file %s: %s", self.path, exc)
