"""A control-plane outage during a scheduled backup, with the real CLI processes.

The control plane's port closes; ``backupagent backup --schedule`` still backs
up (exit 0) and queues its reports; when the control plane is back, the next
``backupagent run --once`` delivers every status and log line, in order,
under the server's job id. Needs the outbox wired into the CLI and daemon
(``jobs.runner.make_reporter``).

And the other way round: a deliverer killed with SIGKILL after sending but
before its batched acknowledgement was committed sends those items again on
the next start, and the reference control plane takes the repeats without a
5xx or a second job.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict, List
from urllib.parse import urlparse

import pytest
import yaml

from backupagent.api.client import ApiClient
from backupagent.api.models import JobStartRequest, JobStatusUpdate, LogEntry
from backupagent.controlplane.testing import running_server
from backupagent.report.outbox import OutboxReporter, read_backlog
from tests.e2e.conftest import Agent
from tests.integration.test_outbox_controlplane import register, serve
from tests.servers import free_port

pytestmark = pytest.mark.e2e


def _config(pg: Any, backups: Path) -> Dict[str, Any]:
    return {
        "schedules": [
            {
                "id": "sched-1",
                "databaseId": "db-1",
                "targetId": "tgt-1",
                "cron": "0 3 * * *",
                "database": {
                    "id": "db-1",
                    "dbType": "postgresql",
                    "host": "127.0.0.1",
                    "port": str(pg.server.port),
                    "databaseName": pg.name,
                },
            }
        ],
        "targets": [{"id": "tgt-1", "type": "local", "path": str(backups)}],
        "alertChannels": [],
    }


def test_backup_during_an_outage_is_delivered_whole_when_the_control_plane_returns(
    agent: Agent, pg_database: Any, tmp_path: Path
) -> None:
    port = free_port()
    db = tmp_path / "cp.db"
    backups = tmp_path / "backups"
    agent.config_dir.mkdir(parents=True, exist_ok=True)
    creds = agent.config_dir / "credentials.yaml"
    creds.write_text(
        yaml.safe_dump(
            {
                "databases": {
                    "db-1": {
                        "user": pg_database.server.user,
                        "password": pg_database.server.password,
                    }
                }
            }
        )
    )
    creds.chmod(0o600)
    with serve(db, port) as srv:
        agent.register(srv)
        srv.store.set_config(srv.store.list_agents()[0]["agentId"], _config(pg_database, backups))
        first = agent.cli("run", "--once")
        assert first.returncode == 0, first.stderr
        assert len(srv.store.list_jobs()) == 1

    # The control plane is down (connection refused) for a whole backup.
    res = agent.cli("backup", "--schedule", "sched-1", "--json", timeout=120)
    assert res.returncode == 0, res.stderr  # the backup does not depend on the control plane
    backlog = read_backlog(agent.state_dir)
    assert backlog is not None and backlog["byKind"]["start"] == 1
    assert backlog["byKind"]["status"] >= 4 and backlog["byKind"]["log"] >= 1
    assert len(list(backups.rglob("*.dump.zst"))) == 2
    # Both backups can start in the same second, so the filename order
    # (timestamp, then a random id) does not say which is the new one.
    stored_uri = json.loads(res.stdout)["uploadPath"]
    assert Path(urlparse(stored_uri).path).is_file()

    with serve(db, port) as srv:
        again = agent.cli("run", "--once", timeout=120)
        assert again.returncode == 0, again.stderr
        backlog = read_backlog(agent.state_dir)
        assert backlog is not None and backlog["pending"] == 0, backlog
        jobs = srv.store.list_jobs()
        assert len(jobs) == 2
        job = jobs[1]
        history: List[Dict[str, Any]] = srv.store.job_history(job["jobId"])
        assert [h["status"] for h in history] == [
            "dumping",
            "compressing",
            "uploading",
            "completed",
        ]
        assert history[-1]["body"]["uploadPath"] == stored_uri
        logs = [e["message"] for e in srv.store.job_logs(job["jobId"])]
        assert logs and "Starting backup" in logs[0]
        assert any(m.startswith("stored ") for m in logs)
        assert pg_database.server.password not in str(logs)


# A deliverer that dies by SIGKILL the moment it would commit a batch of
# acknowledgements: everything it sent since its last commit is still queued.
_KILLED_DELIVERER = textwrap.dedent(
    """
    import os, signal, sys
    from backupagent.api.client import ApiClient
    from backupagent.report.outbox import OutboxReporter

    url, key, state = sys.argv[1:4]
    rep = OutboxReporter(state, ApiClient(url, key, insecure_http=True))
    rep.queue.delivered = lambda items: os.kill(os.getpid(), signal.SIGKILL)
    while rep.deliver_batch() != "empty":
        pass
    sys.exit(3)  # not reached: the round ends with an acknowledgement
    """
)


def _report_backup(rep: OutboxReporter, n: int) -> str:
    job = rep.start_job(JobStartRequest(databaseId=f"db-{n}", targetId="tgt-1"))
    for stage in ("dumping", "compressing", "uploading"):
        rep.job_status(job, JobStatusUpdate(status=stage))
        rep.job_logs(
            job,
            [
                LogEntry(
                    level="info", message=f"job {n} {stage}", timestamp="2026-11-29T00:00:00.000Z"
                )
            ],
        )
    rep.job_status(
        job,
        JobStatusUpdate(
            status="completed",
            dumpSize=10,
            compressedSize=5,
            uploadPath=f"file:///backups/{n}.dump.zst",
            durationMs=7,
        ),
    )
    return job


def test_kill_9_before_the_batched_ack_resends_and_the_control_plane_takes_the_repeats(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    with running_server(tmp_path / "cp.db") as srv:
        key = register(srv)
        rep = OutboxReporter(state, ApiClient(srv.url, key, insecure_http=True))
        jobs = [_report_backup(rep, n) for n in range(3)]
        rep.close()
        queued = read_backlog(state)
        assert queued is not None and queued["pending"] == 3 * 8

        killed = subprocess.run(
            [sys.executable, "-c", _KILLED_DELIVERER, srv.url, key, str(state)],
            env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2])),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        # Every job reached the server whole; the last job's items were sent
        # but their acknowledgement died with the process.
        server_jobs = srv.store.list_jobs()
        assert [j["status"] for j in server_jobs] == ["completed"] * 3
        left = read_backlog(state)
        assert left is not None and left["pending"] == 7, left  # all but the last job's start

        errors: List[str] = []
        rep = OutboxReporter(state, ApiClient(srv.url, key, insecure_http=True))
        try:
            outcomes = []
            while (outcome := rep.deliver_batch()) != "empty":
                outcomes.append(outcome)
            assert "transient" not in outcomes and "auth" not in outcomes
            assert rep.backlog()["pending"] == 0
            errors.append(str(rep.backlog()["lastError"]))
            mapped = [rep.server_job_id(j) for j in jobs]
        finally:
            rep.close()

        # No second job (the id mapping was committed at once), each job's
        # history ends with exactly one terminal status, the repeats were
        # refused with 409 (a stage after a terminal one) and dropped.
        server_jobs = srv.store.list_jobs()
        assert sorted(j["jobId"] for j in server_jobs) == sorted(mapped)
        for j in server_jobs:
            history = [h["status"] for h in srv.store.job_history(j["jobId"])]
            assert history == ["dumping", "compressing", "uploading", "completed"]
        assert "409" in errors[0] and "already completed" in errors[0]
        last_logs = [e["message"] for e in srv.store.job_logs(mapped[-1] or "")]
        # At least once: the resent log lines arrive twice, none is missing.
        assert sorted(set(last_logs)) == sorted(
            f"job 2 {s}" for s in ("compressing", "dumping", "uploading")
        )
        assert len(last_logs) == 6
