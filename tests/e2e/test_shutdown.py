"""Signals during a backup: the first lets it finish, a second cancels it."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import Agent, wait_until


@pytest.fixture
def slow_backup_config(agent: Agent, pg_database, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    """A schedule whose backup takes seconds: ~60 MB of text at zstd level 19."""
    pg_database.psql(
        "CREATE TABLE big AS SELECT g AS id, md5(g::text) || repeat('x', 200) AS v "
        "FROM generate_series(1, 250000) g"
    )
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
    cfg = tmp_path / "backups.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "schedules": [
                    {
                        "id": "slow",
                        "databaseId": "db-1",
                        "targetId": "t",
                        "cron": "0 3 * * *",
                        "database": {
                            "id": "db-1",
                            "dbType": "postgresql",
                            "host": "127.0.0.1",
                            "port": str(pg_database.server.port),
                            "databaseName": pg_database.name,
                        },
                        "compression": {"algorithm": "zstd", "level": 19},
                    }
                ],
                "targets": [{"id": "t", "type": "local", "path": str(tmp_path / "backups")}],
            }
        )
    )
    return cfg


def _job_record(agent: Agent) -> dict:
    records = list((agent.state_dir / "jobs").glob("*.json"))
    return json.loads(records[0].read_text()) if records else {}


def _stored(tmp_path: Path) -> list:
    root = tmp_path / "backups"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_first_signal_lets_the_running_backup_finish(
    agent: Agent, slow_backup_config: Path, tmp_path: Path
) -> None:
    proc = agent.start("run", "--once", "--config-file", str(slow_backup_config))
    wait_until(
        lambda: _job_record(agent).get("status") in ("compressing", "uploading"),
        60,
        "the backup to be streaming",
    )
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=180) == 0
    record = _job_record(agent)
    assert record["status"] == "completed"
    assert len(_stored(tmp_path)) == 2  # the backup and its manifest


def test_second_signal_cancels_and_leaves_nothing(
    agent: Agent, slow_backup_config: Path, tmp_path: Path
) -> None:
    proc = agent.start("run", "--once", "--config-file", str(slow_backup_config))
    wait_until(
        lambda: _job_record(agent).get("status") in ("compressing", "uploading"),
        60,
        "the backup to be streaming",
    )
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=60)
    # Cancelling kills the dump at once; what remains is zstd finishing the
    # jobs already handed to its worker threads (seconds at level 19 on a busy
    # 2-core machine). The uncancelled backup takes over a minute here.
    assert time.monotonic() - started < 45
    assert code == 1
    final = _job_record(agent)["statuses"][-1]
    assert final["status"] == "failed" and final["errorCode"] == "CANCELLED"
    assert _stored(tmp_path) == []  # no partial object, no temp file
    assert not list((agent.state_dir / "spool").glob("*"))


def test_job_timeout_stops_the_backup_as_timeout(
    agent: Agent, slow_backup_config: Path, tmp_path: Path
) -> None:
    (agent.config_dir / "agent.yaml").write_text("jobTimeout: 3\n")
    started = time.monotonic()
    proc = agent.start("run", "--once", "--config-file", str(slow_backup_config))
    assert proc.wait(timeout=120) == 1
    assert time.monotonic() - started < 60
    final = _job_record(agent)["statuses"][-1]
    assert final["status"] == "failed" and final["errorCode"] == "TIMEOUT"
    assert "jobTimeout" in final["errorMessage"]
    assert _stored(tmp_path) == []
