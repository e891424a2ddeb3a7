"""Delivery rounds: many items sent per queue read, acknowledged in few commits.

The rules pinned here are what makes the outbox keep up with a busy host
without giving up a guarantee: order per job, nothing dropped, at-least-once
(a crash between a delivery and its batched acknowledgement resends), and an
enqueue durable before the reporter returns. The real server's tolerance of
those resends is checked in tests/e2e/test_outbox_outage.py with a kill -9.
"""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path
from typing import Any, Dict, List

import pytest

from backupagent.api.errors import PermanentApiError, TransientApiError
from backupagent.api.models import JobStatusUpdate
from backupagent.controlplane.server import bind
from backupagent.report.outbox import DB_NAME, OutboxReporter
from tests.unit.test_outbox import FAST, Recorder, _entry, _start


class Killed(BaseException):
    """Stands in for kill -9: nothing after it runs, nothing is committed."""


def _drain(rep: OutboxReporter) -> List[str]:
    outcomes = []
    for _ in range(1000):
        outcome = rep.deliver_batch()
        if outcome == "empty":
            return outcomes
        outcomes.append(outcome)
    raise AssertionError("queue did not drain")


def _backup(rep: OutboxReporter, n: int, logs: int = 2) -> str:
    """What one backup reports: start, stages with logs between, terminal."""
    job = rep.start_job(_start(n))
    for stage in ("dumping", "compressing", "uploading"):
        rep.job_status(job, JobStatusUpdate(status=stage))
        for i in range(logs):
            rep.job_logs(job, [_entry(i)])
    rep.job_status(job, JobStatusUpdate(status="completed"))
    return job


def _statuses_by_job(api: Recorder) -> Dict[str, List[str]]:
    seen: Dict[str, List[str]] = {}
    for kind, jid, body in api.calls:
        if kind == "status":
            seen.setdefault(jid, []).append(body.status)
    return seen


@pytest.fixture
def api() -> Recorder:
    return Recorder()


@pytest.fixture
def rep(tmp_path: Path, api: Recorder) -> Any:
    r = OutboxReporter(tmp_path, api, retry=FAST)
    yield r
    r.close()


def test_many_delivered_items_take_far_fewer_commits(rep: OutboxReporter, api: Recorder) -> None:
    jobs = [_backup(rep, n) for n in range(20)]
    queued = rep.queue.pending()
    assert queued == 20 * (1 + 4 + 6)
    before = rep.queue.commits
    assert _drain(rep) == ["ok", "ok"]  # two rounds: the window is 200 items
    commits = rep.queue.commits - before
    # One commit per job start (its id mapping is committed at once), plus a
    # few for everything else; one per item was 220 before.
    assert commits <= len(jobs) + 4, commits
    assert rep.queue.pending() == 0
    assert len(api.calls) == 20 * (1 + 4 + 3)  # two log calls per stage coalesce into one


def test_statuses_alone_are_acknowledged_every_ack_every_items(
    tmp_path: Path, api: Recorder
) -> None:
    rep = OutboxReporter(tmp_path, api, retry=FAST, ack_every=10)
    try:
        job = rep.start_job(_start())
        assert rep.deliver_next() == "ok"
        for _ in range(95):
            rep.job_status(job, JobStatusUpdate(status="dumping"))
        before = rep.queue.commits
        assert rep.deliver_batch() == "ok"
        assert rep.queue.commits - before == 10  # 9 full groups of 10, then the last 5
        assert rep.queue.pending() == 0
    finally:
        rep.close()


def test_order_per_job_is_kept_and_logs_coalesce_across_other_jobs(
    rep: OutboxReporter, api: Recorder
) -> None:
    a = rep.start_job(_start(1))
    b = rep.start_job(_start(2))
    for stage in ("dumping", "compressing", "uploading"):
        for i in range(3):
            rep.job_logs(a, [_entry(i)])
            rep.job_logs(b, [_entry(10 + i)])
        rep.job_status(a, JobStatusUpdate(status=stage))
        rep.job_status(b, JobStatusUpdate(status=stage))
    rep.job_status(b, JobStatusUpdate(status="failed", errorCode="DUMP_FAILED"))
    rep.job_status(a, JobStatusUpdate(status="completed"))
    _drain(rep)
    sa, sb = rep.server_job_id(a), rep.server_job_id(b)
    per_job: Dict[str, List[str]] = {sa or "": [], sb or "": []}
    for kind, jid, body in api.calls:
        if jid in per_job:
            per_job[jid].append(f"logs{len(body)}" if kind == "logs" else body.status)
    expected = ["logs3", "dumping", "logs3", "compressing", "logs3", "uploading"]
    assert per_job[sa or ""] == [*expected, "completed"]
    assert per_job[sb or ""] == [*expected, "failed"]


def test_a_log_run_stops_at_100_and_continues_in_order(rep: OutboxReporter, api: Recorder) -> None:
    job = rep.start_job(_start())
    for i in range(0, 250, 10):
        rep.job_logs(job, [_entry(j) for j in range(i, i + 10)])
    rep.job_status(job, JobStatusUpdate(status="dumping"))
    _drain(rep)
    shape = [len(c[2]) if c[0] == "logs" else c[0] for c in api.calls]
    assert shape == ["start", 100, 100, 50, "status"]
    messages = [e.message for c in api.calls if c[0] == "logs" for e in c[2]]
    assert messages == [f"line {i}" for i in range(250)]


def test_a_crash_before_the_batched_ack_resends_in_order(tmp_path: Path, api: Recorder) -> None:
    first = OutboxReporter(tmp_path, api, retry=FAST)
    job = _backup(first, 1, logs=1)

    def killed(_items: Any) -> None:
        raise Killed

    first.queue.delivered = killed  # type: ignore[method-assign]
    with pytest.raises(Killed):
        first.deliver_batch()
    sent_first = [(c[0], c[1]) for c in api.calls]
    first.queue.close()  # as the kernel would: no further commit

    second = OutboxReporter(tmp_path, api, retry=FAST)
    try:
        assert second.queue.pending() == 7  # everything after the start: its ack was lost
        assert second.server_job_id(job) == "srv-1"  # the mapping was committed at once
        _drain(second)
        assert second.queue.pending() == 0
    finally:
        second.close()
    resent = [(c[0], c[1]) for c in api.calls[len(sent_first) :]]
    assert sent_first[0] == ("start", None)
    assert resent == sent_first[1:]  # the same items again, same order, same server job
    assert [c[0] for c in api.calls].count("start") == 1  # no orphan job on the server
    assert (
        _statuses_by_job(api)["srv-1"] == ["dumping", "compressing", "uploading", "completed"] * 2
    )


def test_a_terminal_status_rejected_as_a_repeat_is_dropped_and_delivery_goes_on(
    rep: OutboxReporter, api: Recorder
) -> None:
    job = _backup(rep, 1, logs=0)
    other = _backup(rep, 2, logs=0)
    assert rep.deliver_next() == "ok"  # job 1's start
    api.errors[:] = [PermanentApiError("HTTP 409 conflict: already completed", status=409)]
    assert _drain(rep) == ["ok"]  # a 409 drops that item; the round goes on
    assert rep.queue.pending() == 0
    assert _statuses_by_job(api)[rep.server_job_id(other) or ""][-1] == "completed"
    assert rep.backlog()["lastError"].startswith("rejected status dumping")
    assert job


def test_a_transient_failure_ends_the_round_and_keeps_what_was_delivered(
    rep: OutboxReporter, api: Recorder
) -> None:
    job = rep.start_job(_start())
    for stage in ("dumping", "compressing", "uploading"):
        rep.job_status(job, JobStatusUpdate(status=stage))
    assert rep.deliver_next() == "ok"

    calls = 0
    original = api.update_job_status

    def flaky(job_id: str, update: JobStatusUpdate) -> bool:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise TransientApiError("HTTP 503", status=503)
        return original(job_id, update)

    rep._api.update_job_status = flaky
    assert rep.deliver_batch() == "transient"
    assert rep.queue.pending() == 2  # "dumping" acknowledged, the failing one and the rest kept
    assert rep.deliver_batch() == "ok"
    assert [c[2].status for c in api.calls if c[0] == "status"] == [
        "dumping",
        "compressing",
        "uploading",
    ]


def test_a_rejected_start_mid_round_drops_only_its_job(rep: OutboxReporter, api: Recorder) -> None:
    a = _backup(rep, 1, logs=1)
    b = _backup(rep, 2, logs=1)
    original = api.start_job

    def refuse_first(req: Any) -> str:
        if req.databaseId == "db-1":
            raise PermanentApiError("HTTP 404 database not found", status=404)
        return original(req)

    rep._api.start_job = refuse_first
    _drain(rep)
    assert rep.queue.pending() == 0
    assert rep.server_job_id(a) is None
    assert _statuses_by_job(api) == {
        rep.server_job_id(b): ["dumping", "compressing", "uploading", "completed"]
    }


def test_stop_ends_a_round_and_acknowledges_what_was_delivered(
    rep: OutboxReporter, api: Recorder
) -> None:
    job = rep.start_job(_start())
    for _ in range(50):
        rep.job_status(job, JobStatusUpdate(status="dumping"))
    assert rep.deliver_next() == "ok"
    original = api.update_job_status

    def stop_on_fifth(job_id: str, update: JobStatusUpdate) -> bool:
        if sum(1 for c in api.calls if c[0] == "status") == 4:
            rep._stop.set()
        return original(job_id, update)

    rep._api.update_job_status = stop_on_fifth
    assert rep.deliver_batch() == "ok"
    assert rep.queue.pending() == 45


def test_an_enqueued_item_is_committed_durably_before_the_reporter_returns(
    rep: OutboxReporter, tmp_path: Path
) -> None:
    job = rep.start_job(_start())
    rep.job_status(job, JobStatusUpdate(status="failed", errorCode="X"))
    # Another connection sees both rows at once: they were committed, not buffered.
    con = sqlite3.connect(tmp_path / DB_NAME)
    try:
        kinds = [r[0] for r in con.execute("SELECT kind FROM items ORDER BY seq")]
    finally:
        con.close()
    assert kinds == ["start", "status"]
    assert rep.queue._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_the_control_plane_socket_is_tcp_so_asyncio_turns_nagle_off() -> None:
    # asyncio sets TCP_NODELAY on accepted connections only for proto ==
    # IPPROTO_TCP; with proto 0 every keep-alive response waited ~40 ms for a
    # delayed ACK, capping the outbox at ~23 items/s (bench/outbox_throughput.py).
    sock, _ = bind("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()
