"""A hostile or broken control plane: the agent never crashes and never follows it.

The server is real HTTP on loopback (tests/scripted_http.py) answering with
oversized, malformed, wrongly typed or deeply nested bodies, dangerous job ids
and huge configs. The client must turn each into an ApiError (or a value of the
right type); the daemon, run as the real CLI, must keep heartbeating with its
last good config, and a backup must never use a hostile job id in a path.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import psutil
import pytest

from backupagent.api.client import ApiClient
from backupagent.api.errors import ApiError
from backupagent.api.models import (
    AnomalyReport,
    HeartbeatRequest,
    JobStartRequest,
    JobStatusUpdate,
    LogEntry,
    RegisterRequest,
    SchemaSnapshotRequest,
    VerificationReport,
)
from backupagent.api.retry import RetryPolicy
from backupagent.config.hashing import config_hash
from tests.e2e.conftest import Agent, wait_until
from tests.scripted_http import Reply, ScriptedServer, Seen

KEY = "bak_hostile_test_key_0123456789"
ONE_TRY = RetryPolicy(max_attempts=1)

# ----------------------------------------------------------------- client level

CALLS: Dict[str, Callable[[ApiClient], Any]] = {
    "register": lambda c: c.register(RegisterRequest("tok", "h", "linux", "amd64", "1")),
    "heartbeat": lambda c: c.heartbeat(HeartbeatRequest("online", "1", "")),
    "config": lambda c: c.get_config(),
    "start": lambda c: c.start_job(JobStartRequest("d", "t")),
    "status": lambda c: c.update_job_status("j-1", JobStatusUpdate("dumping")),
    "verification": lambda c: c.submit_verification("j-1", VerificationReport("passed", "c", 1)),
    "logs": lambda c: c.upload_logs("j-1", [LogEntry("info", "m", "2024-01-01T00:00:00.000Z")]),
    "snapshot": lambda c: c.submit_schema_snapshot(SchemaSnapshotRequest("d", {}, 0, 0)),
    "anomaly": lambda c: c.report_anomaly(AnomalyReport("size_anomaly", "info", "t", "d")),
}
FIELDS = {
    "register": ("agentId", str),
    "heartbeat": ("configChanged", bool),
    "config": (None, dict),
    "start": ("jobId", str),
    "status": ("success", bool),
    "verification": ("verificationId", str),
    "logs": ("inserted", int),
    "snapshot": ("snapshotId", str),
    "anomaly": ("anomalyId", str),
}
DEEP = b"[" * 200_000 + b"]" * 200_000  # 400 kB: under the size limit, beyond the parser
BODIES: Dict[str, bytes] = {
    "empty-list": b"[]",
    "list": b'[{"configChanged": true}]',
    "string": b'"ok"',
    "null": b"null",
    "number": b"1e999",
    "html": b"<html>502 Bad Gateway</html>",
    "truncated": b'{"jobId": "j-',
    "bad-utf8": b'{"jobId": "\xff\xfe"}',
    "nan": b'{"configChanged": NaN, "success": NaN, "inserted": NaN}',
    "deep-array": DEEP,
    "deep-object": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "5000-digits": b'{"inserted": ' + b"9" * 5000 + b', "success": ' + b"9" * 5000 + b"}",
    "oversized": b'{"pad": "' + b"x" * (5 * 1024 * 1024) + b'"}',
}
WRONG_VALUES: List[Any] = [None, "", "x" * 100_000, 1, -1, 2**70, 1.5, True, [], {}, ["a"]]
HOSTILE_JOB_IDS = [
    "../../../../tmp/escape",
    "a/b",
    "..",
    ".",
    "%2e%2e",
    "j\n1",
    "j\x00",
    "$(touch /tmp/pwned)",
    "x" * 10_000,
    "\u202ej-1",
    "\u0458ob-1",  # Cyrillic je: a homoglyph of j
]


@pytest.fixture(scope="module")
def _shared_server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as srv:  # one server: each shutdown costs 0.5 s
        yield srv


@pytest.fixture
def server(_shared_server: ScriptedServer) -> ScriptedServer:
    _shared_server.replies.clear()
    _shared_server.seen.clear()
    _shared_server.default = None
    _shared_server.responder = None
    return _shared_server


def _client(srv: ScriptedServer) -> ApiClient:
    return ApiClient(srv.url, KEY, retry=ONE_TRY, sleep=lambda _s: None, timeout=(2.0, 5.0))


def _well_typed(name: str, value: Any) -> None:
    _field, kind = FIELDS[name]
    if name == "register":
        assert isinstance(value.agentId, str) and isinstance(value.apiKey, str)
    elif name == "heartbeat":
        assert isinstance(value.configChanged, bool)
    elif name == "logs":
        assert isinstance(value, int) and not isinstance(value, bool)
    elif name == "config":
        # Any JSON shape is handed to the config parser, which rejects it whole.
        from backupagent.config.parse import parse_config
        from backupagent.errors import ConfigInvalid

        if not isinstance(value, dict):
            with pytest.raises(ConfigInvalid):
                parse_config(value)
    else:
        assert isinstance(value, kind), (name, value)


@pytest.mark.parametrize("body", sorted(BODIES))
@pytest.mark.parametrize("call", sorted(CALLS))
def test_malformed_bodies_are_api_errors(server: ScriptedServer, call: str, body: str) -> None:
    server.default = Reply(200, BODIES[body])
    try:
        value = CALLS[call](_client(server))
    except ApiError as exc:
        assert len(str(exc)) < 1000 and "\n" not in str(exc)
    else:
        # Only GET /config may accept a body here (any JSON value: the config
        # layer validates it, see _well_typed); no other endpoint's field can
        # be read from these.
        assert call == "config", f"{call} accepted {body}: {value!r:.200}"
        _well_typed(call, value)


@pytest.mark.parametrize("call", sorted(c for c in CALLS if FIELDS[c][0]))
def test_every_response_field_with_every_wrong_type(server: ScriptedServer, call: str) -> None:
    field, _ = FIELDS[call]
    api = _client(server)
    for value in WRONG_VALUES:
        body = {field: value, "apiKey": value}
        server.default = Reply(200, body)
        try:
            got = CALLS[call](api)
        except ApiError:
            continue
        _well_typed(call, got)  # e.g. inserted = 2**70 is still an int


@pytest.mark.parametrize("job_id", HOSTILE_JOB_IDS)
def test_hostile_job_id_from_jobs_start_is_refused(server: ScriptedServer, job_id: str) -> None:
    server.default = Reply(200, {"jobId": job_id})
    with pytest.raises(ApiError, match="safe path segment") as info:
        _client(server).start_job(JobStartRequest("d", "t"))
    assert len(str(info.value)) < 300 and "\n" not in str(info.value)


def test_error_bodies_that_are_hostile_still_give_a_clean_error(server: ScriptedServer) -> None:
    for raw in (DEEP, b'{"error": ' + b"9" * 5000 + b"}", b"\xff" * 300, b"x\n" * 1000):
        server.default = Reply(400, raw)
        with pytest.raises(ApiError) as info:
            _client(server).heartbeat(HeartbeatRequest("online", "1", ""))
        assert "HTTP 400" in str(info.value) and len(str(info.value)) < 1000


# ----------------------------------------------------------------- the daemon


class Routes:
    """The scripted server as a minimal control plane, with swappable answers."""

    def __init__(self, config: Any) -> None:
        self.config: Any = config  # dict/list -> JSON; bytes -> raw body
        self.heartbeat: Optional[Reply] = None
        self.job_id: Any = "job-1"
        self.config_changed = True

    def __call__(self, seen: Seen) -> Reply:
        path = seen.path
        if path.endswith("/register"):
            return Reply(200, {"agentId": "agent-1", "apiKey": KEY})
        if path.endswith("/heartbeat"):
            if self.heartbeat is not None:
                return self.heartbeat
            hashed = seen.json().get("configHash")
            want = config_hash(self.config) if isinstance(self.config, dict) else "?"
            return Reply(200, {"configChanged": self.config_changed and hashed != want})
        if path.endswith("/config"):
            body = self.config
            return Reply(200, body if isinstance(body, bytes) else json.dumps(body).encode())
        if path.endswith("/jobs/start"):
            return Reply(200, {"jobId": self.job_id})
        if path.endswith("/status"):
            return Reply(200, {"success": True})
        if path.endswith("/logs"):
            return Reply(200, {"inserted": len(seen.json().get("logs", []))})
        if path.endswith("/schema-snapshot"):
            return Reply(200, {"snapshotId": "s-1"})
        if path.endswith("/anomaly"):
            return Reply(200, {"anomalyId": "n-1"})
        return Reply(404, {"error": "not_found", "message": path})


def _sqlite_db(path: Path) -> Path:
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1,'a');"
    )
    db.commit()
    db.close()
    return path


def _config(tmp: Path, cron: str = "0 3 * * *", n: int = 1) -> dict:
    return {
        "schedules": [
            {
                "id": f"s-{i}",
                "databaseId": "db-1",
                "targetId": "t-1",
                "cron": cron,
                "database": {"dbType": "sqlite", "databaseName": str(tmp / "app.db")},
            }
            for i in range(n)
        ],
        "targets": [{"id": "t-1", "type": "local", "path": str(tmp / "backups")}],
        "alertChannels": [],
    }


@pytest.fixture
def routed(tmp_path: Path) -> Iterator[tuple]:
    _sqlite_db(tmp_path / "app.db")
    routes = Routes(_config(tmp_path))
    agent = Agent(config_dir=tmp_path / "etc", state_dir=tmp_path / "state")
    with ScriptedServer() as srv:
        srv.responder = routes
        res = agent.cli("register", "--token", "-", "--server", srv.url, input="tok\n")
        assert res.returncode == 0, res.stderr
        yield srv, routes, agent
        for proc in agent.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


def _beats(srv: ScriptedServer) -> List[Seen]:
    return [s for s in list(srv.seen) if s.path.endswith("/heartbeat")]


def _pulls(srv: ScriptedServer) -> int:
    return sum(1 for s in list(srv.seen) if s.path.endswith("/config"))


def _last_hash(srv: ScriptedServer) -> str:
    beats = _beats(srv)
    return beats[-1].json()["configHash"] if beats else ""


def _log_text(proc: subprocess.Popen) -> str:
    return Path(proc.log_path).read_text()  # type: ignore[attr-defined]


HOSTILE_CONFIGS: Dict[str, Any] = {
    "a list": [{"schedules": []}],
    "a string": "schedules",
    "null": None,
    "deep nesting beyond the parser": DEEP,
    "deep nesting the parser takes": b'{"schedules": ' + b"[" * 900 + b"]" * 900 + b"}",
    "5000-digit number": b'{"schedules": [], "targets": [], "alertChannels": [], "x": '
    + b"9" * 5000
    + b"}",
    "oversized": b'{"schedules": [], "pad": "' + b"x" * (5 * 1024 * 1024) + b'"}',
    "malformed": b'{"schedules": [',
    "wrong types": {"schedules": {"id": "s"}, "targets": "t-1", "alertChannels": 7},
    "10 001 schedules": None,  # filled in by the test (needs tmp_path)
}


def test_daemon_survives_every_hostile_config_and_keeps_the_last_good_one(
    routed: tuple, tmp_path: Path
) -> None:
    srv, routes, agent = routed
    good = routes.config
    proc = agent.start("run", "--heartbeat-interval", "0.2")
    good_hash = config_hash(good)
    wait_until(lambda: _last_hash(srv) == good_hash, 30, "the good config applied")
    for name, body in HOSTILE_CONFIGS.items():
        if name == "10 001 schedules":
            body = _config(tmp_path, n=10_001)
        routes.config = body
        pulls = _pulls(srv)
        wait_until(lambda p=pulls: _pulls(srv) > p, 30, f"a pull of {name}")
        beats = len(_beats(srv))
        wait_until(lambda b=beats: len(_beats(srv)) >= b + 2, 30, f"beats after {name}")
        assert proc.poll() is None, f"agent died on {name}:\n{_log_text(proc)[-3000:]}"
        assert _last_hash(srv) == good_hash, name
    log_text = _log_text(proc)
    assert "Traceback" not in log_text, log_text[-3000:]
    assert "schedules: has 10001 entries; at most 10000 are allowed" in log_text
    assert agent.stop(proc) == 0
    status = json.loads(agent.cli("status", "--json").stdout)
    assert [s["id"] for s in status["schedules"]] == ["s-0"]


def test_hostile_heartbeat_answers_are_failed_beats_not_crashes(routed: tuple) -> None:
    srv, routes, agent = routed
    proc = agent.start("run", "--heartbeat-interval", "0.2")
    wait_until(lambda: _last_hash(srv) == config_hash(routes.config), 30, "config applied")
    for body in [b"[]", {"configChanged": "yes"}, {"configChanged": None}, DEEP, b"\xff", {}]:
        routes.heartbeat = Reply(200, body)
        n = len(_beats(srv))
        wait_until(lambda n=n: len(_beats(srv)) >= n + 2, 30, f"beats with {body!r:.30}")
        assert proc.poll() is None
    pulls = _pulls(srv)
    routes.heartbeat = None
    time.sleep(0.6)
    assert _pulls(srv) == pulls  # a garbage answer never counted as configChanged
    assert agent.stop(proc) == 0
    text = _log_text(proc)
    assert "Traceback" not in text and "heartbeat failed" in text


def test_ten_thousand_schedules_apply_in_bounded_time_and_memory(
    routed: tuple, tmp_path: Path
) -> None:
    srv, routes, agent = routed
    proc = agent.start("run", "--heartbeat-interval", "0.5")
    wait_until(lambda: _last_hash(srv) == config_hash(routes.config), 30, "first config")
    big = _config(tmp_path, n=10_000)
    routes.config = big
    started = time.monotonic()
    wait_until(lambda: _last_hash(srv) == config_hash(big), 120, "10 000 schedules applied")
    elapsed = time.monotonic() - started
    rss_mb = psutil.Process(proc.pid).memory_info().rss / 2**20
    n = len(_beats(srv))
    wait_until(lambda: len(_beats(srv)) >= n + 3, 30, "steady heartbeats")
    assert proc.poll() is None
    assert elapsed < 60, elapsed
    assert rss_mb < 400, rss_mb
    assert agent.stop(proc, timeout=60) == 0
    print(f"10 000 schedules: applied in {elapsed:.1f}s, agent RSS {rss_mb:.0f} MB")


def _files_named(root: Path, needle: str) -> List[Path]:
    return [Path(d, n) for d, dirs, files in os.walk(root) for n in dirs + files if needle in n]


@pytest.mark.parametrize(
    "job_id",
    ["../../../../escape-dir", "a/escape-dir", "x" * 5000],
    ids=["dotdot", "slash", "5000-chars"],
)
def test_hostile_job_id_is_never_followed(routed: tuple, tmp_path: Path, job_id: str) -> None:
    srv, routes, agent = routed
    routes.job_id = job_id
    res = agent.cli("run", "--once", timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    # the backup ran under its local (outbox) id and is stored in the target
    objects = list((tmp_path / "backups").rglob("*.zst"))
    assert len(objects) == 1, objects
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f-]{36}\.sqlite\.zst", objects[0].name), objects
    # nothing was created or requested under the hostile id
    assert not _files_named(tmp_path, "escape-dir") and not _files_named(Path("/tmp"), "escape-dir")
    assert all(".." not in s.path and "escape" not in s.path for s in srv.seen)
    assert all(len(s.path) < 300 for s in srv.seen)
    assert "not a safe path segment" in res.stderr


def test_sigterm_still_stops_a_daemon_fed_garbage(routed: tuple) -> None:
    srv, routes, agent = routed
    routes.config = DEEP
    routes.heartbeat = Reply(200, DEEP)
    proc = agent.start("run", "--heartbeat-interval", "0.1")
    wait_until(lambda: len(_beats(srv)) >= 5, 30, "beats")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
