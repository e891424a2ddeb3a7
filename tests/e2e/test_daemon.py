"""The daemon against the reference control plane: heartbeats, config sync, auth loss."""

from __future__ import annotations

import json
import sqlite3
import statistics
from pathlib import Path

from backupagent import __version__
from backupagent.config.hashing import config_hash
from backupagent.controlplane.testing import ServerHandle
from backupagent.exitcodes import ExitCode
from tests.e2e.conftest import Agent, wait_until

HB = "/api/v1/agent/heartbeat"
CFG = "/api/v1/agent/config"


def config_doc(tmp_path, cron: str = "0 3 * * *", sid: str = "sched-1") -> dict:
    return {
        "schedules": [
            {
                "id": sid,
                "databaseId": "db-1",
                "targetId": "tgt-1",
                "cron": cron,
                "timezone": "Europe/Berlin",
                "enabled": True,
                "database": {
                    "id": "db-1",
                    "dbType": "postgresql",
                    "host": "localhost",
                    "port": "5432",
                    "databaseName": "app",
                },
                "retention": {"keepLast": 7},
                "compression": {"algorithm": "zstd", "level": 3},
                "verification": {"enabled": False},
            }
        ],
        "targets": [{"id": "tgt-1", "type": "local", "path": str(tmp_path / "backups")}],
        "alertChannels": [],
    }


def agent_id(srv: ServerHandle) -> str:
    return srv.store.list_agents()[0]["agentId"]


def test_heartbeats_at_the_interval_with_the_bearer_key(
    agent: Agent, controlplane: ServerHandle, tmp_path
) -> None:
    key = agent.register(controlplane)
    proc = agent.start("run", "--heartbeat-interval", "0.5")
    wait_until(lambda: len(controlplane.store.list_requests(path=HB)) >= 8, 30, "8 heartbeats")
    assert agent.stop(proc) == 0
    beats = controlplane.store.list_requests(path=HB)
    assert all(b["method"] == "POST" and b["authValid"] and b["statusCode"] == 200 for b in beats)
    assert all(b["headers"]["content-type"] == "application/json" for b in beats)
    assert all(
        b["headers"]["user-agent"].startswith(f"backupagent/{__version__} (linux; ") for b in beats
    )
    gaps = [b2["receivedEpoch"] - b1["receivedEpoch"] for b1, b2 in zip(beats, beats[1:])]
    assert 0.4 < statistics.median(gaps) < 0.7, gaps
    assert all(0.3 < g < 1.5 for g in gaps[1:]), gaps
    body = beats[-1]["json"]
    assert set(body) == {"status", "agentVersion", "configHash", "discoveredDatabases"}
    assert body["status"] == "online" and body["agentVersion"] == __version__
    assert isinstance(body["discoveredDatabases"], list)
    log_text = Path(proc.log_path).read_text()  # type: ignore[attr-defined]
    assert key not in log_text


def test_config_pulled_at_start_and_when_changed(
    agent: Agent, controlplane: ServerHandle, tmp_path
) -> None:
    agent.register(controlplane)
    aid = agent_id(controlplane)
    first = config_doc(tmp_path)
    controlplane.store.set_config(aid, first)
    proc = agent.start("run", "--heartbeat-interval", "0.3")
    wait_until(lambda: controlplane.store.list_requests(path=CFG), 20, "first config pull")
    # After applying, the agent reports the config's hash and is told nothing changed.
    wait_until(
        lambda: any(
            b["json"]["configHash"] == config_hash(first)
            for b in controlplane.store.list_requests(path=HB)
        ),
        20,
        "hash",
    )
    n_pulls = len(controlplane.store.list_requests(path=CFG))
    wait_until(lambda: len(controlplane.store.list_requests(path=HB)) >= 6, 20, "beats")
    assert len(controlplane.store.list_requests(path=CFG)) == n_pulls  # no needless pulls

    second = config_doc(tmp_path, cron="*/30 * * * *", sid="sched-2")
    controlplane.store.set_config(aid, second)
    wait_until(
        lambda: any(
            b["json"]["configHash"] == config_hash(second)
            for b in controlplane.store.list_requests(path=HB)
        ),
        20,
        "new hash",
    )
    assert len(controlplane.store.list_requests(path=CFG)) == n_pulls + 1
    status = json.loads(agent.cli("status", "--json").stdout)
    assert [s["id"] for s in status["schedules"]] == ["sched-2"]
    assert status["schedules"][0]["cron"] == "*/30 * * * *"
    assert status["schedules"][0]["nextRun"]
    assert agent.stop(proc) == 0
    logs = agent.log_lines(proc)
    assert any(
        "sched-2" in str(line.get("msg")) and "added" in str(line.get("msg")) for line in logs
    )
    assert any(
        "sched-1" in str(line.get("msg")) and "removed" in str(line.get("msg")) for line in logs
    )


def test_invalid_config_is_rejected_and_the_last_good_one_stays(
    agent: Agent, controlplane: ServerHandle, tmp_path
) -> None:
    agent.register(controlplane)
    aid = agent_id(controlplane)
    good = config_doc(tmp_path)
    controlplane.store.set_config(aid, good)
    proc = agent.start("run", "--heartbeat-interval", "0.3")
    wait_until(
        lambda: any(
            b["json"]["configHash"] == config_hash(good)
            for b in controlplane.store.list_requests(path=HB)
        ),
        20,
        "good hash",
    )
    bad = config_doc(tmp_path, cron="61 * * * *")
    controlplane.store.set_config(aid, bad, check_items=False)
    wait_until(lambda: len(controlplane.store.list_requests(path=CFG)) >= 2, 20, "bad pull")
    wait_until(lambda: len(controlplane.store.list_requests(path=HB)) >= 10, 20, "more beats")
    assert controlplane.store.list_requests(path=HB)[-1]["json"]["configHash"] == config_hash(good)
    assert agent.stop(proc) == 0
    errors = [line for line in agent.log_lines(proc) if line.get("level") == "error"]
    assert any('schedules[0].cron: "61 * * * *"' in line["msg"] for line in errors), errors
    assert sum("rejected config" in line["msg"] for line in errors) == 1  # said once, not spammed
    status = json.loads(agent.cli("status", "--json").stdout)
    assert [s["cron"] for s in status["schedules"]] == ["0 3 * * *"]


def test_restart_while_control_plane_is_down_keeps_the_schedules(
    agent: Agent, controlplane: ServerHandle, tmp_path
) -> None:
    agent.register(controlplane)
    controlplane.store.set_config(agent_id(controlplane), config_doc(tmp_path))
    res = agent.cli("run", "--once", "--heartbeat-interval", "0.3")
    assert res.returncode in (0, 1), res.stderr  # the schedule's backup may fail: no database
    settings = agent.config_dir / "agent.yaml"
    text = settings.read_text().replace(controlplane.url, "http://127.0.0.1:9")
    settings.write_text(text)
    proc = agent.start("run", "--heartbeat-interval", "0.3")
    wait_until(
        lambda: any("heartbeat failed" in str(line.get("msg")) for line in agent.log_lines(proc)),
        30,
        "failed heartbeat",
    )
    status = json.loads(agent.cli("status", "--json").stdout)
    assert [s["id"] for s in status["schedules"]] == ["sched-1"]
    assert status["lastHeartbeat"]["ok"] is False
    assert agent.stop(proc) == 0
    assert any("last good config" in str(line.get("msg")) for line in agent.log_lines(proc))


def test_rejected_key_pauses_heartbeats_with_a_clear_message(
    agent: Agent, controlplane: ServerHandle
) -> None:
    agent.register(controlplane)
    proc = agent.start("run", "--heartbeat-interval", "0.2")
    wait_until(lambda: len(controlplane.store.list_requests(path=HB)) >= 2, 20, "beats")
    db = sqlite3.connect(controlplane.store.path)
    db.execute("UPDATE agents SET api_key_hash = 'revoked'")
    db.commit()
    db.close()
    wait_until(
        lambda: any(not r["authValid"] for r in controlplane.store.list_requests(path=HB)),
        20,
        "a rejected beat",
    )
    wait_until(
        lambda: any("re-register" in str(line.get("msg")) for line in agent.log_lines(proc)),
        20,
        "re-register message",
    )
    n = len(controlplane.store.list_requests(path=HB))
    import time

    time.sleep(2.0)  # ten intervals
    assert len(controlplane.store.list_requests(path=HB)) == n  # no hammering
    assert agent.stop(proc) == 0


def test_run_without_registration_says_how_to_register(agent: Agent) -> None:
    res = agent.cli("run", "--once")
    assert res.returncode == ExitCode.NOT_REGISTERED
    assert "backupagent register" in res.stderr and "--config-file" in res.stderr
