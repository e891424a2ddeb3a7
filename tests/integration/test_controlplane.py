"""The reference control plane over real HTTP: every endpoint, every validation rule.

Runs the server in-process (``running_server``) on a free 127.0.0.1 port and
talks to it with ``requests``, as an agent would.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import uuid
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import pytest
import requests

from tests.servers import require

pytestmark = pytest.mark.integration

API = "/api/v1/agent"
TS = "2026-04-09T02:00:01.000Z"
EMPTY_HASH = hashlib.sha256(b'{"alertChannels":[],"schedules":[],"targets":[]}').hexdigest()


class Api:
    """A thin agent-side client: the bodies are written out by hand, as the reference shows."""

    def __init__(self, base: str, key: Optional[str] = None) -> None:
        self.base = base
        self.key = key
        self.session = requests.Session()

    def headers(self, key: Optional[str] = None) -> Dict[str, str]:
        h = {"User-Agent": "backupagent/0.1.0 (linux; amd64)", "Accept": "application/json"}
        key = key if key is not None else self.key
        if key:
            h["Authorization"] = f"Bearer {key}"
        return h

    def post(self, path: str, body: Any, **kw: Any) -> requests.Response:
        headers = {**self.headers(kw.pop("key", None)), **kw.pop("headers", {})}
        return self.session.post(self.base + API + path, json=body, headers=headers, timeout=10)

    def get(self, path: str, **kw: Any) -> requests.Response:
        headers = {**self.headers(kw.pop("key", None)), **kw.pop("headers", {})}
        return self.session.get(self.base + API + path, headers=headers, timeout=10)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Any]:
    require(find_spec("fastapi") is not None, "fastapi (pip install '.[server]')")
    require(find_spec("uvicorn") is not None, "uvicorn (pip install '.[server]')")
    from backupagent.controlplane.testing import running_server

    with running_server(tmp_path / "cp.db") as srv:
        yield srv


def register(srv: Any, hostname: str = "db1") -> Api:
    api = Api(srv.url)
    body = {
        "registrationToken": srv.create_token(),
        "hostname": hostname,
        "os": "linux",
        "arch": "amd64",
        "agentVersion": "0.1.0",
    }
    r = api.post("/register", body)
    assert r.status_code == 200, r.text
    api.key = r.json()["apiKey"]
    api.agent_id = r.json()["agentId"]  # type: ignore[attr-defined]
    return api


@pytest.fixture
def agent(server: Any) -> Api:
    return register(server)


def start_job(api: Api) -> str:
    r = api.post("/jobs/start", {"databaseId": str(uuid.uuid4()), "targetId": str(uuid.uuid4())})
    assert r.status_code == 200, r.text
    return r.json()["jobId"]


COMPLETED = {
    "status": "completed",
    "dumpSize": 1234567,
    "compressedSize": 456789,
    "uploadPath": "s3://bucket/path/x.zst.age",
    "durationMs": 8500,
}
FAILED = {"status": "failed", "errorCode": "DUMP_FAIL", "errorMessage": "boom", "durationMs": 10}


def completed_job(api: Api) -> str:
    job = start_job(api)
    r = api.post(f"/jobs/{job}/status", COMPLETED)
    assert r.status_code == 200, r.text
    return job


def assert_error(r: requests.Response, status: int, error: str, mentions: str = "") -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "message"}, body
    assert body["error"] == error, body
    assert mentions in body["message"], body


# -- happy path, all nine endpoints ---------------------------------------------


def test_health(server: Any) -> None:
    r = requests.get(server.url + "/api/v1/health", timeout=5)
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_register_returns_id_and_key_and_stores_only_the_hash(server: Any, tmp_path: Path) -> None:
    api = Api(server.url)
    token = server.create_token()
    r = api.post(
        "/register",
        {
            "registrationToken": token,
            "hostname": "db1.example",
            "os": "linux",
            "arch": "arm64",
            "agentVersion": "1.0.0",
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"agentId", "apiKey"}
    assert uuid.UUID(body["agentId"])
    assert re.fullmatch(r"bak_[A-Za-z0-9_-]{32,}", body["apiKey"])
    agent = server.store.get_agent(body["agentId"])
    assert (agent["hostname"], agent["os"], agent["arch"], agent["agentVersion"]) == (
        "db1.example",
        "linux",
        "arm64",
        "1.0.0",
    )
    assert server.store.agent_id_for_key(body["apiKey"]) == body["agentId"]
    # neither the key nor the token is anywhere in the database files
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("cp.db*"))
    assert body["apiKey"].encode() not in raw
    assert token.encode() not in raw
    assert hashlib.sha256(body["apiKey"].encode()).hexdigest().encode() in raw


def test_heartbeat_config_and_config_changed(server: Any, agent: Api) -> None:
    # no config stored: the empty doc, with its hash; "" (nothing applied yet) differs
    r = agent.get("/config")
    assert r.status_code == 200 and r.json() == {
        "schedules": [],
        "targets": [],
        "alertChannels": [],
    }
    hb = {"status": "online", "agentVersion": "0.1.0", "configHash": "", "discoveredDatabases": []}
    r = agent.post("/heartbeat", hb)
    assert r.status_code == 200 and r.json() == {"configChanged": True}
    r = agent.post("/heartbeat", {**hb, "configHash": EMPTY_HASH})
    assert r.json() == {"configChanged": False}
    # the reference's own minimal heartbeat: no configHash means "nothing applied"
    r = agent.post("/heartbeat", {"status": "online", "agentVersion": "1.0.0"})
    assert r.status_code == 200 and r.json() == {"configChanged": True}

    doc = {
        "schedules": [
            {
                "id": "s1",
                "databaseId": "d1",
                "targetId": "t1",
                "cron": "0 2 * * *",
                "timezone": "Europe/Zürich",
                "database": {"id": "d1", "dbType": "postgresql", "port": "5432"},
                "extra": {"ratio": 1.5, "n": None},
            }
        ],
        "targets": [{"id": "t1", "type": "local", "path": "/backups"}],
        "alertChannels": [],
    }
    digest = server.store.set_config(agent.agent_id, doc)
    r = agent.post("/heartbeat", {**hb, "configHash": EMPTY_HASH})
    assert r.json() == {"configChanged": True}
    r = agent.get("/config")
    assert r.status_code == 200
    pulled = r.json()
    assert pulled == doc
    # the agent's side of the contract: hash of the canonical JSON of what it pulled
    canonical = json.dumps(pulled, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert hashlib.sha256(canonical.encode("utf-8")).hexdigest() == digest
    r = agent.post("/heartbeat", {**hb, "configHash": digest})
    assert r.json() == {"configChanged": False}
    row = server.store.get_agent(agent.agent_id)
    assert row["reportedConfigHash"] == digest and row["configInSync"] is True


def test_heartbeat_stores_discovered_databases_and_history(server: Any, agent: Api) -> None:
    dbs = [
        {
            "dbType": "postgresql",
            "dbVersion": "16.2",
            "host": "localhost",
            "port": "5432",
            "databaseName": "myapp",
        },
        {
            "dbType": "redis",
            "dbVersion": "7.0.15",
            "host": "127.0.0.1",
            "port": "6379",
            "databaseName": "0",
        },
    ]
    body = {
        "status": "online",
        "agentVersion": "0.2.0",
        "configHash": "",
        "discoveredDatabases": dbs,
    }
    assert agent.post("/heartbeat", body).status_code == 200
    assert server.store.discovered_databases(agent.agent_id) == dbs
    # omitted list: keep the last one; empty list: clear it
    assert agent.post("/heartbeat", {"status": "degraded", "agentVersion": "0.2.0"}).ok
    assert server.store.discovered_databases(agent.agent_id) == dbs
    assert agent.post("/heartbeat", {**body, "discoveredDatabases": []}).ok
    assert server.store.discovered_databases(agent.agent_id) == []
    beats = server.store.list_heartbeats(agent.agent_id)
    assert [b["status"] for b in beats] == ["online", "degraded", "online"]
    row = server.store.get_agent(agent.agent_id)
    assert row["agentVersion"] == "0.2.0" and row["lastStatus"] == "online"
    assert row["lastHeartbeatAt"]


def test_job_lifecycle_verification_logs(server: Any, agent: Api) -> None:
    db_id, target_id, schedule_id = (str(uuid.uuid4()) for _ in range(3))
    r = agent.post(
        "/jobs/start", {"databaseId": db_id, "targetId": target_id, "scheduleId": schedule_id}
    )
    assert r.status_code == 200 and set(r.json()) == {"jobId"}
    job = r.json()["jobId"]
    assert uuid.UUID(job)
    for stage in ("dumping", "compressing", "encrypting", "uploading"):
        r = agent.post(f"/jobs/{job}/status", {"status": stage})
        assert r.status_code == 200 and r.json() == {"success": True}, r.text
    assert agent.post(f"/jobs/{job}/status", COMPLETED).json() == {"success": True}
    row = server.store.get_job(job)
    assert row["status"] == "completed"
    assert (row["databaseId"], row["targetId"], row["scheduleId"]) == (
        db_id,
        target_id,
        schedule_id,
    )
    assert (row["dumpSize"], row["compressedSize"], row["durationMs"]) == (1234567, 456789, 8500)
    assert row["uploadPath"] == COMPLETED["uploadPath"]
    assert [h["status"] for h in row["history"]] == [
        "dumping",
        "compressing",
        "encrypting",
        "uploading",
        "completed",
    ]
    assert row["history"][-1]["body"] == COMPLETED

    verification = {
        "status": "passed",
        "containerId": "docker-id",
        "restoreDurationMs": 3200,
        "checks": [
            {
                "checkType": "row_count",
                "checkName": "users table",
                "status": "passed",
                "expectedValue": "1000",
                "actualValue": "1000",
                "deltaPct": 0.0,
            },
            {
                "checkType": "schema_match",
                "checkName": "public",
                "status": "skipped",
                "deltaPct": 0,
            },
        ],
    }
    r = agent.post(f"/jobs/{job}/verification", verification)
    assert r.status_code == 200 and set(r.json()) == {"verificationId"}, r.text
    [stored] = server.store.list_verifications(job)
    assert stored["verificationId"] == r.json()["verificationId"]
    assert stored["checks"][0]["checkName"] == "users table"
    assert stored["checks"][1]["deltaPct"] == 0.0 and stored["checks"][1]["actualValue"] is None

    logs = [{"level": "info", "message": f"line {i}", "timestamp": TS} for i in range(100)]
    r = agent.post(f"/jobs/{job}/logs", {"logs": logs})
    assert r.status_code == 200 and r.json() == {"inserted": 100}
    r = agent.post(
        f"/jobs/{job}/logs", {"logs": [{"level": "warn", "message": "é", "timestamp": TS}]}
    )
    assert r.json() == {"inserted": 1}
    stored_logs = server.store.job_logs(job)
    assert [e["message"] for e in stored_logs] == [f"line {i}" for i in range(100)] + ["é"]


def test_failed_job(server: Any, agent: Api) -> None:
    job = start_job(agent)
    assert agent.post(f"/jobs/{job}/status", {"status": "dumping"}).ok
    assert agent.post(f"/jobs/{job}/status", FAILED).json() == {"success": True}
    row = server.store.get_job(job)
    assert (row["status"], row["errorCode"], row["errorMessage"]) == ("failed", "DUMP_FAIL", "boom")


def test_schema_snapshot_and_anomaly(server: Any, agent: Api) -> None:
    snapshot = {
        "tables": [
            {
                "schema": "public",
                "name": "users",
                "columns": [
                    {"name": "id", "type": "integer", "nullable": False, "default": None},
                    {"name": "email", "type": "text", "nullable": False, "default": None},
                ],
                "primaryKey": ["id"],
                "indexes": [],
            },
            {"schema": "public", "name": "t", "columns": [{"name": "x", "type": "int"}]},
        ]
    }
    body = {"databaseId": "d1", "snapshot": snapshot, "tableCount": 2, "columnCount": 3}
    r = agent.post("/schema-snapshot", body)
    assert r.status_code == 200 and set(r.json()) == {"snapshotId"}, r.text
    [stored] = server.store.list_schema_snapshots(agent.agent_id)
    assert stored["snapshot"] == snapshot and stored["snapshotId"] == r.json()["snapshotId"]

    anomaly = {
        "type": "size_anomaly",
        "severity": "warning",
        "title": "Backup size 60% smaller than average",
        "description": "Expected ~2.4 GB, got 312 MB",
    }
    r = agent.post("/anomaly", anomaly)
    assert r.status_code == 200 and set(r.json()) == {"anomalyId"}, r.text
    [stored_anomaly] = server.store.list_anomalies(agent.agent_id)
    assert {k: stored_anomaly[k] for k in anomaly} == anomaly


# -- registration tokens --------------------------------------------------------


def reg_body(token: str, **over: Any) -> Dict[str, Any]:
    return {
        "registrationToken": token,
        "hostname": "h",
        "os": "linux",
        "arch": "amd64",
        "agentVersion": "0.1.0",
        **over,
    }


def test_token_is_one_time(server: Any) -> None:
    api = Api(server.url)
    token = server.create_token()
    assert api.post("/register", reg_body(token)).status_code == 200
    r = api.post("/register", reg_body(token, hostname="second"))
    assert_error(r, 401, "invalid_token", "already been used")
    assert [a["hostname"] for a in server.store.list_agents()] == ["h"]


def test_expired_token_is_rejected_and_writes_nothing(server: Any) -> None:
    token = server.store.create_registration_token(ttl_seconds=0.2)
    time.sleep(0.4)
    r = Api(server.url).post("/register", reg_body(token))
    assert_error(r, 401, "invalid_token", "expired")
    assert server.store.list_agents() == []
    assert [t["state"] for t in server.store.list_registration_tokens()] == ["expired"]


def test_unknown_token_is_rejected(server: Any) -> None:
    r = Api(server.url).post("/register", reg_body("bart_not-a-real-token"))
    assert_error(r, 401, "invalid_token", "not valid")
    assert server.store.list_agents() == []


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"os": "Linux"}, "os"),
        ({"arch": "x86_64"}, "arch"),
        ({"hostname": ""}, "hostname"),
        ({"agentVersion": 1}, "agentVersion"),
        ({"registrationToken": None}, "registrationToken"),
        ({"hostName": "typo"}, "hostName"),
    ],
)
def test_register_validation_does_not_consume_the_token(
    server: Any, over: Dict[str, Any], field: str
) -> None:
    api = Api(server.url)
    token = server.create_token()
    assert_error(api.post("/register", reg_body(token, **over)), 400, "bad_request", field)
    body = reg_body(token)
    del body["arch"]
    assert_error(api.post("/register", body), 400, "bad_request", "arch")
    assert server.store.list_agents() == []
    assert api.post("/register", reg_body(token)).status_code == 200


# -- auth -----------------------------------------------------------------------

AUTHED = [
    ("POST", "/heartbeat", {"status": "online", "agentVersion": "1.0.0"}),
    ("GET", "/config", None),
    ("POST", "/jobs/start", {"databaseId": "d", "targetId": "t"}),
    ("POST", "/jobs/JOB/status", {"status": "dumping"}),
    (
        "POST",
        "/jobs/JOB/verification",
        {"status": "passed", "containerId": "c", "restoreDurationMs": 1, "checks": []},
    ),
    ("POST", "/jobs/JOB/logs", {"logs": [{"level": "info", "message": "m", "timestamp": TS}]}),
    (
        "POST",
        "/schema-snapshot",
        {"databaseId": "d", "snapshot": {"tables": []}, "tableCount": 0, "columnCount": 0},
    ),
    (
        "POST",
        "/anomaly",
        {"type": "schema_drift", "severity": "info", "title": "t", "description": "d"},
    ),
]


@pytest.mark.parametrize(("method", "path", "body"), AUTHED, ids=[a[1] for a in AUTHED])
@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer not_a_bak_key",
        "Bearer bak_unknownkeyunknownkeyunknownkey12",
    ],
    ids=["missing", "basic", "empty", "not-bak", "unknown"],
)
def test_auth_required(
    server: Any, agent: Api, method: str, path: str, body: Any, authorization: Optional[str]
) -> None:
    job = completed_job(agent)  # a real job, so only auth can be the reason for the 401
    url = server.url + API + path.replace("JOB", job)
    headers = {"Authorization": authorization} if authorization else {}
    r = requests.request(method, url, json=body, headers=headers, timeout=10)
    assert_error(r, 401, "unauthorized")
    assert r.headers.get("WWW-Authenticate") == "Bearer"
    # and the same request with the key succeeds (the 401 was about auth alone)
    if path != "/jobs/JOB/status":  # the job is terminal: a status would be 409
        ok = requests.request(method, url, json=body, headers=agent.headers(), timeout=10)
        assert ok.status_code == 200, ok.text


def test_auth_is_checked_before_the_body(server: Any) -> None:
    r = Api(server.url).post(
        "/heartbeat", {"bogus": True}, key="bak_wrongwrongwrongwrongwrongwrong12"
    )
    assert_error(r, 401, "unauthorized")


# -- validation -----------------------------------------------------------------

BAD_BODIES = [
    ("/heartbeat", {"status": "online"}, "agentVersion"),
    ("/heartbeat", {"status": "online", "agentVersion": 1}, "agentVersion"),
    ("/heartbeat", {"status": "online", "agentVersion": "1", "configHash": "abc123"}, "configHash"),
    ("/heartbeat", {"status": "online", "agentVersion": "1", "configHash": "A" * 64}, "configHash"),
    (
        "/heartbeat",
        {
            "status": "online",
            "agentVersion": "1",
            "discoveredDatabases": [
                {
                    "dbType": "redis",
                    "dbVersion": "7",
                    "host": "h",
                    "port": 6379,
                    "databaseName": "0",
                }
            ],
        },
        "discoveredDatabases[0].port",
    ),
    (
        "/heartbeat",
        {"status": "online", "agentVersion": "1", "discovered_databases": []},
        "discovered_databases",
    ),
    ("/heartbeat", [], "body"),
    ("/jobs/start", {"databaseId": "d"}, "targetId"),
    ("/jobs/start", {"databaseId": 5, "targetId": "t"}, "databaseId"),
    ("/jobs/start", {"databaseId": "d", "targetId": "t", "scheduleId": 7}, "scheduleId"),
    ("/jobs/JOB/status", {"status": "done"}, "status"),
    ("/jobs/JOB/status", {}, "status"),
    ("/jobs/JOB/status", {"status": "dumping", "dumpSize": "12"}, "dumpSize"),
    ("/jobs/JOB/status", {"status": "dumping", "dumpSize": -1}, "dumpSize"),
    ("/jobs/JOB/status", {"status": "dumping", "durationMs": 1.5}, "durationMs"),
    ("/jobs/JOB/status", {"status": "dumping", "dumpSize": True}, "dumpSize"),
    ("/jobs/JOB/status", {**COMPLETED, "uploadPath": None}, "uploadPath"),
    ("/jobs/JOB/status", {**COMPLETED, "dumpSize": None}, "dumpSize"),
    ("/jobs/JOB/status", {"status": "failed", "durationMs": 1, "errorMessage": "x"}, "errorCode"),
    ("/jobs/JOB/status", {**FAILED, "errorCode": "dump fail"}, "errorCode"),
    ("/jobs/JOB/status", {**COMPLETED, "uploadPath": "bucket/path"}, "uploadPath"),
    (
        "/jobs/JOB/verification",
        {"status": "ok", "containerId": "c", "restoreDurationMs": 1, "checks": []},
        "status",
    ),
    (
        "/jobs/JOB/verification",
        {"status": "passed", "containerId": "c", "restoreDurationMs": 1},
        "checks",
    ),
    (
        "/jobs/JOB/verification",
        {"status": "passed", "containerId": "c", "restoreDurationMs": "1", "checks": []},
        "restoreDurationMs",
    ),
    (
        "/jobs/JOB/verification",
        {
            "status": "passed",
            "containerId": "c",
            "restoreDurationMs": 1,
            "checks": [{"checkType": "rowcount", "checkName": "t", "status": "passed"}],
        },
        "checks[0].checkType",
    ),
    (
        "/jobs/JOB/verification",
        {
            "status": "passed",
            "containerId": "c",
            "restoreDurationMs": 1,
            "checks": [{"checkType": "row_count", "checkName": "t", "status": "ok"}],
        },
        "checks[0].status",
    ),
    (
        "/jobs/JOB/verification",
        {
            "status": "passed",
            "containerId": "c",
            "restoreDurationMs": 1,
            "checks": [
                {"checkType": "row_count", "checkName": "t", "status": "passed", "deltaPct": "0"}
            ],
        },
        "checks[0].deltaPct",
    ),
    (
        "/jobs/JOB/verification",
        {
            "status": "passed",
            "containerId": "c",
            "restoreDurationMs": 1,
            "checks": [
                {
                    "checkType": "row_count",
                    "checkName": "t",
                    "status": "passed",
                    "expectedValue": 1000,
                }
            ],
        },
        "checks[0].expectedValue",
    ),
    ("/jobs/JOB/logs", {"logs": []}, "logs"),
    ("/jobs/JOB/logs", {}, "logs"),
    (
        "/jobs/JOB/logs",
        {"logs": [{"level": "debug", "message": "m", "timestamp": TS}]},
        "logs[0].level",
    ),
    (
        "/jobs/JOB/logs",
        {"logs": [{"level": "info", "message": "m", "timestamp": "yesterday"}]},
        "logs[0].timestamp",
    ),
    (
        "/jobs/JOB/logs",
        {"logs": [{"level": "info", "message": "m", "timestamp": "2026-04-09 02:00:01.000Z"}]},
        "logs[0].timestamp",
    ),
    (
        "/jobs/JOB/logs",
        {"logs": [{"level": "info", "message": "m", "timestamp": "2026-02-30T02:00:01.000Z"}]},
        "logs[0].timestamp",
    ),
    (
        "/jobs/JOB/logs",
        {"logs": [{"level": "info", "message": "m", "timestamp": 1712628001}]},
        "logs[0].timestamp",
    ),
    ("/jobs/JOB/logs", {"logs": [{"level": "info", "timestamp": TS}]}, "logs[0].message"),
    (
        "/schema-snapshot",
        {"databaseId": "d", "snapshot": {"tables": []}, "tableCount": 1, "columnCount": 0},
        "tableCount",
    ),
    (
        "/schema-snapshot",
        {
            "databaseId": "d",
            "snapshot": {"tables": [{"name": "t", "columns": [{}]}]},
            "tableCount": 1,
            "columnCount": 2,
        },
        "columnCount",
    ),
    (
        "/schema-snapshot",
        {"databaseId": "d", "snapshot": {}, "tableCount": 0, "columnCount": 0},
        "snapshot.tables",
    ),
    (
        "/schema-snapshot",
        {"databaseId": "d", "snapshot": [], "tableCount": 0, "columnCount": 0},
        "snapshot",
    ),
    ("/anomaly", {"type": "size", "severity": "info", "title": "t", "description": "d"}, "type"),
    (
        "/anomaly",
        {"type": "size_anomaly", "severity": "high", "title": "t", "description": "d"},
        "severity",
    ),
    ("/anomaly", {"type": "size_anomaly", "severity": "info", "description": "d"}, "title"),
]


@pytest.mark.parametrize(("path", "body", "field"), BAD_BODIES)
def test_validation_400_names_the_field(
    server: Any, agent: Api, path: str, body: Any, field: str
) -> None:
    job = start_job(agent)
    r = agent.post(path.replace("JOB", job), body)
    assert_error(r, 400, "bad_request", field)
    assert server.store.get_job(job)["history"] == []
    assert server.store.job_logs(job) == []


def test_101_logs_rejected_and_none_stored(server: Any, agent: Api) -> None:
    job = start_job(agent)
    logs = [{"level": "info", "message": "m", "timestamp": TS}] * 101
    assert_error(agent.post(f"/jobs/{job}/logs", {"logs": logs}), 400, "bad_request", "logs")
    assert server.store.job_logs(job) == []


def test_invalid_json_is_400(server: Any, agent: Api) -> None:
    r = requests.post(
        server.url + API + "/heartbeat",
        data=b'{"status": "online",',
        headers={**agent.headers(), "Content-Type": "application/json"},
        timeout=10,
    )
    assert_error(r, 400, "bad_request", "JSON")


def test_non_json_content_type_is_415(server: Any, agent: Api) -> None:
    r = requests.post(
        server.url + API + "/heartbeat",
        data=b"status=online",
        headers={**agent.headers(), "Content-Type": "application/x-www-form-urlencoded"},
        timeout=10,
    )
    assert_error(r, 415, "unsupported_media_type", "application/json")


def test_body_over_1_mib_is_413(server: Any, agent: Api) -> None:
    body = {"type": "schema_drift", "severity": "info", "title": "t", "description": "d"}
    text = json.dumps(body)
    at_limit = text + " " * (1024 * 1024 - len(text))
    headers = {**agent.headers(), "Content-Type": "application/json"}
    url = server.url + API + "/anomaly"
    r = requests.post(url, data=at_limit.encode(), headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    r = requests.post(url, data=(at_limit + " ").encode(), headers=headers, timeout=10)
    assert_error(r, 413, "payload_too_large")
    assert len(server.store.list_anomalies()) == 1


def test_unknown_path_and_method(server: Any, agent: Api) -> None:
    assert_error(agent.get("/nope"), 404, "not_found")
    assert_error(agent.get("/heartbeat"), 405, "method_not_allowed")


# -- job state --------------------------------------------------------------------


@pytest.mark.parametrize("terminal", [COMPLETED, FAILED], ids=["completed", "failed"])
@pytest.mark.parametrize(
    "after", [{"status": "uploading"}, COMPLETED, FAILED], ids=["stage", "completed", "failed"]
)
def test_status_after_terminal_is_409(
    server: Any, agent: Api, terminal: Dict[str, Any], after: Dict[str, Any]
) -> None:
    job = start_job(agent)
    assert agent.post(f"/jobs/{job}/status", terminal).status_code == 200
    assert_error(agent.post(f"/jobs/{job}/status", after), 409, "conflict", terminal["status"])
    row = server.store.get_job(job)
    assert row["status"] == terminal["status"] and len(row["history"]) == 1


def test_stage_may_skip_and_repeat_but_not_go_back(server: Any, agent: Api) -> None:
    job = start_job(agent)
    for stage in ("dumping", "compressing", "compressing", "uploading"):  # no encrypting
        assert agent.post(f"/jobs/{job}/status", {"status": stage}).status_code == 200
    assert_error(
        agent.post(f"/jobs/{job}/status", {"status": "dumping"}), 409, "conflict", "backwards"
    )


def test_verification_needs_a_completed_job(server: Any, agent: Api) -> None:
    job = start_job(agent)
    body = {"status": "error", "containerId": "", "restoreDurationMs": 0, "checks": []}
    assert_error(agent.post(f"/jobs/{job}/verification", body), 409, "conflict", "completed")
    assert agent.post(f"/jobs/{job}/status", FAILED).ok
    assert_error(agent.post(f"/jobs/{job}/verification", body), 409, "conflict")
    assert server.store.list_verifications() == []


@pytest.mark.parametrize(
    ("suffix", "body"),
    [
        ("status", {"status": "dumping"}),
        (
            "verification",
            {"status": "passed", "containerId": "c", "restoreDurationMs": 1, "checks": []},
        ),
        ("logs", {"logs": [{"level": "info", "message": "m", "timestamp": TS}]}),
    ],
)
def test_unknown_or_foreign_job_is_404(server: Any, agent: Api, suffix: str, body: Any) -> None:
    other = register(server, hostname="other")
    foreign = completed_job(other)
    for job in (str(uuid.uuid4()), "not-a-uuid", foreign):
        assert_error(agent.post(f"/jobs/{job}/{suffix}", body), 404, "not_found")
    row = server.store.get_job(foreign)
    assert len(row["history"]) == 1 and server.store.job_logs(foreign) == []
    assert server.store.list_verifications(foreign) == []


# -- request log --------------------------------------------------------------------


def test_requests_are_recorded_without_secrets(server: Any, agent: Api) -> None:
    token = server.create_token()
    Api(server.url).post("/register", reg_body(token))
    agent.post("/heartbeat", {"status": "online", "agentVersion": "0.1.0", "configHash": ""})
    agent.get("/config", key="bak_wrongwrongwrongwrongwrongwrong12")
    reqs = server.store.list_requests()
    reg = [q for q in reqs if q["path"] == API + "/register"][-1]
    assert reg["json"]["registrationToken"] == "<redacted>" and token not in reg["body"]
    assert reg["authPresent"] is False and reg["statusCode"] == 200
    hb = server.store.list_requests(path=API + "/heartbeat")[-1]
    assert hb["method"] == "POST" and hb["authValid"] is True and hb["agentId"] == agent.agent_id
    assert hb["headers"]["user-agent"] == "backupagent/0.1.0 (linux; amd64)"
    assert hb["headers"]["content-type"] == "application/json"
    assert hb["headers"]["authorization"] == "Bearer <redacted>"
    assert hb["json"] == {"status": "online", "agentVersion": "0.1.0", "configHash": ""}
    bad = server.store.list_requests(path=API + "/config")[-1]
    assert bad["authPresent"] is True and bad["authValid"] is False and bad["statusCode"] == 401
    everything = json.dumps(server.store.list_requests())
    assert agent.key not in everything and token not in everything


def test_concurrent_agents(server: Any) -> None:
    agents = [register(server, hostname=f"h{i}") for i in range(4)]
    errors: list = []

    def work(api: Api) -> None:
        try:
            for _ in range(10):
                r = api.post(
                    "/heartbeat", {"status": "online", "agentVersion": "1", "configHash": ""}
                )
                assert r.status_code == 200, r.text
                job = start_job(api)
                assert api.post(f"/jobs/{job}/status", FAILED).status_code == 200
        except Exception as exc:  # collected: assert in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(a,)) for a in agents]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    for a in agents:
        assert len(server.store.list_jobs(a.agent_id)) == 10
        assert len(server.store.list_heartbeats(a.agent_id)) == 10


# -- fault injection (for the agent's retry tests) ---------------------------------


def test_injected_faults_fail_the_next_requests_then_clear(server: Any, agent: Api) -> None:
    hb = {"status": "online", "agentVersion": "1", "configHash": ""}
    server.faults.add("/heartbeat", 503, times=2, retry_after="2")
    for _ in range(2):
        r = agent.post("/heartbeat", hb)
        assert r.status_code == 503 and r.headers["Retry-After"] == "2"
        assert r.json()["error"] == "injected"
    assert agent.post("/heartbeat", hb).status_code == 200
    assert [q["statusCode"] for q in server.store.list_requests(path=API + "/heartbeat")] == [
        503,
        503,
        200,
    ]
    assert len(server.store.list_heartbeats(agent.agent_id)) == 1  # failed ones never reached it

    server.faults.add("/config", None, delay=0.6, method="GET")
    started = time.monotonic()
    assert agent.get("/config").status_code == 200
    assert time.monotonic() - started >= 0.6
    with pytest.raises(requests.exceptions.ReadTimeout):
        server.faults.add("/config", None, delay=2.0)
        agent.session.get(server.url + API + "/config", headers=agent.headers(), timeout=0.5)
    server.faults.add("/anomaly", 429, times=5)
    server.faults.clear()
    body = {"type": "schema_drift", "severity": "info", "title": "t", "description": "d"}
    assert agent.post("/anomaly", body).status_code == 200
