"""ApiClient over real HTTP against a scripted loopback server."""

from __future__ import annotations

import time
from typing import Iterator, List, Optional

import pytest

from backupagent import __version__
from backupagent.api.client import ApiClient, check_server_url
from backupagent.api.errors import (
    ApiError,
    AuthRejected,
    PermanentApiError,
    TransientApiError,
    Unreachable,
)
from backupagent.api.models import (
    AnomalyReport,
    DiscoveredDatabase,
    HeartbeatRequest,
    JobStartRequest,
    JobStatusUpdate,
    LogEntry,
    RegisterRequest,
    SchemaSnapshotRequest,
    VerificationCheck,
    VerificationReport,
)
from backupagent.api.retry import RetryPolicy
from backupagent.errors import AgentError
from tests.scripted_http import Reply, ScriptedServer
from tests.servers import free_port

KEY = "bak_test_key_0123456789abcdef"


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as srv:
        yield srv


def client(srv: ScriptedServer, sleeps: Optional[List[float]] = None, **kw) -> ApiClient:  # type: ignore[assignment]
    recorded = sleeps if sleeps is not None else []
    return ApiClient(srv.url, KEY, sleep=recorded.append, **kw)


def test_every_endpoint_path_method_headers_and_body(server: ScriptedServer) -> None:
    server.script(
        Reply(body={"agentId": "a-1", "apiKey": "bak_new_key_abcdefghijkl"}),
        Reply(body={"configChanged": True}),
        Reply(body={"schedules": [], "targets": [], "alertChannels": []}),
        Reply(body={"jobId": "j-1"}),
        Reply(body={"success": True}),
        Reply(body={"verificationId": "v-1"}),
        Reply(body={"inserted": 1}),
        Reply(body={"snapshotId": "s-1"}),
        Reply(body={"anomalyId": "n-1"}),
    )
    api = client(server)
    reg = api.register(RegisterRequest("tok_secret", "db1", "linux", "amd64", __version__))
    assert (reg.agentId, reg.apiKey) == ("a-1", "bak_new_key_abcdefghijkl")
    db = DiscoveredDatabase("postgresql", "16.2", "localhost", "5432", "myapp")
    assert api.heartbeat(HeartbeatRequest("online", __version__, "abc", [db])).configChanged
    assert api.get_config() == {"schedules": [], "targets": [], "alertChannels": []}
    assert api.start_job(JobStartRequest("d", "t", "s")) == "j-1"
    assert (
        api.update_job_status(
            "j-1",
            JobStatusUpdate(
                "completed", dumpSize=10, compressedSize=5, uploadPath="s3://b/k", durationMs=8
            ),
        )
        is True
    )
    check = VerificationCheck("row_count", "users table", "passed", "1000", "1000", 0.0)
    assert api.submit_verification("j-1", VerificationReport("passed", "c", 3200, [check])) == "v-1"
    entry = LogEntry("info", "Starting backup...", "2026-04-09T02:00:01.000Z")
    assert api.upload_logs("j-1", [entry]) == 1
    assert api.submit_schema_snapshot(SchemaSnapshotRequest("d", {"tables": []}, 0, 0)) == "s-1"
    assert api.report_anomaly(AnomalyReport("size_anomaly", "warning", "t", "d")) == "n-1"

    calls = [(s.method, s.path) for s in server.seen]
    assert calls == [
        ("POST", "/api/v1/agent/register"),
        ("POST", "/api/v1/agent/heartbeat"),
        ("GET", "/api/v1/agent/config"),
        ("POST", "/api/v1/agent/jobs/start"),
        ("POST", "/api/v1/agent/jobs/j-1/status"),
        ("POST", "/api/v1/agent/jobs/j-1/verification"),
        ("POST", "/api/v1/agent/jobs/j-1/logs"),
        ("POST", "/api/v1/agent/schema-snapshot"),
        ("POST", "/api/v1/agent/anomaly"),
    ]
    register, heartbeat = server.seen[0], server.seen[1]
    assert "Authorization" not in register.headers
    assert register.json() == {
        "registrationToken": "tok_secret",
        "hostname": "db1",
        "os": "linux",
        "arch": "amd64",
        "agentVersion": __version__,
    }
    for seen in server.seen[1:]:
        assert seen.headers["Authorization"] == f"Bearer {KEY}"
    for seen in server.seen:
        assert seen.headers["Accept"] == "application/json"
        assert seen.headers["User-Agent"].startswith(f"backupagent/{__version__} (linux; ")
        if seen.method == "POST":
            assert seen.headers["Content-Type"] == "application/json"
    assert heartbeat.json() == {
        "status": "online",
        "agentVersion": __version__,
        "configHash": "abc",
        "discoveredDatabases": [
            {
                "dbType": "postgresql",
                "dbVersion": "16.2",
                "host": "localhost",
                "port": "5432",
                "databaseName": "myapp",
            }
        ],
    }
    status = server.seen[4].json()
    assert status == {
        "status": "completed",
        "dumpSize": 10,
        "compressedSize": 5,
        "uploadPath": "s3://b/k",
        "durationMs": 8,
    }
    assert server.seen[3].json() == {"databaseId": "d", "targetId": "t", "scheduleId": "s"}
    assert server.seen[6].json() == {
        "logs": [
            {
                "level": "info",
                "message": "Starting backup...",
                "timestamp": "2026-04-09T02:00:01.000Z",
            }
        ]
    }


def test_logs_are_sent_in_batches_of_at_most_100(server: ScriptedServer) -> None:
    server.script(
        Reply(body={"inserted": 100}), Reply(body={"inserted": 100}), Reply(body={"inserted": 50})
    )
    entries = [LogEntry("info", f"line {i}", "2026-04-09T02:00:01.000Z") for i in range(250)]
    assert client(server).upload_logs("j-9", entries) == 250
    assert [len(s.json()["logs"]) for s in server.seen] == [100, 100, 50]


def test_transient_errors_are_retried_with_backoff(server: ScriptedServer) -> None:
    server.script(
        Reply(503, {"error": "unavailable", "message": "maintenance"}),
        Reply(502, b"bad gateway"),
        Reply(body={"configChanged": False}),
    )
    sleeps: List[float] = []
    api = client(server, sleeps, retry=RetryPolicy(base=1.0, cap=10.0, max_attempts=5))
    assert api.heartbeat(HeartbeatRequest("online", "1", "")).configChanged is False
    assert len(server.seen) == 3
    assert len(sleeps) == 2 and 0 <= sleeps[0] <= 1.0 and 0 <= sleeps[1] <= 2.0


def test_retry_after_is_honoured(server: ScriptedServer) -> None:
    server.script(
        Reply(429, {"error": "rate_limited", "message": "slow down"}, headers={"Retry-After": "7"}),
        Reply(body={"configChanged": False}),
    )
    sleeps: List[float] = []
    client(server, sleeps).heartbeat(HeartbeatRequest("online", "1", ""))
    assert sleeps == [7.0]


def test_retries_give_up_with_the_servers_message(server: ScriptedServer) -> None:
    server.default = Reply(500, {"error": "internal", "message": "database is on fire"})
    sleeps: List[float] = []
    with pytest.raises(TransientApiError, match="database is on fire") as err:
        client(server, sleeps, retry=RetryPolicy(max_attempts=3)).get_config()
    assert err.value.status == 500
    assert len(server.seen) == 3 and len(sleeps) == 2


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failures_are_fatal_and_not_retried(server: ScriptedServer, status: int) -> None:
    server.default = Reply(status, {"error": "unauthorized", "message": "invalid API key"})
    with pytest.raises(AuthRejected, match="invalid API key"):
        client(server).heartbeat(HeartbeatRequest("online", "1", ""))
    assert len(server.seen) == 1


@pytest.mark.parametrize("status", [400, 404, 409, 413, 422])
def test_client_errors_are_permanent(server: ScriptedServer, status: int) -> None:
    server.default = Reply(status, {"error": "bad_request", "message": "status: bogus"})
    with pytest.raises(PermanentApiError, match="status: bogus"):
        client(server).update_job_status("j", JobStatusUpdate("dumping"))
    assert len(server.seen) == 1


def test_unreachable_server_is_reported_as_such() -> None:
    port = free_port()
    sleeps: List[float] = []
    api = ApiClient(
        f"http://127.0.0.1:{port}", KEY, sleep=sleeps.append, retry=RetryPolicy(max_attempts=2)
    )
    with pytest.raises(Unreachable, match="cannot reach"):
        api.get_config()
    assert len(sleeps) == 1


def test_read_timeout_does_not_hang(server: ScriptedServer) -> None:
    server.default = Reply(200, {"configChanged": False}, delay=2.0)
    api = client(server, retry=RetryPolicy(max_attempts=1), timeout=(1.0, 0.3))
    started = time.monotonic()
    with pytest.raises(Unreachable, match="no answer"):
        api.heartbeat(HeartbeatRequest("online", "1", ""))
    assert time.monotonic() - started < 1.5


def test_malformed_and_incomplete_responses_are_errors(server: ScriptedServer) -> None:
    server.script(
        Reply(200, b"<html>not json"),
        Reply(200, {"agentId": "x"}),
        Reply(200, {"configChanged": "yes"}),
        Reply(200, {"jobId": ""}),
    )
    api = client(server)
    with pytest.raises(ApiError, match="not JSON"):
        api.get_config()
    with pytest.raises(ApiError, match="apiKey"):
        api.register(RegisterRequest("t", "h", "linux", "amd64", "1"))
    with pytest.raises(ApiError, match="configChanged"):
        api.heartbeat(HeartbeatRequest("online", "1", ""))
    with pytest.raises(ApiError, match="jobId"):
        api.start_job(JobStartRequest("d", "t"))


def test_oversized_response_is_refused(server: ScriptedServer) -> None:
    server.default = Reply(200, b"[" + b"1," * (3 * 1024 * 1024) + b"1]")
    with pytest.raises(PermanentApiError, match="exceeds"):
        client(server).get_config()


def test_hostile_job_ids_never_reach_the_url(server: ScriptedServer) -> None:
    api = client(server)
    for bad in ["../heartbeat", "a/b", "", "..", "x?y=1", "j\n1"]:
        with pytest.raises(ApiError, match="safe path segment"):
            api.update_job_status(bad, JobStatusUpdate("dumping"))
    assert server.seen == []


def test_api_key_never_appears_in_error_messages(server: ScriptedServer) -> None:
    server.default = Reply(400, {"error": "bad", "message": f"you sent {KEY}"})
    with pytest.raises(PermanentApiError) as err:
        client(server).get_config()
    assert KEY not in str(err.value)


@pytest.mark.parametrize(
    "url",
    ["ftp://x", "backupagent.ai", "http://example.com", "https://h/?q=1", "http://10.0.0.5:8080"],
)
def test_server_url_rules(url: str) -> None:
    with pytest.raises(AgentError):
        check_server_url(url)


def test_server_url_accepts_https_and_loopback_http() -> None:
    assert check_server_url("https://backupagent.ai/") == "https://backupagent.ai"
    assert check_server_url("http://127.0.0.1:8080") == "http://127.0.0.1:8080"
    assert check_server_url("http://localhost:1") == "http://localhost:1"
    assert check_server_url("http://[::1]:9") == "http://[::1]:9"
    assert check_server_url("http://example.com", insecure_http=True) == "http://example.com"
