"""Fault injection at the job level: a real backup (the shipped CLI as a
subprocess) meets a real fault, and each test asserts the job's outcome, its
errorCode and message (no secret), that nothing half-written was committed and
that no resource is left behind.

The table these tests prove is in docs/reliability.md ("Fault injection").
Faults already covered elsewhere (control plane down, 500s on delivery, 401,
kill -9, SIGTERM, pipeline-level pg_dump kill) are not repeated here.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import psutil
import pytest
import yaml

from tests.e2e.conftest import Agent, wait_until
from tests.servers import free_port, require

pytestmark = pytest.mark.e2e


# --- helpers -----------------------------------------------------------------


def _credentials(agent: Agent, pg: Any, password: Optional[str] = None) -> None:
    agent.config_dir.mkdir(parents=True, exist_ok=True)
    creds = agent.config_dir / "credentials.yaml"
    pw = pg.server.password if password is None else password
    creds.write_text(
        yaml.safe_dump({"databases": {"db-1": {"user": pg.server.user, "password": pw}}})
    )
    creds.chmod(0o600)


def _schedule(pg: Any, *, port: Optional[int] = None, level: int = 3) -> Dict[str, Any]:
    return {
        "id": "s",
        "databaseId": "db-1",
        "targetId": "t",
        "cron": "0 3 * * *",
        "database": {
            "id": "db-1",
            "dbType": "postgresql",
            "host": "127.0.0.1",
            "port": str(port or pg.server.port),
            "databaseName": pg.name,
        },
        "compression": {"algorithm": "zstd", "level": level},
    }


def _write_config(
    tmp_path: Path, schedule: Dict[str, Any], target: Dict[str, Any], **extra: Any
) -> Path:
    cfg = tmp_path / "backups.yaml"
    schedule = {**schedule, **extra}
    cfg.write_text(
        yaml.safe_dump(
            {"schedules": [schedule], "targets": [{"id": "t", **target}], "alertChannels": []}
        )
    )
    return cfg


def _local(path: Path) -> Dict[str, Any]:
    return {"type": "local", "path": str(path)}


def _table(pg: Any, rows: int, random_text: bool = True) -> None:
    """Rows of random hex (does not compress away) or repetitive text (slow at level 19)."""
    value = (
        "md5(random()::text) || md5(random()::text) || md5(random()::text)"
        if random_text
        else "md5(g::text) || repeat('x', 200)"
    )
    pg.psql(f"CREATE TABLE big AS SELECT g AS id, {value} AS v FROM generate_series(1, {rows}) g")


def _backup_argv(cfg: Path) -> List[str]:
    return [
        sys.executable,
        "-m",
        "backupagent",
        "backup",
        "--schedule",
        "s",
        "--config-file",
        str(cfg),
        "--json",
    ]


def _backup(agent: Agent, cfg: Path, timeout: float = 180, **env: str) -> Dict[str, Any]:
    """``backupagent backup --schedule s --json``: the result document (and the exit code)."""
    res = subprocess.run(
        _backup_argv(cfg),
        capture_output=True,
        text=True,
        env={**agent.env(), **env},
        timeout=timeout,
        check=False,
    )
    return _result(res.stdout, res.stderr, res.returncode)


def _result(stdout: str, stderr: str, rc: int) -> Dict[str, Any]:
    """The ``--json`` document printed on stdout, with the exit code and all output."""
    start = stdout.find("{")
    assert start >= 0, f"no JSON result (rc {rc}): {stdout}\n{stderr}"
    doc, _ = json.JSONDecoder().raw_decode(stdout[start:])
    doc["_rc"], doc["_out"] = rc, stdout + stderr
    return dict(doc)


def _job_record(agent: Agent) -> Dict[str, Any]:
    records = list((agent.state_dir / "jobs").glob("*.json"))
    assert len(records) == 1, records
    return json.loads(records[0].read_text())


def _assert_failed(agent: Agent, doc: Dict[str, Any], codes: tuple, secret: str = "") -> str:
    """The CLI and the job record agree: failed with one of ``codes``; no secret shown."""
    assert doc["status"] == "failed" and doc["_rc"] != 0, doc
    assert doc["errorCode"] in codes, doc
    final = _job_record(agent)["statuses"][-1]
    assert final["status"] == "failed" and final["errorCode"] == doc["errorCode"], final
    assert final["errorMessage"] == doc["errorMessage"]
    if secret:
        assert secret not in doc["_out"]
        assert secret not in json.dumps(_job_record(agent))
    return str(doc["errorMessage"])


def _files(root: Path) -> List[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def _assert_no_leftovers(agent: Agent, target: Optional[Path] = None) -> None:
    if target is not None:
        assert _files(target) == [], "a failed backup left files in the target"
    spool = agent.state_dir / "spool"
    assert not list(spool.iterdir()) if spool.exists() else True
    running = agent.state_dir / "running"
    assert not list(running.glob("*.json")) if running.exists() else True
    assert not _children_named("pg_dump")


def _children_named(name: str) -> List[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name", "ppid"]):
        with contextlib.suppress(psutil.Error):
            if proc.info["name"] == name and proc.info["ppid"] == os.getpid():
                found.append(proc)
    return found


@contextlib.contextmanager
def _tmpfs(path: Path, size: str = "2m") -> Iterator[Path]:
    """A small tmpfs at ``path``, always unmounted."""
    require(os.geteuid() == 0, "mounting a tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    require(res.returncode == 0, f"cannot mount a tmpfs: {res.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


# --- the database ------------------------------------------------------------


def test_database_port_closed_is_db_unreachable(
    agent: Agent, pg_database: Any, tmp_path: Path
) -> None:
    _credentials(agent, pg_database)
    backups = tmp_path / "backups"
    cfg = _write_config(tmp_path, _schedule(pg_database, port=free_port()), _local(backups))
    started = time.monotonic()
    doc = _backup(agent, cfg, timeout=120)
    message = _assert_failed(agent, doc, ("DB_UNREACHABLE",), pg_database.server.password)
    assert "127.0.0.1" in message
    assert time.monotonic() - started < 60
    _assert_no_leftovers(agent, backups)


def test_wrong_password_is_auth_fail_without_the_password(
    agent: Agent, pg_database: Any, tmp_path: Path
) -> None:
    wrong = "Wr0ng-pa55-" + os.urandom(6).hex()
    _credentials(agent, pg_database, password=wrong)
    backups = tmp_path / "backups"
    cfg = _write_config(tmp_path, _schedule(pg_database), _local(backups))
    doc = _backup(agent, cfg, timeout=120)
    message = _assert_failed(agent, doc, ("AUTH_FAIL",), wrong)
    assert pg_database.server.user in message
    _assert_no_leftovers(agent, backups)


def test_pg_dump_killed_mid_stream_fails_the_job_and_commits_nothing(
    agent: Agent, pg_database: Any, tmp_path: Path
) -> None:
    _table(pg_database, 250000, random_text=False)  # ~60 MB: seconds at level 19
    _credentials(agent, pg_database)
    backups = tmp_path / "backups"
    cfg = _write_config(tmp_path, _schedule(pg_database, level=19), _local(backups))
    proc = subprocess.Popen(
        _backup_argv(cfg),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=agent.env(),
    )
    agent.procs.append(proc)

    def pg_dump() -> Optional[psutil.Process]:
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(proc.pid).children(recursive=True):
                # the dump itself, not `pg_dump --version` (the tool version probe)
                if child.name() == "pg_dump" and "--version" not in child.cmdline():
                    return child
        return None

    child = wait_until(pg_dump, 60, "pg_dump to start")
    time.sleep(0.3)  # mid-stream: connected and sending rows
    child.kill()
    out, err = proc.communicate(timeout=120)
    doc = _result(out, err, proc.returncode)
    message = _assert_failed(agent, doc, ("DUMP_FAIL",), pg_database.server.password)
    assert "pg_dump" in message and ("SIGKILL" in message or "signal 9" in message), message
    _assert_no_leftovers(agent, backups)


# --- disk full ------------------------------------------------------------------


def test_local_target_disk_full_fails_with_no_space_and_no_partial_file(
    agent: Agent, pg_database: Any, tmp_path: Path
) -> None:
    _table(pg_database, 100000)  # ~10 MB of hex: ~5 MB compressed, more than the 2 MB tmpfs
    _credentials(agent, pg_database)
    with _tmpfs(tmp_path / "small") as backups:
        cfg = _write_config(tmp_path, _schedule(pg_database), _local(backups))
        doc = _backup(agent, cfg)
        message = _assert_failed(agent, doc, ("UPLOAD_FAIL", "IO_ERROR"))
        assert "No space left on device" in message, message
        assert str(backups) in message or "file://" in message, message
        _assert_no_leftovers(agent, backups)
        assert [p.name for p in backups.rglob("*")] == [] or not _files(backups)


# --- S3: 5xx and the endpoint going away mid-upload -----------------------------


class _S3Proxy(http.server.ThreadingHTTPServer):
    """A loopback HTTP proxy in front of SeaweedFS that injects S3 faults.

    Requests are forwarded byte for byte (the Host header included, so SigV4
    signatures stay valid). After ``parts_ok`` UploadPart requests, every
    further UploadPart gets ``fail_status`` (an S3 XML error) or, with
    ``go_down``, every request of any kind has its connection dropped without
    an answer: the endpoint is gone mid-upload.
    """

    daemon_threads = True

    def __init__(self, upstream: str, parts_ok: int, fail_status: int = 503, go_down: bool = False):
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.parts_ok, self.fail_status, self.go_down = parts_ok, fail_status, go_down
        self.parts_seen = 0
        self.failed = 0
        self.down = False
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _S3Proxy

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _handle(self) -> None:
        srv = self.server
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        is_part = self.command == "PUT" and "partNumber=" in self.path and "uploadId=" in self.path
        with srv.lock:
            if is_part:
                srv.parts_seen += 1
                if srv.parts_seen > srv.parts_ok and srv.go_down:
                    srv.down = True
            inject = is_part and srv.parts_seen > srv.parts_ok and not srv.go_down
            down = srv.down
            if inject or down:
                srv.failed += 1
        if down:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        if inject:
            payload = (
                b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>ServiceUnavailable</Code>'
                b"<Message>injected fault</Message></Error>"
            )
            self.send_response(srv.fail_status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        conn = http.client.HTTPConnection(*srv.upstream, timeout=60)
        try:
            conn.request(self.command, self.path, body=body, headers=dict(self.headers.items()))
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        self.send_response(resp.status)
        for name, value in resp.getheaders():
            if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle


@contextlib.contextmanager
def _proxy(upstream: str, **kwargs: Any) -> Iterator[_S3Proxy]:
    proxy = _S3Proxy(upstream, **kwargs)
    thread = threading.Thread(target=proxy.serve_forever, name="s3-fault-proxy", daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.shutdown()
        proxy.server_close()
        thread.join(timeout=10)


def _s3_target(s3: Any, bucket: str, endpoint: str) -> Dict[str, Any]:
    return {
        "type": "s3",
        "bucket": bucket,
        "prefix": "agents",
        "endpointUrl": endpoint,
        "region": s3.region,
        "credentials": {"accessKeyId": s3.access_key, "secretAccessKey": s3.secret_key},
    }


def _bucket_state(s3: Any, bucket: str) -> tuple:
    client = s3.client()
    uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    objects = client.list_objects_v2(Bucket=bucket).get("Contents", [])
    return [u["Key"] for u in uploads], [o["Key"] for o in objects]


def test_s3_503_on_upload_part_fails_upload_and_aborts_the_multipart_upload(
    agent: Agent, pg_database: Any, s3_server: Any, tmp_path: Path
) -> None:
    _table(pg_database, 400000)  # ~40 MB of hex: ~20 MB stored, three 8 MiB parts
    _credentials(agent, pg_database)
    bucket = s3_server.make_bucket()
    with _proxy(s3_server.endpoint_url, parts_ok=1, fail_status=503) as proxy:
        cfg = _write_config(
            tmp_path, _schedule(pg_database), _s3_target(s3_server, bucket, proxy.url)
        )
        started = time.monotonic()
        doc = _backup(agent, cfg, timeout=300)
        elapsed = time.monotonic() - started
        message = _assert_failed(agent, doc, ("UPLOAD_FAIL",), s3_server.secret_key)
        assert proxy.failed >= 2  # the SDK retried the part before giving up
    assert "503" in message or "ServiceUnavailable" in message, message
    assert f"s3://{bucket}/agents/" in message, message
    assert elapsed < 240
    uploads, objects = _bucket_state(s3_server, bucket)
    assert uploads == [], "the multipart upload was not aborted"
    assert objects == [], "something was committed"
    _assert_no_leftovers(agent)


def test_s3_endpoint_gone_mid_upload_fails_upload_and_commits_nothing(
    agent: Agent, pg_database: Any, s3_server: Any, tmp_path: Path
) -> None:
    _table(pg_database, 400000)
    _credentials(agent, pg_database)
    bucket = s3_server.make_bucket()
    with _proxy(s3_server.endpoint_url, parts_ok=1, go_down=True) as proxy:
        cfg = _write_config(
            tmp_path, _schedule(pg_database), _s3_target(s3_server, bucket, proxy.url)
        )
        started = time.monotonic()
        doc = _backup(agent, cfg, timeout=300)
        elapsed = time.monotonic() - started
        message = _assert_failed(agent, doc, ("UPLOAD_FAIL",), s3_server.secret_key)
        assert proxy.down
    assert f"s3://{bucket}/agents/" in message, message
    assert elapsed < 240
    uploads, objects = _bucket_state(s3_server, bucket)
    assert objects == [], "something was committed"
    # The abort could not reach the endpoint either: the job stays journalled,
    # and the next start's crash recovery aborts the upload (once S3 answers),
    # without reporting the job a second time.
    assert len(uploads) == 1, uploads
    assert list((agent.state_dir / "running").glob("*.json"))
    cfg = _write_config(
        tmp_path, _schedule(pg_database), _s3_target(s3_server, bucket, s3_server.endpoint_url)
    )
    res = agent.cli("run", "--once", "--config-file", str(cfg), timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    uploads, objects = _bucket_state(s3_server, bucket)
    assert uploads == [], "recovery did not abort the multipart upload"
    records = [json.loads(p.read_text()) for p in (agent.state_dir / "jobs").glob("*.json")]
    first = next(r for r in records if r["jobId"] == doc["jobId"])
    assert [s["status"] for s in first["statuses"]].count("failed") == 1
    _assert_no_leftovers(agent)


# --- the control plane: slow (past the client's read timeout) and 500s ----------


def test_control_plane_slow_and_500s_during_a_backup_then_everything_delivered(
    agent: Agent, controlplane: Any, pg_database: Any, tmp_path: Path
) -> None:
    from backupagent.api.client import READ_TIMEOUT
    from backupagent.report.outbox import read_backlog

    _credentials(agent, pg_database)
    backups = tmp_path / "backups"
    agent.register(controlplane)
    agent_id = controlplane.store.list_agents()[0]["agentId"]
    controlplane.store.set_config(
        agent_id,
        {
            "schedules": [_schedule(pg_database)],
            "targets": [{"id": "t", **_local(backups)}],
            "alertChannels": [],
        },
    )
    first_run = agent.cli("run", "--once", timeout=120)  # pulls the config, one backup
    assert first_run.returncode == 0, first_run.stdout + first_run.stderr
    # The job start stalls past the read timeout (the server still commits it
    # after the stall: at-least-once leaves an orphan pending job); then the
    # status calls answer 500 twice and the log batch 503 once.
    controlplane.faults.add("/jobs/start", None, times=1, delay=READ_TIMEOUT + 5)
    controlplane.faults.add("/status", 500, times=2)
    controlplane.faults.add("/logs", 503, times=1)
    started = time.monotonic()
    res = agent.cli("backup", "--schedule", "s", "--json", timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    doc = _result(res.stdout, res.stderr, res.returncode)
    assert doc["status"] == "completed"
    assert doc["durationMs"] < READ_TIMEOUT * 1000  # the backup never waited on the server
    assert len([p for p in _files(backups) if p.name.endswith(".dump.zst")]) == 2
    assert len(_files(backups)) == 4  # two objects and their manifests
    assert time.monotonic() - started < 120

    # A later start delivers what is still queued (no backup is due: cron 03:00).
    again = agent.cli("run", "--once", timeout=180)
    assert again.returncode == 0, again.stdout + again.stderr
    backlog = read_backlog(agent.state_dir)
    assert backlog is not None and backlog["pending"] == 0, backlog
    jobs = controlplane.store.list_jobs()
    done = [j for j in jobs if j["status"] == "completed"]
    assert len(done) == 2, jobs  # the first run --once and the faulted manual backup
    mine = [
        j
        for j in done
        if any(
            h["body"].get("uploadPath") == doc["uploadPath"]
            for h in controlplane.store.job_history(j["jobId"])
        )
    ]
    assert len(mine) == 1, "the faulted backup's completion was not delivered exactly once"
    first = mine[0]
    history = controlplane.store.job_history(first["jobId"])
    statuses = [h["status"] for h in history]
    assert statuses[-1] == "completed" and "dumping" in statuses, statuses
    assert all(j["status"] in ("completed", "pending") for j in jobs), jobs
    logs = [e["message"] for e in controlplane.store.job_logs(first["jobId"])]
    assert any("Starting backup" in m for m in logs)
    assert any(m.startswith("stored ") for m in logs)
    _assert_no_leftovers(agent)


# --- verification: Docker unreachable, image missing ----------------------------


def _verified_backup(
    agent: Agent, pg: Any, tmp_path: Path, image: Optional[str], **env: str
) -> Dict[str, Any]:
    _credentials(agent, pg)
    pg.psql("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 100) g")
    backups = tmp_path / "backups"
    verification: Dict[str, Any] = {"enabled": True}
    if image:
        verification["image"] = image
    cfg = _write_config(tmp_path, _schedule(pg), _local(backups), verification=verification)
    doc = _backup(agent, cfg, timeout=240, **env)
    assert doc["_rc"] == 0 and doc["status"] == "completed", doc  # the backup itself is good
    assert doc["verification"] == "error", doc
    stored = _files(backups)
    assert len(stored) == 2  # the object and its manifest stay: they are a good backup
    record = _job_record(agent)
    assert record["statuses"][-1]["status"] == "completed"
    assert record["verification"]["status"] == "error", record["verification"]
    _assert_no_leftovers(agent)
    return record


def _anomalies(agent: Agent) -> List[Dict[str, Any]]:
    path = agent.state_dir / "jobs" / "anomalies.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines]


def test_docker_unreachable_for_a_verifying_schedule_completes_with_verification_error(
    agent: Agent, pg_database: Any, tmp_path: Path
) -> None:
    record = _verified_backup(
        agent, pg_database, tmp_path, None, DOCKER_HOST="unix:///nonexistent.sock"
    )
    logs = " ".join(e["message"] for e in record.get("logs", []))
    assert "verification could not run (" in logs and "docker" in logs.lower(), logs
    anomalies = [a for a in _anomalies(agent) if a.get("type") == "restore_failure"]
    assert len(anomalies) == 1, _anomalies(agent)
    assert anomalies[0]["severity"] == "critical"


def test_verification_image_missing_is_verify_image_missing(
    agent: Agent, pg_database: Any, docker_engine: Any, tmp_path: Path
) -> None:
    # A registry on a closed loopback port: the pull fails at once, nothing is fetched.
    image = f"127.0.0.1:{free_port()}/backupagent-absent/postgres:15"
    env = {"DOCKER_HOST": docker_engine.base_url} if docker_engine.base_url else {}
    record = _verified_backup(agent, pg_database, tmp_path, image, **env)
    logs = " ".join(e["message"] for e in record.get("logs", []))
    assert "verification could not run (VERIFY_IMAGE_MISSING)" in logs, logs
    assert image in logs and "is not on this host" in logs, logs
    anomalies = [a for a in _anomalies(agent) if a.get("type") == "restore_failure"]
    assert len(anomalies) == 1, _anomalies(agent)
    labelled = docker_engine.client.containers.list(
        all=True, filters={"label": "backupagent.verify"}
    )
    assert labelled == []


def test_spool_disk_full_fails_with_no_space_and_leaves_nothing(
    agent: Agent, pg_database: Any, tmp_path: Path
) -> None:
    """An encrypted, verifying schedule keeps a local copy in the spool (the host
    cannot decrypt); the spool filling up fails the job, the object is aborted."""
    keygen = subprocess.run(["age-keygen"], capture_output=True, text=True, check=False)
    require(keygen.returncode == 0, "`age-keygen` not available (apt install age)")
    recipient = next(
        ln.split(": ", 1)[1] for ln in keygen.stdout.splitlines() if "public key" in ln
    )
    _table(pg_database, 100000)  # ~5 MB stored, more than the 2 MB spool
    _credentials(agent, pg_database)
    backups = tmp_path / "backups"
    with _tmpfs(agent.state_dir / "spool"):
        cfg = tmp_path / "backups.yaml"
        cfg.write_text(
            yaml.safe_dump(
                {
                    "schedules": [{**_schedule(pg_database), "verification": {"enabled": True}}],
                    "targets": [
                        {"id": "t", **_local(backups), "encryption": {"recipients": [recipient]}}
                    ],
                    "alertChannels": [],
                }
            )
        )
        doc = _backup(agent, cfg, DOCKER_HOST="unix:///nonexistent.sock")
        message = _assert_failed(agent, doc, ("IO_ERROR",))
        assert "No space left on device" in message and "verification copy" in message, message
        _assert_no_leftovers(agent, backups)
