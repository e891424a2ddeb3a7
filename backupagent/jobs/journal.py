"""A small journal of running backups, so the next start can clean up after a crash.

A ``kill -9``, an OOM kill or a power cut skips every ``finally``: the job's
work dir stays in the spool, a partial file in the local target, a multipart
upload open in S3, a verification container running, and the control plane
never hears a terminal status. Each running job therefore keeps one JSON file,
``<state-dir>/running/<jobId>.json`` (0600), naming what it owns; it is
written before the job creates any of those things and removed once the
terminal status is reported. Whatever is still there at start-up, with its
owning process gone, belongs to an interrupted job (see ``jobs.recovery``).

Journal writes never raise: a full disk must not fail the backup it protects
(the job then simply cannot be cleaned up as precisely after a crash).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, List, Optional

from backupagent.fsutil import atomic_write
from backupagent.report.outbox import owner_alive, process_token
from backupagent.targets.keys import sanitize_segment

log = logging.getLogger(__name__)

JOURNAL_DIR = "running"


@dataclass
class JournalEntry:
    job_id: str
    owner: str  # process_token() of the process running the job
    started_at: float  # epoch seconds
    schedule_id: Optional[str] = None
    database_id: Optional[str] = None
    target_id: Optional[str] = None
    workdir: Optional[str] = None  # the job's private dir in the spool
    object_key: Optional[str] = None  # relative to the target's root
    upload_id: Optional[str] = None  # S3 multipart upload, when known
    temp_paths: List[str] = field(default_factory=list)  # other files to remove

    @property
    def alive(self) -> bool:
        return owner_alive(self.owner)


_FIELDS = {f.name for f in fields(JournalEntry)}


class JobJournal:
    def __init__(self, state_dir: os.PathLike[str] | str) -> None:
        self.dir = Path(state_dir) / JOURNAL_DIR

    def _path(self, job_id: str) -> Path:
        return self.dir / f"{sanitize_segment(job_id)}.json"

    def _write(self, entry: JournalEntry) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            data = json.dumps(asdict(entry), indent=1).encode("utf-8")
            atomic_write(self._path(entry.job_id), data, mode=0o600)
        except OSError as exc:
            log.warning("could not write the job journal for %s: %s", entry.job_id, exc)

    def begin(self, job_id: str, **details: Any) -> None:
        """Record a job as running. ``details``: any JournalEntry field."""
        entry = JournalEntry(job_id=job_id, owner=process_token(), started_at=time.time())
        self._apply(entry, details)
        self._write(entry)

    def update(self, job_id: str, **details: Any) -> None:
        """Add what became known later (the object key, a temp path)."""
        entry = self.get(job_id)
        if entry is None:
            self.begin(job_id, **details)
            return
        temp = details.pop("temp_path", None)
        self._apply(entry, details)
        if temp:
            entry.temp_paths.append(str(temp))
        self._write(entry)

    def end(self, job_id: str) -> None:
        """The job reported its terminal status: nothing left to recover."""
        try:
            self._path(job_id).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not remove the job journal for %s: %s", job_id, exc)

    def get(self, job_id: str) -> Optional[JournalEntry]:
        return _load(self._path(job_id))

    def entries(self) -> List[JournalEntry]:
        if not self.dir.is_dir():
            return []
        out = [e for e in (_load(p) for p in sorted(self.dir.glob("*.json"))) if e is not None]
        return sorted(out, key=lambda e: e.started_at)

    @staticmethod
    def _apply(entry: JournalEntry, details: Any) -> None:
        for key, value in details.items():
            if key not in _FIELDS or key in ("job_id", "owner"):
                raise TypeError(f"unknown job journal field {key!r}")
            if value is not None and key in ("workdir", "object_key"):
                value = str(value)
            setattr(entry, key, value)


def _load(path: Path) -> Optional[JournalEntry]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable job journal %s: %s", path, exc)
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("job_id"), str):
        log.warning("ignoring malformed job journal %s", path)
        return None
    known = {k: v for k, v in raw.items() if k in _FIELDS}
    try:
        return JournalEntry(**known)
    except TypeError as exc:
        log.warning("ignoring malformed job journal %s: %s", path, exc)
        return None
