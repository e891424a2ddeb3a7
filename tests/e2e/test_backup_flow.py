"""Scheduled backups end to end: agent process ↔ reference control plane ↔ real
PostgreSQL ↔ local target, restored afterwards with stock tools only."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from backupagent.controlplane.testing import ServerHandle
from backupagent.crypto.age import generate_identity
from tests.e2e.conftest import Agent
from tests.servers import require_binary


def _write_credentials(agent: Agent, pg) -> None:  # type: ignore[no-untyped-def]
    agent.config_dir.mkdir(parents=True, exist_ok=True)
    path = agent.config_dir / "credentials.yaml"
    path.write_text(
        yaml.safe_dump(
            {"databases": {"db-1": {"user": pg.server.user, "password": pg.server.password}}}
        )
    )
    path.chmod(0o600)


def _config(pg, backups: Path, recipients: list) -> dict:  # type: ignore[no-untyped-def]
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
                "retention": {"keepLast": 5},
            }
        ],
        "targets": [
            {
                "id": "tgt-1",
                "type": "local",
                "path": str(backups),
                "encryption": {"recipients": recipients},
            }
        ],
        "alertChannels": [],
    }


def _restore_with_stock_tools(obj: Path, key_file: Path, pg, dbname: str) -> None:  # type: ignore[no-untyped-def]
    require_binary("age", "apt-get install age")
    require_binary("zstd", "apt-get install zstd")
    pg.server.create_database(dbname)
    env = pg.server.env(dbname)
    pg_restore = str(Path(pg.server.bin_dir) / "pg_restore")
    age = subprocess.Popen(["age", "-d", "-i", str(key_file), str(obj)], stdout=subprocess.PIPE)
    zstd = subprocess.Popen(["zstd", "-d", "-q"], stdin=age.stdout, stdout=subprocess.PIPE)
    assert age.stdout is not None
    age.stdout.close()
    restore = subprocess.run(
        [pg_restore, "--no-owner", "--exit-on-error", "-d", dbname],
        stdin=zstd.stdout,
        env=env,
        capture_output=True,
        check=False,
    )
    assert zstd.wait() == 0 and age.wait() == 0
    assert restore.returncode == 0, restore.stderr


def _table_digest(pg, dbname: str, table: str) -> str:  # type: ignore[no-untyped-def]
    return pg.server.psql(
        f"SELECT count(*) || ':' || md5(string_agg(t::text, ',' ORDER BY t::text)) FROM {table} t",
        dbname,
    ).strip()


def test_scheduled_backup_reports_every_stage_and_restores_with_stock_tools(
    agent: Agent, controlplane: ServerHandle, pg_database, tmp_path: Path
) -> None:
    identity = generate_identity()
    key_file = tmp_path / "key.txt"
    key_file.write_text(identity.secret + "\n")
    key_file.chmod(0o600)
    agent.register(controlplane)
    _write_credentials(agent, pg_database)
    backups = tmp_path / "backups"
    agent_id = controlplane.store.list_agents()[0]["agentId"]
    controlplane.store.set_config(agent_id, _config(pg_database, backups, [identity.recipient]))

    res = agent.cli("run", "--once")
    assert res.returncode == 0, res.stderr

    jobs = controlplane.store.list_jobs()
    assert len(jobs) == 1
    job = jobs[0]
    statuses = [h["status"] for h in job["history"]]
    assert statuses == ["dumping", "compressing", "encrypting", "uploading", "completed"]
    final = job["history"][-1]["body"]
    objects = sorted(p for p in backups.rglob("*.dump.zst.age"))
    assert len(objects) == 1
    obj = objects[0]
    assert final["uploadPath"] == f"file://{obj}"
    assert final["dumpSize"] > 0 and final["compressedSize"] > 0 and final["durationMs"] >= 0
    manifest = json.loads(Path(str(obj) + ".manifest.json").read_text())
    assert manifest["rowCounts"] == {"public.customers": 10, "public.orders": 25}
    assert manifest["sizes"]["dump"] == final["dumpSize"]
    logs = controlplane.store.job_logs(job["jobId"])
    assert logs and all(entry["level"] in ("info", "warn", "error") for entry in logs)
    assert any("Starting backup" in entry["message"] for entry in logs)
    assert pg_database.server.password not in json.dumps(logs)
    assert pg_database.server.password not in res.stderr + res.stdout

    snapshots = controlplane.store.list_schema_snapshots()
    assert len(snapshots) == 1
    assert (snapshots[0]["tableCount"], snapshots[0]["columnCount"]) == (2, 6)
    assert manifest["schemaHash"]

    _restore_with_stock_tools(obj, key_file, pg_database, pg_database.name + "_r")
    for table in ("customers", "orders"):
        assert _table_digest(pg_database, pg_database.name, table) == _table_digest(
            pg_database, pg_database.name + "_r", table
        )

    # A second --once right away: nothing is due.
    res = agent.cli("run", "--once")
    assert res.returncode == 0
    assert len(controlplane.store.list_jobs()) == 1


def test_failed_dump_is_reported_failed_and_commits_nothing(
    agent: Agent, controlplane: ServerHandle, pg_database, tmp_path: Path
) -> None:
    agent.register(controlplane)
    _write_credentials(agent, pg_database)
    backups = tmp_path / "backups"
    doc = _config(pg_database, backups, [])
    doc["schedules"][0]["database"]["databaseName"] = "no_such_database"
    agent_id = controlplane.store.list_agents()[0]["agentId"]
    controlplane.store.set_config(agent_id, doc)
    res = agent.cli("run", "--once")
    assert res.returncode == 1
    job = controlplane.store.list_jobs()[0]
    final = job["history"][-1]["body"]
    assert final["status"] == "failed"
    assert final["errorCode"] in ("DB_NOT_FOUND", "DUMP_FAIL")
    assert "no_such_database" in final["errorMessage"]
    assert not list(backups.rglob("*.zst*")) if backups.exists() else True


def test_standalone_run_records_jobs_locally(agent: Agent, pg_database, tmp_path: Path) -> None:
    _write_credentials(agent, pg_database)
    metrics = tmp_path / "textfile" / "backupagent.prom"
    metrics.parent.mkdir()
    (agent.config_dir / "agent.yaml").write_text(f"metricsFile: {metrics}\n")
    cfg = tmp_path / "backups.yaml"
    cfg.write_text(yaml.safe_dump(_config(pg_database, tmp_path / "backups", [])))
    res = agent.cli("run", "--once", "--config-file", str(cfg))
    assert res.returncode == 0, res.stderr
    records = list((agent.state_dir / "jobs").glob("*.json"))
    assert len(records) == 1
    doc = json.loads(records[0].read_text())
    # Unencrypted target: no "encrypting" stage, and a warning in the log.
    assert [s["status"] for s in doc["statuses"]] == [
        "dumping",
        "compressing",
        "uploading",
        "completed",
    ]
    assert any("UNENCRYPTED" in line["message"] for line in doc["logs"])
    listing = json.loads(agent.cli("list", f"file://{tmp_path / 'backups'}", "--json").stdout)
    assert len(listing["backups"]) == 1 and not listing["backups"][0]["encrypted"]
    text = metrics.read_text()
    label = f'database="{pg_database.name}",db_type="postgresql"'
    assert f"backupagent_backup_last_status{{{label}}} 1" in text, text
    assert f"backupagent_backup_last_success_timestamp_seconds{{{label}}}" in text


def test_truncated_table_is_an_anomaly_reported_and_alerted(
    agent: Agent, controlplane: ServerHandle, pg_database, tmp_path: Path
) -> None:
    from tests.scripted_http import Reply, ScriptedServer

    agent.register(controlplane)
    _write_credentials(agent, pg_database)
    with ScriptedServer() as hook:
        hook.default = Reply(200, {"ok": True})
        doc = _config(pg_database, tmp_path / "backups", [])
        doc["alertChannels"] = [
            {"id": "hook", "type": "webhook", "events": ["anomaly"], "url": hook.url + "/alerts"}
        ]
        agent_id = controlplane.store.list_agents()[0]["agentId"]
        controlplane.store.set_config(agent_id, doc)
        assert agent.cli("run", "--once").returncode == 0  # pulls config, first backup
        pg_database.psql("TRUNCATE orders")
        res = agent.cli("backup", "--schedule", "sched-1")
        assert res.returncode == 0, res.stderr
        anomalies = controlplane.store.list_anomalies()
        assert any(
            a["type"] == "size_anomaly"
            and a["severity"] == "critical"
            and "orders" in a["title"]
            and "25" in a["title"]
            for a in anomalies
        ), anomalies
        posted = [s.json() for s in hook.seen if s.path == "/alerts"]
        assert any(
            p.get("event") == "anomaly" and "orders" in p.get("title", "") for p in posted
        ), posted
    jobs = controlplane.store.list_jobs()
    assert len(jobs) == 2 and all(j["status"] == "completed" for j in jobs)


def test_scheduled_backup_is_verified_in_docker_and_reported(
    agent: Agent,
    controlplane: ServerHandle,
    pg_database,
    tmp_path: Path,
    docker_engine,
    postgres_image: str,
) -> None:  # type: ignore[no-untyped-def]
    from backupagent.verify.container import LABEL

    identity = generate_identity()
    key_file = tmp_path / "key.txt"
    key_file.write_text(identity.secret + "\n")
    key_file.chmod(0o600)
    agent.register(controlplane)
    _write_credentials(agent, pg_database)
    settings = agent.config_dir / "agent.yaml"
    doc = yaml.safe_load(settings.read_text())
    doc["verification"] = {"identityFile": str(key_file)}
    settings.write_text(yaml.safe_dump(doc))
    cfg = _config(pg_database, tmp_path / "backups", [identity.recipient])
    cfg["schedules"][0]["verification"] = {
        "enabled": True,
        "image": postgres_image,
        "checks": [
            {"checkType": "row_count"},
            {"checkType": "schema_match"},
            {
                "checkType": "custom_query",
                "checkName": "orders total",
                "query": "SELECT count(*) FROM orders",
                "expectedValue": "26",
            },
        ],
    }
    agent_id = controlplane.store.list_agents()[0]["agentId"]
    controlplane.store.set_config(agent_id, cfg)

    res = agent.cli("run", "--once", timeout=600)
    assert res.returncode == 0, res.stderr  # the backup itself completed
    job = controlplane.store.list_jobs()[0]
    assert job["status"] == "completed"
    verifications = controlplane.store.list_verifications(job["jobId"])
    assert len(verifications) == 1
    v = verifications[0]
    assert v["status"] == "failed" and v["containerId"] and v["restoreDurationMs"] > 0
    checks = {(c["checkType"], c["checkName"]): c for c in v["checks"]}
    assert checks[("row_count", "public.orders")]["status"] == "passed"
    assert checks[("row_count", "public.orders")]["actualValue"] == "25"
    assert checks[("custom_query", "orders total")]["status"] == "failed"
    assert (
        checks[("custom_query", "orders total")]["expectedValue"],
        checks[("custom_query", "orders total")]["actualValue"],
    ) == ("26", "25")
    assert any(c["checkType"] == "schema_match" and c["status"] == "passed" for c in v["checks"])
    left = docker_engine.client.containers.list(all=True, filters={"label": f"{LABEL}=true"})
    assert left == []


def test_host_without_the_key_verifies_from_its_local_spool(
    agent: Agent,
    controlplane: ServerHandle,
    pg_database,
    tmp_path: Path,
    docker_engine,
    postgres_image: str,
) -> None:  # type: ignore[no-untyped-def]
    identity = generate_identity()  # the secret half never reaches the agent
    agent.register(controlplane)
    _write_credentials(agent, pg_database)
    cfg = _config(pg_database, tmp_path / "backups", [identity.recipient])
    cfg["schedules"][0]["verification"] = {"enabled": True, "image": postgres_image}
    controlplane.store.set_config(controlplane.store.list_agents()[0]["agentId"], cfg)
    res = agent.cli("run", "--once", timeout=600)
    assert res.returncode == 0, res.stderr
    job = controlplane.store.list_jobs()[0]
    v = controlplane.store.list_verifications(job["jobId"])[0]
    assert v["status"] == "passed", v
    assert any("local-spool" in e["message"] for e in controlplane.store.job_logs(job["jobId"]))
    assert not list((agent.state_dir / "spool").rglob("*.zst"))  # the copy is gone
