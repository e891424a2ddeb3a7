"""Standalone mode's records: each job as a JSON document in the state dir.

``<state-dir>/jobs/<jobId>.json`` holds the job's start request, every status
in order and its log lines, with the same fields the control plane would get,
so a user without the hosted service can still see what ran.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List

from backupagent.api.models import (
    AnomalyReport,
    JobStartRequest,
    JobStatusUpdate,
    LogEntry,
    SchemaSnapshotRequest,
    VerificationReport,
    to_json,
)
from backupagent.fsutil import atomic_write
from backupagent.logs import utc_timestamp


class LocalReporter:
    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir) / "jobs"
        self._lock = threading.Lock()

    def _path(self, job_id: str) -> Path:
        return self.dir / f"{job_id}.json"

    def _update(self, job_id: str, mutate: Any) -> None:
        with self._lock:
            path = self._path(job_id)
            try:
                doc: Dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
            except (FileNotFoundError, ValueError):
                doc = {"jobId": job_id, "statuses": [], "logs": []}
            mutate(doc)
            atomic_write(path, json.dumps(doc, indent=1).encode(), mode=0o640)

    def start_job(self, req: JobStartRequest) -> str:
        job_id = str(uuid.uuid4())
        self._update(job_id, lambda d: d.update(start=to_json(req), createdAt=utc_timestamp()))
        return job_id

    def job_status(self, job_id: str, update: JobStatusUpdate) -> None:
        def add(doc: Dict[str, Any]) -> None:
            doc["statuses"].append({**to_json(update), "at": utc_timestamp()})
            doc["status"] = update.status

        self._update(job_id, add)

    def job_logs(self, job_id: str, entries: List[LogEntry]) -> None:
        self._update(job_id, lambda d: d["logs"].extend(asdict(e) for e in entries))

    def verification(self, job_id: str, report: VerificationReport) -> None:
        self._update(job_id, lambda d: d.update(verification=to_json(report)))

    def schema_snapshot(self, req: SchemaSnapshotRequest) -> None:
        self._append("schema-snapshots.jsonl", to_json(req))

    def anomaly(self, req: AnomalyReport) -> None:
        self._append("anomalies.jsonl", {**to_json(req), "at": utc_timestamp()})

    def _append(self, name: str, record: Dict[str, Any]) -> None:
        with self._lock:
            self.dir.mkdir(parents=True, exist_ok=True)
            with open(self.dir / name, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")

    def has_terminal(self, job_id: str) -> bool:
        """Whether the job's end was recorded (crash recovery must not report it twice)."""
        try:
            doc = json.loads(self._path(job_id).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return doc.get("status") in ("completed", "failed")

    def list_jobs(self) -> List[Dict[str, Any]]:
        out = []
        for path in sorted(self.dir.glob("*.json")):
            try:
                out.append(json.loads(path.read_text(encoding="utf-8")))
            except ValueError:
                continue
        return sorted(out, key=lambda d: d.get("createdAt", ""))
