"""A bounded soak: the real daemon with 30 every-minute schedules and maxConcurrentJobs 2.

Every schedule fires at the same instant each minute, so the executor's pool
(not luck) is all that keeps concurrent backups at the limit. The backups'
own log lines (``started as job`` / ``completed``) give each one's interval;
at most two may overlap, and at least two must (else the pool size is not
what the setting says, or the test shows nothing). Every fire is accounted
for: it ran, or APScheduler logged that it skipped it (the schedule's last
run still going, ``max_instances=1``) or that it missed it, or the daemon
logged that it did not start it because it was stopping.

Runs 65-100 s: it must see at least one whole minute's fire. The long run is
``bench/soak.py`` (docs/performance.md, "Soak").
"""

from __future__ import annotations

import datetime as dt
import math
import sqlite3
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from backupagent.controlplane.testing import ServerHandle
from tests.e2e.conftest import Agent, wait_until

pytestmark = pytest.mark.e2e

SCHEDULES = 30
DATABASES = 5
MAX_JOBS = 2
SKIP_MARKS = (
    "maximum number of running instances reached",  # APScheduler: still running
    "was missed by",  # APScheduler: past misfire_grace_time
    "not starting schedule",  # the daemon: stopping
)


def _databases(directory: Path) -> List[Path]:
    directory.mkdir()
    paths = []
    for i in range(DATABASES):
        path = directory / f"app{i}.db"
        con = sqlite3.connect(path)
        con.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
        con.executemany(
            "INSERT INTO events (body) VALUES (?)", [(f"event {n} " * 4,) for n in range(20000)]
        )
        con.commit()
        con.close()
        paths.append(path)
    return paths


def _config(dbs: List[Path], backups: Path) -> Dict[str, Any]:
    schedules = []
    for i in range(SCHEDULES):
        db_id = f"db-{i % len(dbs)}"
        schedules.append(
            {
                "id": f"soak-{i:02d}",
                "databaseId": db_id,
                "targetId": "local",
                "cron": "* * * * *",
                "timezone": "UTC",
                "database": {
                    "id": db_id,
                    "dbType": "sqlite",
                    "databaseName": str(dbs[i % len(dbs)]),
                },
                "retention": {"keepLast": 2},
            }
        )
    return {
        "schedules": schedules,
        "targets": [{"id": "local", "type": "local", "path": str(backups)}],
        "alertChannels": [],
    }


def _ts(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _intervals(logs: List[Dict[str, Any]], stopped: float) -> Dict[str, Tuple[float, float, str]]:
    """jobId -> (start, end, outcome) from the backup job's own log lines."""
    starts: Dict[str, float] = {}
    ends: Dict[str, Tuple[float, str]] = {}
    for rec in logs:
        msg, job = str(rec.get("msg", "")), rec.get("jobId")
        if not job or not msg.startswith("backup "):
            continue
        if " started as job " in msg:
            starts[job] = _ts(rec["ts"])
        elif " completed: " in msg:
            ends[job] = (_ts(rec["ts"]), "completed")
        elif " failed (" in msg:
            ends[job] = (_ts(rec["ts"]), "failed")
    return {j: (s, *ends.get(j, (stopped, "unfinished"))) for j, s in starts.items()}


def _max_overlap(intervals: List[Tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    best = cur = 0
    for _, delta in events:
        cur += delta
        best = max(best, cur)
    return best


def _first_fires(logs: List[Dict[str, Any]]) -> Dict[str, float]:
    """schedule id -> its first run time, from the daemon's "schedule X added, next run T"."""
    out = {}
    for rec in logs:
        msg = str(rec.get("msg", ""))
        if msg.startswith("schedule ") and " added, next run " in msg:
            out[msg.split()[1]] = _ts(msg.rsplit(" ", 1)[1])
    return out


def test_concurrency_stays_at_the_limit_and_every_fire_is_accounted_for(
    agent: Agent, controlplane: ServerHandle, tmp_path: Path
) -> None:
    agent.register(controlplane)
    with (agent.config_dir / "agent.yaml").open("a") as f:
        f.write(f"\nmaxConcurrentJobs: {MAX_JOBS}\nheartbeatInterval: 1\n")
    dbs = _databases(tmp_path / "dbs")
    aid = controlplane.store.list_agents()[0]["agentId"]
    controlplane.store.set_config(aid, _config(dbs, tmp_path / "backups"))
    started = time.time()
    proc = agent.start("run")
    wait_until(
        lambda: len(_first_fires(agent.log_lines(proc))) == SCHEDULES, 30, "30 schedules added"
    )
    first = _first_fires(agent.log_lines(proc))
    first_fire = min(first.values())
    # One whole minute's fire must have run before stopping.
    wait_until(
        lambda: (
            sum(1 for j in controlplane.store.list_jobs() if j["status"] in ("completed", "failed"))
            >= SCHEDULES
        ),
        first_fire - time.time() + 60,
        "the first fire's 30 backups",
    )
    # Stop at least 65 s in, and never within 5 s of a fire (so a fire never
    # races the signal and the count of fires is exact).
    stop_at = max(time.time(), started + 65)
    while not 5 <= stop_at % 60 <= 55:
        stop_at += 1
    time.sleep(max(0.0, stop_at - time.time()))
    stopped = time.time()
    assert agent.stop(proc, timeout=60) == 0
    logs = agent.log_lines(proc)

    jobs = _intervals(logs, stopped)
    overlap = _max_overlap([(s, e) for s, e, _ in jobs.values()])
    assert overlap <= MAX_JOBS, f"{overlap} backups ran at once; the limit is {MAX_JOBS}"
    assert overlap == MAX_JOBS, "backups never overlapped: the pool is smaller than the setting"
    outcomes = [o for _, _, o in jobs.values()]
    assert outcomes.count("failed") == 0, [r for r in logs if r.get("level") == "error"]

    fires = sum(math.floor((stopped - t) / 60) + 1 for t in first.values() if t <= stopped)
    skipped = sum(1 for r in logs if any(m in str(r.get("msg", "")) for m in SKIP_MARKS))
    assert len(jobs) + skipped == fires, (len(jobs), skipped, fires)
    assert len(jobs) >= SCHEDULES

    # Everything the daemon ran was reported (the outbox is flushed at stop).
    reported = controlplane.store.list_jobs()
    assert len(reported) == len(jobs)
    assert {j["status"] for j in reported} <= {"completed"}, {j["status"] for j in reported}
    assert not [r for r in logs if "Traceback" in str(r)]
