"""Turns the config's schedules into APScheduler cron jobs, and back into times.

Each enabled schedule is one job with id ``schedule:<id>``. A schedule never
overlaps itself (``max_instances=1``), missed runs collapse into one
(``coalesce``), and the executor's pool size bounds concurrent backups.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

from backupagent.config.cron import cron_trigger

log = logging.getLogger(__name__)
JOB_PREFIX = "schedule:"
# A backup that starts late is better than none, up to an hour late.
MISFIRE_GRACE_SECONDS = 3600


def trigger_for(cron: str, timezone: str) -> Any:
    """A trigger firing when cron would (weekday 0 = Sunday, day fields OR-ed)."""
    return cron_trigger(cron, timezone or "UTC")


def next_fire(cron: str, timezone: str, now: Optional[dt.datetime] = None) -> Optional[dt.datetime]:
    now = now or dt.datetime.now(dt.timezone.utc)
    return trigger_for(cron, timezone).get_next_fire_time(None, now)


def previous_fire(
    cron: str, timezone: str, now: Optional[dt.datetime] = None
) -> Optional[dt.datetime]:
    """The latest cron time at or before ``now`` (within a year), or None.

    APScheduler 3 only walks forwards, so walk from a window before ``now``;
    small windows first keep frequent schedules cheap.
    """
    now = now or dt.datetime.now(dt.timezone.utc)
    trigger = trigger_for(cron, timezone)
    for window in (
        dt.timedelta(hours=1),
        dt.timedelta(days=1),
        dt.timedelta(days=32),
        dt.timedelta(days=367),
    ):
        found = None
        cursor = trigger.get_next_fire_time(None, now - window)
        while cursor is not None and cursor <= now:
            found = cursor
            cursor = trigger.get_next_fire_time(cursor, cursor + dt.timedelta(seconds=1))
        if found is not None:
            return found
    return None


def is_due(
    cron: str, timezone: str, last_run_at: Optional[str], now: Optional[dt.datetime] = None
) -> bool:
    """anacron's rule: due when the latest cron time has no run at or after it.

    A schedule that never ran is due, so ``run --once`` on a new host backs up.
    """
    if last_run_at is None:
        return True
    prev = previous_fire(cron, timezone, now)
    if prev is None:
        return False
    last = dt.datetime.fromisoformat(last_run_at.replace("Z", "+00:00"))
    return last < prev


def _signature(trigger: Any) -> Tuple[str, str]:
    return (str(trigger), str(trigger.timezone))


def reconcile(
    scheduler: Any, schedules: Iterable[Any], make_callable: Callable[[Any], Callable[[], None]]
) -> Dict[str, str]:
    """Make the scheduler's jobs match ``schedules``; returns what changed per id.

    A job whose cron and timezone did not change is left alone (so its next
    run time is kept); the callable is always refreshed, so a running job sees
    the new config from its next run on.
    """
    wanted = {s.id: s for s in schedules if s.enabled}
    changes: Dict[str, str] = {}
    for job in scheduler.get_jobs():
        if not job.id.startswith(JOB_PREFIX):
            continue
        sid = job.id[len(JOB_PREFIX) :]
        if sid not in wanted:
            job.remove()
            changes[sid] = "removed"
    for sid, schedule in wanted.items():
        job_id = JOB_PREFIX + sid
        existing = scheduler.get_job(job_id)
        func = make_callable(schedule)
        trigger = trigger_for(schedule.cron, schedule.timezone)
        if existing is not None and _signature(existing.trigger) == _signature(trigger):
            existing.modify(func=func)
            continue
        scheduler.add_job(
            func,
            trigger=trigger,
            id=job_id,
            name=f"backup {sid}",
            replace_existing=True,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=MISFIRE_GRACE_SECONDS,
        )
        changes[sid] = "updated" if existing is not None else "added"
    for sid, change in sorted(changes.items()):
        job = scheduler.get_job(JOB_PREFIX + sid)
        when = getattr(job, "next_run_time", None) if job else None
        log.info(
            "schedule %s %s%s",
            sid,
            change,
            f", next run {when.isoformat()}" if when else "",
            extra={"scheduleId": sid, "change": change},
        )
    return changes
