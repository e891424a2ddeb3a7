"""Cron times for the daemon: previous/next fire, anacron's due rule, reconciliation."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace
from typing import List

from apscheduler.schedulers.background import BackgroundScheduler

from backupagent.daemon.schedules import is_due, next_fire, previous_fire, reconcile

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 11, 29, 5, 3, tzinfo=UTC)  # a Sunday


def test_previous_fire_for_frequent_daily_and_yearly_crons() -> None:
    assert previous_fire("*/15 * * * *", "UTC", NOW) == dt.datetime(2026, 11, 29, 5, 0, tzinfo=UTC)
    assert previous_fire("0 3 * * *", "UTC", NOW) == dt.datetime(2026, 11, 29, 3, 0, tzinfo=UTC)
    assert previous_fire("0 0 1 1 *", "UTC", NOW) == dt.datetime(2026, 1, 1, tzinfo=UTC)


def test_timezones_are_honoured() -> None:
    # 03:00 in Berlin is 02:00 UTC in winter.
    prev = previous_fire("0 3 * * *", "Europe/Berlin", NOW)
    assert prev is not None and prev.astimezone(UTC) == dt.datetime(2026, 11, 29, 2, 0, tzinfo=UTC)
    nxt = next_fire("0 3 * * *", "America/New_York", NOW)
    assert nxt is not None and nxt.astimezone(UTC) == dt.datetime(2026, 11, 29, 8, 0, tzinfo=UTC)


def test_weekday_zero_is_sunday_as_in_cron() -> None:
    # APScheduler's own from_crontab reads 0 as Monday; ours must not.
    nxt = next_fire("0 3 * * 0", "UTC", NOW - dt.timedelta(days=1))
    assert nxt == dt.datetime(2026, 11, 29, 3, 0, tzinfo=UTC)
    assert nxt.weekday() == 6


def test_due_follows_anacron() -> None:
    assert is_due("0 3 * * *", "UTC", None, NOW)  # never ran: due
    assert is_due("0 3 * * *", "UTC", "2026-11-28T03:00:05.000Z", NOW)  # missed today's
    assert not is_due("0 3 * * *", "UTC", "2026-11-29T03:00:01.000Z", NOW)
    assert not is_due("0 0 1 1 *", "UTC", "2026-01-01T00:00:09.000Z", NOW)


def _schedule(sid: str, cron: str, enabled: bool = True, tz: str = "UTC") -> SimpleNamespace:
    return SimpleNamespace(id=sid, cron=cron, timezone=tz, enabled=enabled)


def test_reconcile_adds_updates_keeps_and_removes() -> None:
    sched = BackgroundScheduler(timezone=UTC)
    sched.start(paused=True)
    try:
        calls: List[str] = []

        def make(s: SimpleNamespace):
            return lambda: calls.append(s.id)

        changes = reconcile(sched, [_schedule("a", "0 3 * * *"), _schedule("b", "*/5 * * * *"),
                                    _schedule("off", "0 1 * * *", enabled=False)], make)
        assert changes == {"a": "added", "b": "added"}
        job_a = sched.get_job("schedule:a")
        assert job_a.max_instances == 1 and job_a.coalesce
        changes = reconcile(sched, [_schedule("a", "0 3 * * *"), _schedule("b", "0 4 * * *")],
                            make)
        assert changes == {"b": "updated"}  # a unchanged: kept with its next run time
        changes = reconcile(sched, [_schedule("b", "0 4 * * *")], make)
        assert changes == {"a": "removed"}
        assert [j.id for j in sched.get_jobs()] == ["schedule:b"]
    finally:
        sched.shutdown(wait=False)
