"""Crash recovery and the job journal, on real files in a temp state dir.

An interrupted job is simulated by what a kill -9 leaves: a journal entry (or
an outbox start without a terminal status) whose owner process is gone, a work
dir in the spool, a partial file in a local target. The real kill -9 of a real
agent process is in tests/e2e/test_recovery_kill.py.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any, List

import pytest

from backupagent.api.models import JobStartRequest, JobStatusUpdate, LogEntry
from backupagent.config.parse import parse_config
from backupagent.jobs.journal import JobJournal
from backupagent.jobs.recovery import INTERRUPTED, recover
from backupagent.report.local import LocalReporter
from backupagent.report.outbox import OutboxReporter
from backupagent.settings import Settings

DEAD = "999999999:1"  # no such pid


def _config(backups: Path) -> Any:
    return parse_config(
        {
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
                        "port": "5432",
                        "databaseName": "app",
                    },
                }
            ],
            "targets": [{"id": "tgt-1", "type": "local", "path": str(backups)}],
        }
    )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = Settings(config_dir=tmp_path / "etc", state_dir=tmp_path / "state", hostname="h1")
    (s.state_dir / "spool").mkdir(parents=True)
    return s


def _crash_leftovers(tmp_path: Path, settings: Settings, job_id: str) -> dict:
    """What run_backup leaves behind when killed mid-upload."""
    workdir = settings.state_dir / "spool" / f"job-{job_id[:36]}-abc123"
    workdir.mkdir()
    (workdir / "verify-spool.zst").write_bytes(b"x" * 100)
    key = f"h1/postgresql/app/20240101T030000Z-{job_id}.dump.zst"
    db_dir = tmp_path / "backups" / "h1" / "postgresql" / "app"
    db_dir.mkdir(parents=True)
    partial = db_dir / f".20240101T030000Z-{job_id}.dump.zst.partial-0123456789ab"
    partial.write_bytes(b"half an object")
    keep = db_dir / "20231231T030000Z-older.dump.zst"
    keep.write_bytes(b"an earlier, complete backup")
    return {"workdir": workdir, "key": key, "partial": partial, "keep": keep}


def _journal_dead(settings: Settings, job_id: str, **details: Any) -> None:
    journal = JobJournal(settings.state_dir)
    fields = {"schedule_id": "sched-1", "database_id": "db-1", "target_id": "tgt-1", **details}
    journal.begin(job_id, **fields)
    path = journal._path(job_id)
    doc = json.loads(path.read_text())
    doc["owner"] = DEAD
    path.write_text(json.dumps(doc))


def test_journal_round_trip_and_privacy(tmp_path: Path) -> None:
    journal = JobJournal(tmp_path)
    journal.begin("job-1", schedule_id="s", target_id="t", workdir=tmp_path / "w")
    journal.update("job-1", object_key="a/b/c.zst", temp_path="/tmp/x")
    entry = journal.get("job-1")
    assert entry is not None and entry.alive
    assert (entry.schedule_id, entry.workdir, entry.object_key) == (
        "s",
        str(tmp_path / "w"),
        "a/b/c.zst",
    )
    assert entry.temp_paths == ["/tmp/x"]
    assert stat.S_IMODE(journal._path("job-1").stat().st_mode) == 0o600
    (journal.dir / "junk.json").write_text("{not json")
    assert [e.job_id for e in journal.entries()] == ["job-1"]  # junk ignored
    journal.end("job-1")
    journal.end("job-1")  # twice is fine
    assert journal.entries() == []
    with pytest.raises(TypeError):
        journal.begin("job-2", colour="blue")


def test_interrupted_job_is_reported_and_its_leftovers_removed(
    tmp_path: Path, settings: Settings
) -> None:
    reporter = LocalReporter(settings.state_dir)
    job_id = reporter.start_job(
        JobStartRequest(databaseId="db-1", targetId="tgt-1", scheduleId="sched-1")
    )
    reporter.job_status(job_id, JobStatusUpdate(status="dumping"))
    left = _crash_leftovers(tmp_path, settings, job_id)
    stray = settings.state_dir / "spool" / "job-unknown-zzz"
    stray.mkdir()
    _journal_dead(settings, job_id, workdir=left["workdir"], object_key=left["key"])

    report = recover(settings, reporter, _config(tmp_path / "backups"), docker=False)

    assert report.interrupted == [job_id]
    doc = json.loads((settings.state_dir / "jobs" / f"{job_id}.json").read_text())
    final = doc["statuses"][-1]
    assert final["status"] == "failed" and final["errorCode"] == INTERRUPTED
    assert "stopped mid-backup" in final["errorMessage"]
    assert final["durationMs"] >= 0
    assert any("stopped mid-backup" in line["message"] for line in doc["logs"])
    assert not left["workdir"].exists() and not left["partial"].exists()
    assert left["keep"].exists()  # a finished backup is never touched
    assert not stray.exists()  # nothing runs: the whole spool was stale
    assert report.partials_removed == 1
    assert JobJournal(settings.state_dir).entries() == []
    assert report.problems == []
    # A second start finds nothing more to do.
    again = recover(settings, reporter, _config(tmp_path / "backups"), docker=False)
    assert not again.anything


def test_object_without_manifest_is_removed_with_manifest_kept(
    tmp_path: Path, settings: Settings
) -> None:
    reporter = LocalReporter(settings.state_dir)
    config = _config(tmp_path / "backups")
    ids = []
    for with_manifest in (False, True):
        job_id = reporter.start_job(JobStartRequest(databaseId="db-1", targetId="tgt-1"))
        key = f"h1/postgresql/app/20240101T03000{int(with_manifest)}Z-{job_id}.dump.zst"
        obj = tmp_path / "backups" / key
        obj.parent.mkdir(parents=True, exist_ok=True)
        obj.write_bytes(b"complete object")
        if with_manifest:
            Path(str(obj) + ".manifest.json").write_text("{}")
        _journal_dead(settings, job_id, object_key=key)
        ids.append((job_id, obj))
    report = recover(settings, reporter, config, docker=False)
    (orphan_job, orphan), (kept_job, kept) = ids
    assert not orphan.exists() and report.orphans_removed == [orphan.as_uri()]
    assert kept.exists()
    doc = json.loads((settings.state_dir / "jobs" / f"{kept_job}.json").read_text())
    assert doc["statuses"][-1]["errorCode"] == INTERRUPTED
    assert "is kept" in doc["statuses"][-1]["errorMessage"]
    assert sorted(report.interrupted) == sorted([orphan_job, kept_job])


def test_a_job_of_a_live_process_is_left_alone(tmp_path: Path, settings: Settings) -> None:
    reporter = LocalReporter(settings.state_dir)
    job_id = reporter.start_job(JobStartRequest(databaseId="db-1", targetId="tgt-1"))
    left = _crash_leftovers(tmp_path, settings, job_id)
    JobJournal(settings.state_dir).begin(
        job_id, target_id="tgt-1", workdir=left["workdir"], object_key=left["key"]
    )  # owned by this (running) process
    report = recover(settings, reporter, _config(tmp_path / "backups"), docker=False)
    assert report.interrupted == [] and not report.anything
    assert left["workdir"].exists() and left["partial"].exists()
    assert JobJournal(settings.state_dir).get(job_id) is not None


class _NoNetwork:
    retry = None

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"recovery must only queue, not call the API ({name})")


def test_outbox_open_job_without_journal_is_recovered(tmp_path: Path, settings: Settings) -> None:
    outbox = OutboxReporter(settings.state_dir, _NoNetwork())
    try:
        outbox.owner = DEAD  # as if started by the killed process
        job_id = outbox.start_job(
            JobStartRequest(databaseId="db-1", targetId="tgt-1", scheduleId="sched-1")
        )
        outbox.job_status(job_id, JobStatusUpdate(status="dumping"))
        outbox.job_logs(
            job_id, [LogEntry(level="info", message="hi", timestamp="2024-01-01T00:00:00.000Z")]
        )
        left = _crash_leftovers(tmp_path, settings, job_id)  # no journal: found by job id
        finished = outbox.start_job(JobStartRequest(databaseId="db-1", targetId="tgt-1"))
        outbox.job_status(finished, JobStatusUpdate(status="completed"))

        report = recover(settings, outbox, _config(tmp_path / "backups"), docker=False)

        assert report.interrupted == [job_id]
        assert outbox.has_terminal(job_id) and outbox.open_jobs() == []
        assert not left["partial"].exists() and not left["workdir"].exists()
        kinds: List[str] = [
            r["kind"]
            for r in outbox.queue._query(
                "SELECT kind FROM items WHERE job = ? ORDER BY seq", (job_id,)
            )
        ]
        assert kinds == ["start", "status", "log", "log", "status"]  # queued after the rest
        last = outbox.queue._query(
            "SELECT body FROM items WHERE job = ? ORDER BY seq DESC LIMIT 1", (job_id,)
        )
        assert json.loads(last[0]["body"])["errorCode"] == INTERRUPTED
        assert not recover(
            settings, outbox, _config(tmp_path / "backups"), docker=False
        ).interrupted
    finally:
        outbox.close()


def test_recovery_survives_a_missing_target_and_config(tmp_path: Path, settings: Settings) -> None:
    reporter = LocalReporter(settings.state_dir)
    job_id = reporter.start_job(JobStartRequest(databaseId="db-1", targetId="gone"))
    _journal_dead(settings, job_id, target_id="gone", object_key="a/b.zst")
    report = recover(settings, reporter, _config(tmp_path / "backups"), docker=False)
    assert report.interrupted == [job_id]
    assert any("gone" in p for p in report.problems)
    job2 = reporter.start_job(JobStartRequest(databaseId="db-1", targetId="tgt-1"))
    _journal_dead(settings, job2)
    assert recover(settings, reporter, None, docker=False).interrupted == [job2]


def test_with_nothing_running_stray_partials_of_this_host_go_other_hosts_stay(
    tmp_path: Path, settings: Settings
) -> None:
    backups = tmp_path / "backups"
    mine = backups / "h1" / "postgresql" / "app" / ".x.dump.zst.partial-aaaaaaaaaaaa"
    theirs = backups / "h2" / "postgresql" / "app" / ".y.dump.zst.partial-bbbbbbbbbbbb"
    for p in (mine, theirs):
        p.parent.mkdir(parents=True)
        p.write_bytes(b"half")
    reporter = LocalReporter(settings.state_dir)
    live = reporter.start_job(JobStartRequest(databaseId="db-1", targetId="tgt-1"))
    JobJournal(settings.state_dir).begin(live, target_id="tgt-1")  # this process: running
    recover(settings, reporter, _config(backups), docker=False)
    assert mine.exists()  # a job runs: it might be its upload
    JobJournal(settings.state_dir).end(live)
    report = recover(settings, reporter, _config(backups), docker=False)
    assert not mine.exists() and theirs.exists()
    assert report.partials_removed == 1 and report.interrupted == []
