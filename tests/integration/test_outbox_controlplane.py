"""The durable outbox against the REAL reference control plane over HTTP.

The control plane goes down (its port closes) for a whole real backup, answers
500s, answers 401, and the reporter restarts in the middle of its backlog; in
each case everything the job reported must arrive afterwards, once, in order,
under the server's job id.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

from backupagent import __version__
from backupagent.api.client import ApiClient
from backupagent.api.models import JobStartRequest, JobStatusUpdate, LogEntry, RegisterRequest
from backupagent.api.retry import RetryPolicy
from backupagent.controlplane.faults import FaultInjector
from backupagent.controlplane.server import bind, make_server, url_for
from backupagent.controlplane.store import Store
from backupagent.controlplane.testing import ServerHandle
from backupagent.engines.base import parse_database_url
from backupagent.jobs.backup import BackupSpec, run_backup
from backupagent.report.local import LocalReporter
from backupagent.report.outbox import OutboxReporter
from backupagent.targets.local import LocalTarget
from tests.servers import free_port

pytestmark = pytest.mark.integration

FAST = RetryPolicy(base=0.05, cap=0.5)


@contextlib.contextmanager
def serve(db_path: Path, port: int) -> Iterator[ServerHandle]:
    """The reference control plane on a FIXED port, so it can go away and come back."""
    store = Store(db_path)
    sock, port = bind("127.0.0.1", port)
    faults = FaultInjector()
    server = make_server(store, faults=faults)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    try:
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "control plane did not start"
            time.sleep(0.02)
        yield ServerHandle(url=url_for("127.0.0.1", port), store=store, port=port, faults=faults)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
        store.close()


def register(srv: ServerHandle) -> str:
    resp = ApiClient(srv.url).register(
        RegisterRequest(
            registrationToken=srv.create_token(),
            hostname="outbox-host",
            os="linux",
            arch="amd64",
            agentVersion=__version__,
        )
    )
    return resp.apiKey


class Tee:
    """Reports to the outbox and, identically, to local records: the expected truth."""

    def __init__(self, outbox: OutboxReporter, local: LocalReporter) -> None:
        self.outbox, self.local = outbox, local
        self.ids: Dict[str, str] = {}

    def start_job(self, req: JobStartRequest) -> str:
        job = self.outbox.start_job(req)
        self.ids[job] = self.local.start_job(req)
        return job

    def job_status(self, job_id: str, update: Any) -> None:
        self.outbox.job_status(job_id, update)
        self.local.job_status(self.ids[job_id], update)

    def job_logs(self, job_id: str, entries: Any) -> None:
        self.outbox.job_logs(job_id, entries)
        self.local.job_logs(self.ids[job_id], entries)

    def verification(self, job_id: str, report: Any) -> None:
        self.outbox.verification(job_id, report)

    def schema_snapshot(self, req: Any) -> None:
        self.outbox.schema_snapshot(req)
        self.local.schema_snapshot(req)

    def anomaly(self, req: Any) -> None:
        self.outbox.anomaly(req)


def sqlite_db(path: Path, rows: int = 500) -> Path:
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price REAL)")
        db.executemany(
            "INSERT INTO items (name, price) VALUES (?, ?)",
            [(f"item {i}", i * 1.5) for i in range(rows)],
        )
        db.commit()
    return path


def real_backup(tmp_path: Path, reporter: Any) -> Any:
    spec = BackupSpec(
        conn=parse_database_url(f"sqlite://{sqlite_db(tmp_path / 'app.db')}"),
        target=LocalTarget(tmp_path / "backups"),
        database_id="db-1",
        target_id="t-1",
        hostname="outbox-host",
        schedule_id="sched-1",
        spool_dir=tmp_path / "spool",
    )
    (tmp_path / "spool").mkdir(exist_ok=True)
    return run_backup(spec, reporter)


def test_control_plane_down_for_a_whole_backup_then_everything_arrives_in_order(
    tmp_path: Path,
) -> None:
    port = free_port()
    db = tmp_path / "cp.db"
    with serve(db, port) as srv:
        key = register(srv)
    # The control plane is gone: its port refuses connections.
    state = tmp_path / "state"
    outbox = OutboxReporter(state, ApiClient(url_for("127.0.0.1", port), key), retry=FAST)
    outbox.start()
    try:
        local = LocalReporter(tmp_path / "expected")
        result = real_backup(tmp_path, Tee(outbox, local))
        assert result.ok, result.error_message  # the backup never waited on the control plane
        time.sleep(0.5)  # a few delivery attempts fail meanwhile
        backlog = outbox.backlog()
        assert backlog["byKind"]["start"] == 1 and backlog["byKind"]["status"] >= 4
        assert backlog["jobsAwaitingServerId"] == 1
        assert "cannot reach" in (backlog["lastError"] or "")

        with serve(db, port) as srv:
            assert outbox.flush(30), outbox.backlog()
            jobs = srv.store.list_jobs()
            assert len(jobs) == 1
            job = jobs[0]
            assert job["jobId"] == outbox.server_job_id(result.job_id)
            assert job["jobId"] != result.job_id  # the local id was mapped
            expected = local.list_jobs()[0]
            assert [h["status"] for h in srv.store.job_history(job["jobId"])] == [
                s["status"] for s in expected["statuses"]
            ]
            assert [h["status"] for h in srv.store.job_history(job["jobId"])][-1] == "completed"
            assert job["uploadPath"] == result.details["uploadPath"]
            got = [
                (e["level"], e["message"], e["timestamp"]) for e in srv.store.job_logs(job["jobId"])
            ]
            want = [(e["level"], e["message"], e["timestamp"]) for e in expected["logs"]]
            assert got == want and any("Starting backup" in m for _, m, _ in got)
            assert len(srv.store.list_schema_snapshots()) == len(
                (tmp_path / "expected" / "jobs" / "schema-snapshots.jsonl").read_text().splitlines()
            )
            assert outbox.backlog()["pending"] == 0
    finally:
        outbox.close()


def _enqueue_job(outbox: OutboxReporter, n_logs: int = 0) -> str:
    job = outbox.start_job(JobStartRequest(databaseId="db-1", targetId="t-1", scheduleId="s-1"))
    for stage in ("dumping", "compressing", "uploading"):
        outbox.job_status(job, JobStatusUpdate(status=stage))
        if n_logs:
            outbox.job_logs(
                job,
                [
                    LogEntry(
                        level="info", message=f"{stage} {i}", timestamp="2024-05-01T00:00:00.000Z"
                    )
                    for i in range(n_logs)
                ],
            )
    outbox.job_status(
        job,
        JobStatusUpdate(
            status="completed",
            dumpSize=10,
            compressedSize=5,
            uploadPath="file:///backups/x.zst",
            durationMs=12,
        ),
    )
    return job


def _statuses(srv: ServerHandle, job_id: str) -> List[str]:
    return [h["status"] for h in srv.store.job_history(job_id)]


def test_500s_then_success_with_retry_after_honoured(tmp_path: Path) -> None:
    with serve(tmp_path / "cp.db", free_port()) as srv:
        key = register(srv)
        srv.faults.add("/jobs/start", 500, times=3)
        srv.faults.add("/status", 503, times=1, retry_after="1")
        outbox = OutboxReporter(tmp_path / "state", ApiClient(srv.url, key), retry=FAST)
        try:
            job = _enqueue_job(outbox)
            started = time.monotonic()
            outbox.start()
            assert outbox.flush(30)
            elapsed = time.monotonic() - started
        finally:
            outbox.stop()
        server_id = outbox.server_job_id(job)
        assert server_id is not None
        assert _statuses(srv, server_id) == ["dumping", "compressing", "uploading", "completed"]
        starts = srv.store.list_requests(path="/api/v1/agent/jobs/start")
        assert [r["statusCode"] for r in starts] == [500, 500, 500, 200]
        assert len(srv.store.list_jobs()) == 1  # failed starts created nothing
        assert elapsed >= 0.9  # the 503's Retry-After: 1 was waited out


def test_401_pauses_delivery_until_the_key_file_changes(tmp_path: Path) -> None:
    with serve(tmp_path / "cp.db", free_port()) as srv:
        key = register(srv)
        key_file = tmp_path / "api-key"
        key_file.write_text(key + "\n")
        key_file.chmod(0o600)
        srv.faults.add("/jobs/start", 401, times=1)

        def reload_api() -> ApiClient:
            return ApiClient(srv.url, key_file.read_text().strip())

        outbox = OutboxReporter(
            tmp_path / "state",
            ApiClient(srv.url, key),
            retry=FAST,
            reload_api=reload_api,
            key_file=key_file,
            auth_poll=0.1,
        )
        try:
            job = _enqueue_job(outbox)
            outbox.start()
            assert not outbox.flush(1.5)  # paused: nothing goes
            assert outbox.paused and outbox.backlog()["paused"]
            requests = srv.store.list_requests(path="/api/v1/agent/jobs/start")
            assert [r["statusCode"] for r in requests] == [401]  # tried once, not hammered
            assert outbox.backlog()["pending"] == 5

            key_file.write_text(key + "\n")  # a re-registration rewrites the key file
            future = time.time() + 5
            os.utime(key_file, (future, future))
            assert outbox.flush(15)
        finally:
            outbox.stop()
        assert not outbox.paused
        assert _statuses(srv, outbox.server_job_id(job) or "") == [
            "dumping",
            "compressing",
            "uploading",
            "completed",
        ]


def test_restart_in_the_middle_of_the_backlog_loses_nothing(tmp_path: Path) -> None:
    with serve(tmp_path / "cp.db", free_port()) as srv:
        key = register(srv)
        state = tmp_path / "state"
        first = OutboxReporter(state, ApiClient(srv.url, key), retry=FAST)
        jobs = [_enqueue_job(first, n_logs=70) for _ in range(3)]
        outcomes = [first.deliver_next() for _ in range(6)]  # part of the backlog only
        assert outcomes == ["ok"] * 6
        first.close()  # the agent restarts

        second = OutboxReporter(state, ApiClient(srv.url, key), retry=FAST)
        try:
            second.start()
            assert second.flush(30)
        finally:
            second.stop()
        assert len(srv.store.list_jobs()) == 3
        for job in jobs:
            server_id = second.server_job_id(job)
            assert server_id is not None
            assert _statuses(srv, server_id) == ["dumping", "compressing", "uploading", "completed"]
            messages = [e["message"] for e in srv.store.job_logs(server_id)]
            want = [f"{s} {i}" for s in ("dumping", "compressing", "uploading") for i in range(70)]
            assert messages == want  # every line, once, in order
        batches = srv.store.list_requests(method="POST")
        sizes = [len(r["json"]["logs"]) for r in batches if r["path"].endswith("/logs")]
        assert sizes and max(sizes) <= 100


def test_permanently_rejected_start_drops_that_job_only(tmp_path: Path) -> None:
    with serve(tmp_path / "cp.db", free_port()) as srv:
        key = register(srv)
        srv.faults.add("/jobs/start", 422, times=1)
        outbox = OutboxReporter(tmp_path / "state", ApiClient(srv.url, key), retry=FAST)
        try:
            rejected = _enqueue_job(outbox, n_logs=3)
            kept = _enqueue_job(outbox)
            outbox.start()
            assert outbox.flush(15)
        finally:
            outbox.stop()
        assert outbox.server_job_id(rejected) is None
        jobs = srv.store.list_jobs()
        assert [j["jobId"] for j in jobs] == [outbox.server_job_id(kept)]
        assert "rejected" in (outbox.backlog()["lastError"] or "")
