"""The durable outbox's queue rules, driven step by step with a recording client.

The HTTP side is covered against the real reference control plane in
tests/integration/test_outbox_controlplane.py; here the client is a small
recorder so each rule (order, batching, bounding, mapping, persistence) is
checked exactly and fast.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import Any, List, Optional, Tuple

import pytest

from backupagent.api.errors import AuthRejected, PermanentApiError, TransientApiError, Unreachable
from backupagent.api.models import (
    AnomalyReport,
    JobStartRequest,
    JobStatusUpdate,
    LogEntry,
    SchemaSnapshotRequest,
    VerificationCheck,
    VerificationReport,
)
from backupagent.api.retry import RetryPolicy
from backupagent.report.outbox import (
    DB_NAME,
    OutboxReporter,
    owner_alive,
    process_token,
    read_backlog,
)

FAST = RetryPolicy(base=0.01, cap=0.05)


class Recorder:
    """Stands in for ApiClient: records calls, raises queued errors first."""

    def __init__(self) -> None:
        self.calls: List[Tuple[str, Any, Any]] = []
        self.errors: List[Exception] = []  # mutate in place: the outbox holds a shallow copy
        self.retry = None
        self.next_job = 0

    def _maybe_fail(self) -> None:
        if self.errors:
            raise self.errors.pop(0)

    def start_job(self, req: JobStartRequest) -> str:
        self._maybe_fail()
        self.next_job += 1
        self.calls.append(("start", None, req))
        return f"srv-{self.next_job}"

    def update_job_status(self, job_id: str, update: JobStatusUpdate) -> bool:
        self._maybe_fail()
        self.calls.append(("status", job_id, update))
        return True

    def upload_logs(self, job_id: str, entries: List[LogEntry]) -> int:
        self._maybe_fail()
        self.calls.append(("logs", job_id, list(entries)))
        return len(entries)

    def submit_verification(self, job_id: str, report: VerificationReport) -> str:
        self._maybe_fail()
        self.calls.append(("verification", job_id, report))
        return "v1"

    def submit_schema_snapshot(self, req: SchemaSnapshotRequest) -> str:
        self._maybe_fail()
        self.calls.append(("snapshot", None, req))
        return "s1"

    def report_anomaly(self, req: AnomalyReport) -> str:
        self._maybe_fail()
        self.calls.append(("anomaly", None, req))
        return "a1"


def _entry(i: int) -> LogEntry:
    return LogEntry(
        level="info", message=f"line {i}", timestamp=f"2024-01-01T00:00:{i % 60:02d}.000Z"
    )


def _start(n: int = 1) -> JobStartRequest:
    return JobStartRequest(databaseId=f"db-{n}", targetId="t", scheduleId=f"s-{n}")


def _drain(rep: OutboxReporter, limit: int = 10_000) -> List[str]:
    outcomes = []
    for _ in range(limit):
        outcome = rep.deliver_next()
        if outcome == "empty":
            return outcomes
        outcomes.append(outcome)
    raise AssertionError("queue did not drain")


@pytest.fixture
def api() -> Recorder:
    return Recorder()


@pytest.fixture
def rep(tmp_path: Path, api: Recorder) -> Any:
    r = OutboxReporter(tmp_path, api, retry=FAST)
    yield r
    r.close()


def test_start_returns_a_local_id_at_once_and_later_calls_use_the_server_id(
    rep: OutboxReporter, api: Recorder
) -> None:
    job = rep.start_job(_start())
    assert job and api.calls == []  # nothing sent yet: the job never waits
    rep.job_status(job, JobStatusUpdate(status="dumping"))
    rep.job_logs(job, [_entry(1)])
    rep.job_status(job, JobStatusUpdate(status="completed", dumpSize=5))
    _drain(rep)
    kinds = [(c[0], c[1]) for c in api.calls]
    assert kinds == [("start", None), ("status", "srv-1"), ("logs", "srv-1"), ("status", "srv-1")]
    assert api.calls[3][2].dumpSize == 5
    assert rep.server_job_id(job) == "srv-1"
    assert rep.backlog()["pending"] == 0


def test_order_is_kept_per_job_with_two_interleaved_jobs(
    rep: OutboxReporter, api: Recorder
) -> None:
    a = rep.start_job(_start(1))
    b = rep.start_job(_start(2))
    for stage in ("dumping", "compressing", "uploading"):
        rep.job_status(a, JobStatusUpdate(status=stage))
        rep.job_status(b, JobStatusUpdate(status=stage))
    rep.job_status(b, JobStatusUpdate(status="failed", errorCode="DUMP_FAIL"))
    rep.job_status(a, JobStatusUpdate(status="completed"))
    _drain(rep)
    ids = {rep.server_job_id(a): "a", rep.server_job_id(b): "b"}
    seen: dict = {"a": [], "b": []}
    for kind, jid, body in api.calls:
        if kind == "status":
            seen[ids[jid]].append(body.status)
    assert seen["a"] == ["dumping", "compressing", "uploading", "completed"]
    assert seen["b"] == ["dumping", "compressing", "uploading", "failed"]


def test_log_entries_are_coalesced_into_batches_of_at_most_100(
    rep: OutboxReporter, api: Recorder
) -> None:
    job = rep.start_job(_start())
    for i in range(0, 250, 10):  # shipped as 25 small batches, as a job does
        rep.job_logs(job, [_entry(j) for j in range(i, i + 10)])
    rep.job_status(job, JobStatusUpdate(status="dumping"))
    rep.job_logs(job, [_entry(999)])
    _drain(rep)
    shape = [(c[0], len(c[2]) if c[0] == "logs" else c[2].__class__.__name__) for c in api.calls]
    assert shape == [
        ("start", "JobStartRequest"),
        ("logs", 100),
        ("logs", 100),
        ("logs", 50),
        ("status", "JobStatusUpdate"),  # a status ends a run of logs: order is kept
        ("logs", 1),
    ]
    messages = [e.message for c in api.calls if c[0] == "logs" for e in c[2]]
    assert messages == [f"line {i}" for i in range(250)] + ["line 999"]


def test_logs_of_another_job_do_not_break_a_batch(rep: OutboxReporter, api: Recorder) -> None:
    a = rep.start_job(_start(1))
    b = rep.start_job(_start(2))
    for i in range(30):
        rep.job_logs(a, [_entry(i)])
        rep.job_logs(b, [_entry(i)])
    _drain(rep)
    batches = [len(c[2]) for c in api.calls if c[0] == "logs"]
    assert batches == [30, 30]


def test_oldest_log_lines_are_dropped_first_with_a_count_and_statuses_never(
    tmp_path: Path, api: Recorder
) -> None:
    rep = OutboxReporter(tmp_path, api, retry=FAST, max_log_entries=10)
    try:
        job = rep.start_job(_start())
        rep.job_status(job, JobStatusUpdate(status="dumping"))
        for i in range(25):
            rep.job_logs(job, [_entry(i)])
        rep.job_status(job, JobStatusUpdate(status="completed"))
        backlog = rep.backlog()
        assert backlog["droppedLogLines"] == 15
        assert backlog["byKind"]["status"] == 2 and backlog["byKind"]["start"] == 1
        _drain(rep)
    finally:
        rep.close()
    logs = [e for c in api.calls if c[0] == "logs" for e in c[2]]
    assert logs[0].message == "15 log lines dropped while the control plane was unreachable"
    assert logs[0].level == "warn"
    assert logs[0].timestamp == _entry(0).timestamp  # where the dropped lines were
    assert [e.message for e in logs[1:]] == [f"line {i}" for i in range(15, 25)]
    statuses = [c[2].status for c in api.calls if c[0] == "status"]
    assert statuses == ["dumping", "completed"]


def test_drop_notice_counts_every_later_drop_of_the_same_job(tmp_path: Path, api: Recorder) -> None:
    rep = OutboxReporter(tmp_path, api, retry=FAST, max_log_entries=5)
    try:
        job = rep.start_job(_start())
        rep.job_logs(job, [_entry(i) for i in range(8)])  # drops 3
        rep.job_logs(job, [_entry(i) for i in range(8, 12)])  # drops 4 more
        _drain(rep)
    finally:
        rep.close()
    logs = [e.message for c in api.calls if c[0] == "logs" for e in c[2]]
    assert logs == ["7 log lines dropped while the control plane was unreachable"] + [
        f"line {i}" for i in range(7, 12)
    ]


def test_queue_survives_a_reopen_and_resumes(tmp_path: Path, api: Recorder) -> None:
    first = OutboxReporter(tmp_path, api, retry=FAST)
    job = first.start_job(_start())
    first.job_status(job, JobStatusUpdate(status="dumping"))
    first.job_logs(job, [_entry(1), _entry(2)])
    first.schema_snapshot(
        SchemaSnapshotRequest(
            databaseId="db-1", snapshot={"tables": []}, tableCount=0, columnCount=0
        )
    )
    assert first.deliver_next() == "ok"  # the start: the mapping is on disk now
    first.close()

    second = OutboxReporter(tmp_path, api, retry=FAST)
    try:
        assert second.backlog()["pending"] == 4
        second.job_status(job, JobStatusUpdate(status="completed"))
        _drain(second)
    finally:
        second.close()
    assert [(c[0], c[1]) for c in api.calls] == [
        ("start", None),
        ("status", "srv-1"),
        ("logs", "srv-1"),
        ("snapshot", None),
        ("status", "srv-1"),
    ]


def test_transient_errors_keep_the_item(rep: OutboxReporter, api: Recorder) -> None:
    job = rep.start_job(_start())
    rep.job_status(job, JobStatusUpdate(status="dumping"))
    api.errors[:] = [
        Unreachable("down"),
        TransientApiError("HTTP 503", status=503),
        TransientApiError("HTTP 429", status=429),
    ]
    assert [rep.deliver_next() for _ in range(3)] == ["transient"] * 3
    assert rep.backlog()["pending"] == 2 and "429" in rep.backlog()["lastError"]
    assert _drain(rep) == ["ok", "ok"]
    assert rep.backlog()["lastError"] is None
    assert [c[0] for c in api.calls] == ["start", "status"]


def test_retry_after_is_honoured(rep: OutboxReporter, api: Recorder) -> None:
    rep.start_job(_start())
    exc = TransientApiError("HTTP 503", status=503)
    exc.retry_after = 7.0  # type: ignore[attr-defined]
    api.errors[:] = [exc]
    assert rep.deliver_next() == "transient"
    assert rep._backoff(rep._retry_after) == 7.0


def test_backoff_is_capped_full_jitter(tmp_path: Path, api: Recorder) -> None:
    rep = OutboxReporter(tmp_path, api, retry=RetryPolicy(base=1.0, cap=4.0))
    try:
        rep._failures = 30
        delays = [rep._backoff(None) for _ in range(200)]
        assert max(delays) <= 4.0 and min(delays) < 2.0
    finally:
        rep.close()


def test_permanent_rejection_drops_only_that_item(rep: OutboxReporter, api: Recorder) -> None:
    job = rep.start_job(_start())
    rep.job_status(job, JobStatusUpdate(status="dumping"))
    rep.job_status(job, JobStatusUpdate(status="completed"))
    assert rep.deliver_next() == "ok"
    api.errors[:] = [PermanentApiError("HTTP 422 bad", status=422)]
    assert _drain(rep) == ["dropped", "ok"]
    assert [c[2].status for c in api.calls if c[0] == "status"] == ["completed"]


def test_rejected_start_drops_the_job_and_its_later_items(
    rep: OutboxReporter, api: Recorder
) -> None:
    bad = rep.start_job(_start(1))
    good = rep.start_job(_start(2))
    rep.job_status(bad, JobStatusUpdate(status="dumping"))
    rep.job_logs(bad, [_entry(1)])
    rep.job_status(good, JobStatusUpdate(status="dumping"))
    api.errors[:] = [PermanentApiError("HTTP 404 database not found", status=404)]
    _drain(rep)
    rep.job_status(bad, JobStatusUpdate(status="failed"))  # after the rejection: not queued
    assert rep.backlog()["pending"] == 0
    assert [(c[0], c[1]) for c in api.calls] == [("start", None), ("status", "srv-1")]
    assert rep.server_job_id(good) == "srv-1" and rep.server_job_id(bad) is None


def test_auth_rejection_pauses_until_a_new_client(rep: OutboxReporter, api: Recorder) -> None:
    job = rep.start_job(_start())
    api.errors[:] = [AuthRejected("HTTP 401", status=401)]
    assert rep.deliver_next() == "auth"
    assert rep.paused and rep.backlog()["paused"]
    assert rep.backlog()["pending"] == 1  # kept
    fresh = Recorder()
    rep.set_api(fresh)
    assert not rep.paused
    rep.job_status(job, JobStatusUpdate(status="dumping"))
    _drain(rep)
    assert [c[0] for c in fresh.calls] == ["start", "status"]


def test_auth_pause_resumes_when_the_key_file_changes(tmp_path: Path, api: Recorder) -> None:
    key = tmp_path / "api-key"
    key.write_text("bak_old\n")
    fresh = Recorder()
    reloads: List[int] = []

    def reload() -> Optional[Recorder]:
        reloads.append(1)
        return fresh

    rep = OutboxReporter(tmp_path, api, retry=FAST, reload_api=reload, key_file=key)
    try:
        rep.start_job(_start())
        api.errors[:] = [AuthRejected("HTTP 403", status=403)]
        assert rep.deliver_next() == "auth"
        assert not rep._try_resume() and reloads == []  # same key file: stay paused
        key.write_text("bak_new\n")
        os.utime(key, (time.time() + 5, time.time() + 5))
        assert rep._try_resume() and reloads == [1]
        _drain(rep)
        assert [c[0] for c in fresh.calls] == ["start"]
    finally:
        rep.close()


def test_verification_snapshot_and_anomaly_are_delivered(
    rep: OutboxReporter, api: Recorder
) -> None:
    job = rep.start_job(_start())
    report = VerificationReport(
        status="passed",
        containerId="c1",
        restoreDurationMs=12,
        checks=[VerificationCheck(checkType="row_count", checkName="t", status="passed")],
    )
    rep.verification(job, report)
    rep.anomaly(AnomalyReport(type="size_anomaly", severity="warning", title="t", description="d"))
    _drain(rep)
    assert api.calls[1] == ("verification", "srv-1", report)
    assert api.calls[2][0] == "anomaly" and api.calls[2][2].title == "t"


def test_outbox_file_is_private(rep: OutboxReporter, tmp_path: Path) -> None:
    rep.start_job(_start())
    for name in (DB_NAME, DB_NAME + "-wal"):
        path = tmp_path / name
        if path.exists():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, name


def test_open_jobs_and_terminal_tracking(rep: OutboxReporter) -> None:
    a = rep.start_job(_start(1))
    b = rep.start_job(_start(2))
    rep.job_status(b, JobStatusUpdate(status="completed"))
    open_ids = [j.job_id for j in rep.open_jobs()]
    assert open_ids == [a]
    assert rep.open_jobs()[0].request == {
        "databaseId": "db-1",
        "targetId": "t",
        "scheduleId": "s-1",
    }
    assert owner_alive(rep.open_jobs()[0].owner)
    assert rep.has_terminal(b) and not rep.has_terminal(a)


def test_owner_tokens() -> None:
    assert owner_alive(process_token())
    assert not owner_alive("999999999:1")
    assert not owner_alive(None) and not owner_alive("garbage")
    pid, ticks = process_token().split(":")
    if int(ticks):
        assert not owner_alive(f"{pid}:{int(ticks) + 1}")  # a reused pid is not the owner


def test_read_backlog_for_status(tmp_path: Path, rep: OutboxReporter) -> None:
    assert read_backlog(tmp_path / "nowhere") is None
    job = rep.start_job(_start())
    rep.job_logs(job, [_entry(1), _entry(2)])
    rep.job_status(job, JobStatusUpdate(status="dumping"))
    backlog = read_backlog(tmp_path)
    assert backlog is not None
    assert backlog["pending"] == 4
    assert backlog["byKind"] == {
        "start": 1,
        "status": 1,
        "log": 2,
        "verification": 0,
        "snapshot": 0,
        "anomaly": 0,
    }
    assert backlog["jobsAwaitingServerId"] == 1
    assert backlog["oldestAgeSeconds"] is not None and backlog["oldestAgeSeconds"] >= 0


def test_delivery_thread_drains_and_only_one_process_delivers(tmp_path: Path) -> None:
    api_a, api_b = Recorder(), Recorder()
    a = OutboxReporter(tmp_path, api_a, retry=FAST, idle_poll=0.05)
    b = OutboxReporter(tmp_path, api_b, retry=FAST, idle_poll=0.05)
    try:
        a.start()
        time.sleep(0.2)
        b.start()  # same state dir: must not deliver while a holds the lock
        for i in range(5):
            job = b.start_job(_start(i))
            b.job_status(job, JobStatusUpdate(status="completed"))
        assert b.flush(10)
        assert len(api_a.calls) == 10 and api_b.calls == []
        assert a.delivering and not b.delivering
        a.stop(5)
        job = b.start_job(_start(9))  # a stopped: b takes over
        assert b.flush(10)
        assert [c[0] for c in api_b.calls] == ["start"]
    finally:
        a.close()
        b.close()


def test_reporting_never_raises_when_the_queue_is_broken(tmp_path: Path, api: Recorder) -> None:
    rep = OutboxReporter(tmp_path, api, retry=FAST)
    rep.queue.close()  # any later write fails with sqlite3.ProgrammingError
    job = rep.start_job(_start())
    rep.job_status(job, JobStatusUpdate(status="dumping"))
    rep.job_logs(job, [_entry(1)])


def test_queue_page_cache_is_bounded_small(tmp_path: Path) -> None:
    from backupagent.report.outbox_queue import CACHE_KIB, OutboxQueue

    queue = OutboxQueue(tmp_path)
    try:
        assert queue._db.execute("PRAGMA cache_size").fetchone()[0] == -CACHE_KIB
    finally:
        queue.close()
    assert CACHE_KIB <= 512
