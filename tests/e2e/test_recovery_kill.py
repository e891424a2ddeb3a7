"""kill -9 mid-backup, then crash recovery: the job is reported INTERRUPTED to the
real control plane and nothing partial is left in the spool, the target or S3.

The agent process is real and its backup is a real, slow PostgreSQL backup
(the same recipe as test_shutdown.py). Two ways to run it:

- ``backupagent run --once`` (the CLI as shipped);
- a worker process (``python -m tests.e2e.test_recovery_kill``) that runs the
  same job code (``resolve_schedule`` + ``run_backup``) with the
  ``OutboxReporter``, so recovery is proven independently of the wiring.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest
import yaml

from backupagent.api.client import ApiClient
from backupagent.api.retry import RetryPolicy
from backupagent.config.parse import parse_config
from backupagent.controlplane.testing import ServerHandle
from backupagent.jobs.journal import JobJournal
from backupagent.jobs.recovery import INTERRUPTED, recover
from backupagent.report.outbox import OutboxReporter
from backupagent.settings import load_settings
from tests.e2e.conftest import Agent, wait_until

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
FAST = RetryPolicy(base=0.05, cap=0.5)


def _credentials(agent: Agent, pg: Any) -> None:
    agent.config_dir.mkdir(parents=True, exist_ok=True)
    creds = agent.config_dir / "credentials.yaml"
    creds.write_text(
        yaml.safe_dump(
            {"databases": {"db-1": {"user": pg.server.user, "password": pg.server.password}}}
        )
    )
    creds.chmod(0o600)


def _schedule(pg: Any, level: int) -> Dict[str, Any]:
    return {
        "id": "slow",
        "databaseId": "db-1",
        "targetId": "t",
        "cron": "0 3 * * *",
        "database": {
            "id": "db-1",
            "dbType": "postgresql",
            "host": "127.0.0.1",
            "port": str(pg.server.port),
            "databaseName": pg.name,
        },
        "compression": {"algorithm": "zstd", "level": level},
    }


def _local_config(pg: Any, backups: Path) -> Dict[str, Any]:
    return {
        "schedules": [_schedule(pg, 19)],
        "targets": [{"id": "t", "type": "local", "path": str(backups)}],
        "alertChannels": [],
    }


def _slow_table(pg: Any, rows: int = 250000, random_text: bool = False) -> None:
    value = (
        "md5(random()::text) || md5(random()::text) || md5(random()::text)"
        if random_text
        else "md5(g::text) || repeat('x', 200)"
    )
    pg.psql(f"CREATE TABLE big AS SELECT g AS id, {value} AS v FROM generate_series(1, {rows}) g")


def _start_worker(agent: Agent, config_file: Path) -> subprocess.Popen:
    log = open(agent.state_dir.parent / "worker.log", "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.e2e.test_recovery_kill", str(config_file), "slow"],
        env=agent.env(),
        cwd=str(REPO),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    proc.log_path = log.name  # type: ignore[attr-defined]
    agent.procs.append(proc)
    return proc


def _server_statuses(srv: ServerHandle) -> List[str]:
    jobs = srv.store.list_jobs()
    return [h["status"] for h in srv.store.job_history(jobs[0]["jobId"])] if jobs else []


def _partials(root: Path) -> List[Path]:
    return [p for p in root.rglob(".*partial-*")] if root.exists() else []


def _kill9(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL
    # pg_dump was our child: with us gone it dies on its next write to the pipe.


def _recover_and_deliver(agent: Agent, srv: ServerHandle, config_doc: Dict[str, Any]) -> Any:
    """What the next daemon start does: recover, then deliver the outbox."""
    settings = load_settings(agent.config_dir, agent.state_dir)
    api = ApiClient(srv.url, settings.read_api_key())
    outbox = OutboxReporter(settings.state_dir, api, retry=FAST)
    try:
        report = recover(settings, outbox, parse_config(config_doc), docker=False)
        outbox.start()
        assert outbox.flush(60), outbox.backlog()
    finally:
        outbox.close()
    return report


def _assert_interrupted_on_server(srv: ServerHandle, report: Any) -> None:
    assert len(report.interrupted) == 1, report
    jobs = srv.store.list_jobs()
    assert len(jobs) == 1
    history = srv.store.job_history(jobs[0]["jobId"])
    statuses = [h["status"] for h in history]
    assert statuses[0] == "dumping" and statuses[-1] == "failed", statuses
    final = history[-1]["body"]
    assert final["errorCode"] == INTERRUPTED
    assert "stopped mid-backup" in final["errorMessage"]
    logs = [e["message"] for e in srv.store.job_logs(jobs[0]["jobId"])]
    assert any("Starting backup" in m for m in logs)
    assert "stopped mid-backup" in logs[-1]


def _assert_nothing_left(agent: Agent, backups: Path) -> None:
    assert _partials(backups) == []
    assert not [p for p in backups.rglob("*") if p.is_file()] if backups.exists() else True
    spool = agent.state_dir / "spool"
    assert not list(spool.iterdir()) if spool.exists() else True
    assert JobJournal(agent.state_dir).entries() == []


def test_kill9_mid_backup_worker_then_recovery_reports_interrupted(
    agent: Agent, controlplane: ServerHandle, pg_database: Any, tmp_path: Path
) -> None:
    _slow_table(pg_database)
    agent.register(controlplane)
    _credentials(agent, pg_database)
    backups = tmp_path / "backups"
    doc = _local_config(pg_database, backups)
    cfg = tmp_path / "backups.yaml"
    cfg.write_text(yaml.safe_dump(doc))

    proc = _start_worker(agent, cfg)
    wait_until(
        lambda: "compressing" in _server_statuses(controlplane) and _partials(backups),
        90,
        "the backup to be streaming into a partial file",
    )
    spool_dirs = list((agent.state_dir / "spool").iterdir())
    assert spool_dirs, "the job's work dir"
    _kill9(proc)
    assert _partials(backups)  # what a kill -9 leaves behind
    assert _server_statuses(controlplane)[-1] in ("dumping", "compressing", "uploading")

    report = _recover_and_deliver(agent, controlplane, doc)

    _assert_interrupted_on_server(controlplane, report)
    _assert_nothing_left(agent, backups)
    assert report.partials_removed >= 1 and report.removed_paths


def test_kill9_mid_backup_of_the_real_cli_then_recovery_reports_interrupted(
    agent: Agent, controlplane: ServerHandle, pg_database: Any, tmp_path: Path
) -> None:
    _slow_table(pg_database)
    agent.register(controlplane)
    _credentials(agent, pg_database)
    backups = tmp_path / "backups"
    doc = _local_config(pg_database, backups)
    controlplane.store.set_config(controlplane.store.list_agents()[0]["agentId"], doc)

    proc = agent.start("run", "--once")
    wait_until(
        lambda: "compressing" in _server_statuses(controlplane) and _partials(backups),
        90,
        "the backup to be streaming into a partial file",
    )
    _kill9(proc)
    report = _recover_and_deliver(agent, controlplane, doc)
    _assert_interrupted_on_server(controlplane, report)
    _assert_nothing_left(agent, backups)


def test_kill9_mid_s3_multipart_upload_then_recovery_aborts_it(
    agent: Agent, controlplane: ServerHandle, pg_database: Any, s3_server: Any, tmp_path: Path
) -> None:
    _slow_table(pg_database, rows=400000, random_text=True)  # ~40 MB that does not compress away
    agent.register(controlplane)
    _credentials(agent, pg_database)
    bucket = s3_server.make_bucket()
    doc = {
        "schedules": [_schedule(pg_database, 12)],
        "targets": [
            {
                "id": "t",
                "type": "s3",
                "bucket": bucket,
                "prefix": "agents",
                "endpointUrl": s3_server.endpoint_url,
                "region": s3_server.region,
                "credentials": {
                    "accessKeyId": s3_server.access_key,
                    "secretAccessKey": s3_server.secret_key,
                },
            }
        ],
        "alertChannels": [],
    }
    cfg = tmp_path / "backups.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    client = s3_server.client()

    def uploads() -> List[Dict[str, Any]]:
        return client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])

    proc = _start_worker(agent, cfg)
    wait_until(uploads, 120, "a multipart upload to be open")
    _kill9(proc)
    assert uploads()  # left open by the kill

    report = _recover_and_deliver(agent, controlplane, doc)

    _assert_interrupted_on_server(controlplane, report)
    assert report.uploads_aborted >= 1
    assert uploads() == []
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    spool = agent.state_dir / "spool"
    assert not list(spool.iterdir()) if spool.exists() else True


def _worker(config_file: str, schedule_id: str) -> int:
    """One scheduled backup as the daemon runs it, reporting through the outbox."""
    from backupagent.jobs.backup import BackupSpec, run_backup
    from backupagent.jobs.runner import resolve_schedule
    from backupagent.logs import setup_logging

    setup_logging("info")
    settings = load_settings(
        os.environ["BACKUPAGENT_CONFIG_DIR"], os.environ["BACKUPAGENT_STATE_DIR"]
    )
    config = parse_config(yaml.safe_load(Path(config_file).read_text()))
    assert settings.server_url is not None
    api = ApiClient(settings.server_url, settings.read_api_key())
    outbox = OutboxReporter(settings.state_dir, api, retry=FAST, idle_poll=0.1)
    outbox.start()
    spec = BackupSpec(**resolve_schedule(settings, config.schedule(schedule_id), config))
    result = run_backup(spec, outbox)
    outbox.flush(30)
    outbox.close()
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1], sys.argv[2]))
