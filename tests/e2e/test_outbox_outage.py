"""A control-plane outage during a scheduled backup, with the real CLI processes.

The control plane's port closes; ``backupagent backup --schedule`` still backs
up (exit 0) and queues its reports; when the control plane is back, the next
``backupagent run --once`` delivers every status and log line, in order,
under the server's job id. Needs the outbox wired into the CLI and daemon
(``jobs.runner.make_reporter``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import pytest
import yaml

from backupagent.report.outbox import read_backlog
from tests.e2e.conftest import Agent
from tests.integration.test_outbox_controlplane import serve
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
    stored = sorted(p for p in backups.rglob("*.dump.zst"))
    assert len(stored) == 2

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
        assert history[-1]["body"]["uploadPath"] == stored[-1].as_uri()
        logs = [e["message"] for e in srv.store.job_logs(job["jobId"])]
        assert logs and "Starting backup" in logs[0]
        assert any(m.startswith("stored ") for m in logs)
        assert pg_database.server.password not in str(logs)
