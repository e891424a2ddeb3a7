"""``backupagent-server`` admin commands (click's CliRunner) and ``serve`` as a real process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
import requests
from click.testing import CliRunner

from tests.servers import require

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
API = "/api/v1/agent"
TS = "2026-04-09T02:00:01.000Z"
CONFIG_YAML = """\
schedules:
  - id: s1
    databaseId: d1
    targetId: t1
    cron: "0 2 * * *"
    database: {id: d1, dbType: postgresql, host: localhost, port: "5432", databaseName: app}
targets:
  - id: t1
    type: local
    path: /var/backups/db
alertChannels: []
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Any]:
    require(find_spec("fastapi") is not None, "fastapi (pip install '.[server]')")
    from backupagent.controlplane.testing import running_server

    with running_server(tmp_path / "cp.db") as srv:
        yield srv


def cli(db: Path, *args: str, input: str = "") -> Any:
    from backupagent.controlplane.cli import main

    return CliRunner().invoke(main, [*args, "--db", str(db)], input=input, catch_exceptions=False)


def post(url: str, body: Any, key: str = "") -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return requests.post(url, json=body, headers=headers, timeout=10)


def register(server: Any, token: str) -> Dict[str, str]:
    body = {
        "registrationToken": token,
        "hostname": "db1",
        "os": "linux",
        "arch": "amd64",
        "agentVersion": "0.1.0",
    }
    r = post(server.url + API + "/register", body)
    assert r.status_code == 200, r.text
    return r.json()


def test_token_create_registers_once(server: Any, tmp_path: Path) -> None:
    db = tmp_path / "cp.db"
    result = cli(db, "token", "create", "--ttl", "30m")
    assert result.exit_code == 0, result.output
    token = result.stdout.splitlines()[0]  # click < 8.2 mixes stderr into stdout
    assert token.startswith("bart_") and "\n" not in token
    agent = register(server, token)
    r = post(
        server.url + API + "/register",
        {
            "registrationToken": token,
            "hostname": "x",
            "os": "linux",
            "arch": "amd64",
            "agentVersion": "1",
        },
    )
    assert r.status_code == 401
    listed = json.loads(cli(db, "token", "list", "--json").stdout)
    assert [(t["state"], t["usedByAgent"]) for t in listed] == [("used", agent["agentId"])]


def test_token_create_json_and_bad_ttl(tmp_path: Path) -> None:
    require(find_spec("fastapi") is not None, "fastapi")
    db = tmp_path / "cp.db"
    out = json.loads(cli(db, "token", "create", "--ttl", "7d", "--json").stdout)
    assert set(out) == {"token", "expiresAt"} and out["expiresAt"].endswith("Z")
    for bad in ("0", "-5m", "1w", "soon"):
        result = cli(db, "token", "create", "--ttl", bad)
        assert result.exit_code == 2 and "duration" in result.output, (bad, result.output)


def test_config_set_propagates_via_heartbeat(server: Any, tmp_path: Path) -> None:
    db = tmp_path / "cp.db"
    agent = register(server, server.create_token())
    hb_url = server.url + API + "/heartbeat"
    show = cli(db, "config", "show", "--agent", agent["agentId"], "--hash")
    empty_hash = show.stdout.strip()
    hb = {"status": "online", "agentVersion": "0.1.0", "configHash": empty_hash}
    assert post(hb_url, hb, agent["apiKey"]).json() == {"configChanged": False}

    cfg = tmp_path / "config.yaml"
    cfg.write_text(CONFIG_YAML, encoding="utf-8")
    result = cli(db, "config", "set", "--agent", agent["agentId"], str(cfg))
    assert result.exit_code == 0, result.output
    digest = result.stdout.split("configHash ")[1].split()[0]
    assert post(hb_url, hb, agent["apiKey"]).json() == {"configChanged": True}
    pulled = requests.get(
        server.url + API + "/config",
        headers={"Authorization": f"Bearer {agent['apiKey']}"},
        timeout=10,
    ).json()
    assert pulled["schedules"][0]["database"]["port"] == "5432"
    assert json.loads(cli(db, "config", "show", "--agent", agent["agentId"]).stdout) == pulled
    assert post(hb_url, {**hb, "configHash": digest}, agent["apiKey"]).json() == {
        "configChanged": False
    }
    rows = json.loads(cli(db, "agents", "list", "--json").stdout)
    assert [(r["agentId"], r["configInSync"]) for r in rows] == [(agent["agentId"], True)]
    assert agent["agentId"] in cli(db, "agents", "list").stdout

    # JSON documents are read as JSON (1e3 is a number, not YAML 1.1's string)
    as_json = tmp_path / "config.json"
    as_json.write_text(
        json.dumps({"schedules": [], "targets": [{"id": "t", "n": 1e3}], "alertChannels": []})
    )
    assert cli(db, "config", "set", "--agent", agent["agentId"], str(as_json)).exit_code == 0
    shown = json.loads(cli(db, "config", "show", "--agent", agent["agentId"]).stdout)
    assert shown["targets"][0]["n"] == 1000.0


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("[]", "document"),
        ("schedules: []\ntargets: []\n", "alertChannels"),
        ("schedules: {}\ntargets: []\nalertChannels: []\n", "schedules"),
        ("schedules: []\ntargets: [{type: local}]\nalertChannels: []\n", "targets[0].id"),
        ("schedules: [{id: a}, {id: a}]\ntargets: []\nalertChannels: []\n", "duplicate"),
        ("schedules: []\ntargets: []\nalertChannels: []\nextra: 1\n", "extra"),
        ("schedules: [\n", "not valid YAML"),
    ],
)
def test_config_set_rejects_bad_documents(
    server: Any, tmp_path: Path, content: str, problem: str
) -> None:
    db = tmp_path / "cp.db"
    agent = register(server, server.create_token())
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(content, encoding="utf-8")
    result = cli(db, "config", "set", "--agent", agent["agentId"], str(cfg))
    assert result.exit_code == 1 and problem in result.output, result.output
    assert server.store.get_config(agent["agentId"]) == {
        "schedules": [],
        "targets": [],
        "alertChannels": [],
    }


def test_config_commands_need_a_known_agent(tmp_path: Path) -> None:
    require(find_spec("fastapi") is not None, "fastapi")
    db = tmp_path / "cp.db"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG_YAML, encoding="utf-8")
    result = cli(db, "config", "set", "--agent", "nope", str(cfg))
    assert result.exit_code == 1 and "not registered" in result.output
    result = cli(db, "config", "show", "--agent", "nope")
    assert result.exit_code == 1 and "not registered" in result.output


def test_jobs_logs_anomalies_verifications_listings(server: Any, tmp_path: Path) -> None:
    db = tmp_path / "cp.db"
    agent = register(server, server.create_token())
    key = agent["apiKey"]
    base = server.url + API
    job = post(base + "/jobs/start", {"databaseId": "d1", "targetId": "t1"}, key).json()["jobId"]
    for body in (
        {"status": "dumping"},
        {"status": "uploading"},
        {
            "status": "completed",
            "dumpSize": 10,
            "compressedSize": 5,
            "uploadPath": "file:///b/x",
            "durationMs": 7,
        },
    ):
        assert post(base + f"/jobs/{job}/status", body, key).status_code == 200
    logs = [{"level": "warn", "message": "disk almost full", "timestamp": TS}]
    assert post(base + f"/jobs/{job}/logs", {"logs": logs}, key).status_code == 200
    check = {"checkType": "row_count", "checkName": "users", "status": "passed"}
    verification = {
        "status": "passed",
        "containerId": "c1",
        "restoreDurationMs": 9,
        "checks": [check],
    }
    assert post(base + f"/jobs/{job}/verification", verification, key).status_code == 200
    anomaly = {
        "type": "restore_failure",
        "severity": "critical",
        "title": "restore broke",
        "description": "x",
    }
    assert post(base + "/anomaly", anomaly, key).status_code == 200

    jobs: List[Dict[str, Any]] = json.loads(cli(db, "jobs", "list", "--json").stdout)
    assert [j["jobId"] for j in jobs] == [job]
    assert [h["status"] for h in jobs[0]["history"]] == ["dumping", "uploading", "completed"]
    assert json.loads(cli(db, "jobs", "list", "--agent", "other", "--json").stdout) == []
    text = cli(db, "jobs", "list", "--agent", agent["agentId"]).stdout
    assert "dumping > uploading > completed" in text and job in text

    out = cli(db, "logs", "--job", job).stdout
    assert out.strip() == f"{TS} WARN  disk almost full"
    assert json.loads(cli(db, "logs", "--job", job, "--json").stdout)[0]["level"] == "warn"
    assert cli(db, "logs", "--job", "nope").exit_code == 1

    anomalies = json.loads(cli(db, "anomalies", "list", "--json").stdout)
    assert [(a["type"], a["title"]) for a in anomalies] == [("restore_failure", "restore broke")]
    assert "restore broke" in cli(db, "anomalies", "list").stdout

    verifications = json.loads(cli(db, "verifications", "list", "--job", job, "--json").stdout)
    assert verifications[0]["checks"][0]["checkName"] == "users"
    assert "users=passed" in cli(db, "verifications", "list").stdout


def test_openapi_command_writes_the_document(tmp_path: Path) -> None:
    require(find_spec("fastapi") is not None, "fastapi")
    from backupagent.controlplane.cli import main
    from backupagent.controlplane.openapi import openapi_document

    out = tmp_path / "openapi.json"
    result = CliRunner().invoke(main, ["openapi", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text(encoding="utf-8") == openapi_document()


def test_serve_port_zero_prints_url_and_stops_on_sigint(tmp_path: Path) -> None:
    require(find_spec("uvicorn") is not None, "uvicorn (pip install '.[server]')")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    argv = [sys.executable, "-m", "backupagent.controlplane.cli", "serve"]
    argv += ["--db", str(tmp_path / "s.db"), "--port", "0", "--log-level", "warning"]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("backupagent-server listening on http://127.0.0.1:"), first
        url = first.split()[3]
        assert int(url.rsplit(":", 1)[1]) > 0
        r = requests.get(url + "/api/v1/health", timeout=10)
        assert r.json() == {"status": "ok"}
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
