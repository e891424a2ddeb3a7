"""The daemon: heartbeat loop in the main thread, backups in a scheduler pool.

Shutdown is two-step, like a CI agent's: the first SIGTERM/SIGINT stops new
work and lets running backups finish within the grace period; a second one
(or the grace period running out) cancels them, which kills their dump
processes and aborts their uploads.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import random
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from backupagent.api.client import ApiClient
from backupagent.api.errors import ApiError, AuthRejected
from backupagent.api.models import DiscoveredDatabase
from backupagent.config.hashing import EMPTY_HASH, config_hash
from backupagent.config.load import LastGoodConfigCache, load_config_file
from backupagent.config.model import AgentConfig
from backupagent.config.parse import parse_config
from backupagent.daemon import schedules, sdnotify
from backupagent.daemon.heartbeat import Heartbeater
from backupagent.daemon.memtrim import limit_arenas, release_freed_memory
from backupagent.daemon.state import AgentState
from backupagent.errors import AgentError, ConfigInvalid
from backupagent.exitcodes import ExitCode
from backupagent.jobs.result import CancelToken, JobResult, JobRunner
from backupagent.logs import utc_timestamp
from backupagent.metrics import Metrics
from backupagent.settings import Settings

log = logging.getLogger(__name__)
CANCEL_WAIT = 30.0  # after cancelling, how long to wait for jobs to unwind


class Daemon:
    def __init__(
        self,
        settings: Settings,
        runner: JobRunner,
        *,
        api: Optional[ApiClient] = None,
        config_file: Optional[Path] = None,
        discover: Optional[Callable[[], List[DiscoveredDatabase]]] = None,
        heartbeat_interval: Optional[float] = None,
        reload_api: Optional[Callable[[], Optional[ApiClient]]] = None,
    ) -> None:
        if (api is None) == (config_file is None):
            raise ValueError("exactly one of api (registered mode) and config_file (standalone)")
        self.settings = settings
        self.runner = runner
        self.api = api
        self.config_file = Path(config_file) if config_file else None
        self.interval = heartbeat_interval or settings.heartbeat_interval
        settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        self.state = AgentState(settings.state_dir)
        self.metrics = Metrics.from_settings(settings)
        self.cache = LastGoodConfigCache(settings.state_dir)
        self.config: Optional[AgentConfig] = None
        self.config_hash = EMPTY_HASH
        self._config_mtime: Optional[float] = None
        self._need_sync = True
        self._rejected_hash: Optional[str] = None
        self._stop = threading.Event()
        self._cancel = threading.Event()
        self._running: Dict[str, CancelToken] = {}
        self._running_lock = threading.Lock()
        self.failed_runs = 0
        self.heartbeater = (
            Heartbeater(
                api,
                self.state,
                settings.api_key_file,
                discover or (lambda: []),
                reload_api or (lambda: None),
            )
            if api is not None
            else None
        )
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.schedulers.background import BackgroundScheduler

        self.scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=settings.max_concurrent_jobs)},
            timezone=dt.timezone.utc,
        )

    # -- config ---------------------------------------------------------------

    def apply_config(self, raw: Any, source: str, parsed: Optional[AgentConfig] = None) -> bool:
        """Validate and apply a config document; an invalid one changes nothing."""
        new_hash = config_hash(raw)
        try:
            parsed = parsed or parse_config(raw, source=source)
        except ConfigInvalid as exc:
            # The same bad document comes back on every configChanged: say it
            # loudly once, then quietly until it changes.
            level = logging.DEBUG if new_hash == self._rejected_hash else logging.ERROR
            self._rejected_hash = new_hash
            log.log(
                level,
                "rejected config from %s, keeping the last good one: %s",
                source,
                exc,
                extra={"errorCode": exc.code},
            )
            return False
        self.config = parsed
        changed = new_hash != self.config_hash
        self.config_hash = new_hash
        if self.scheduler.running:
            schedules.reconcile(self.scheduler, parsed.schedules, self._job_callable)
        if changed:
            log.info(
                "applied config %s from %s: %d schedules, %d targets",
                new_hash[:12],
                source,
                len(parsed.schedules),
                len(parsed.targets),
            )
            if source != "cache":
                self.cache.save(raw)
            self.state.record_config(new_hash, source, len(parsed.schedules))
        return True

    def load_cached_config(self) -> None:
        cached = self.cache.load()
        if cached is not None:
            raw, _ = cached
            log.info("loaded the last good config from the state directory")
            self.apply_config(raw, "cache")

    def sync_config(self) -> bool:
        """Pull the config from the control plane (or re-read the file)."""
        if self.config_file is not None:
            return self._reload_file(force=True)
        assert self.api is not None
        try:
            raw = self.api.get_config()
        except AuthRejected as exc:
            log.error("config pull refused: %s", exc)
            return False
        except ApiError as exc:
            log.warning("config pull failed, keeping the current config: %s", exc)
            return False
        self._need_sync = False
        return self.apply_config(raw, "control plane")

    def _reload_file(self, force: bool = False) -> bool:
        assert self.config_file is not None
        try:
            mtime = os.stat(self.config_file).st_mtime
        except OSError as exc:
            log.error("cannot read config file %s: %s", self.config_file, exc)
            return False
        if not force and mtime == self._config_mtime:
            return True
        self._config_mtime = mtime
        try:
            raw, parsed = load_config_file(self.config_file)
        except ConfigInvalid as exc:
            log.error(
                "rejected config file %s, keeping the last good one: %s",
                self.config_file,
                exc,
                extra={"errorCode": exc.code},
            )
            return False
        except AgentError as exc:
            log.error("%s", exc)
            return False
        return self.apply_config(raw, str(self.config_file), parsed)

    # -- heartbeat ------------------------------------------------------------

    def tick(self) -> None:
        """One beat: heartbeat and pull config if told to (or re-read the file)."""
        if self.heartbeater is None:
            self._reload_file()
            return
        changed = self.heartbeater.beat(self.config_hash)
        self.metrics.record_heartbeat(changed is not None)
        if changed or (self._need_sync and changed is not None):
            self.sync_config()

    def _jittered_interval(self) -> float:
        """The interval ±5% (at most ±3 s): agents started together drift apart."""
        spread = min(self.interval * 0.05, 3.0)
        return max(0.05, self.interval + random.uniform(-spread, spread))  # noqa: S311

    # -- jobs -----------------------------------------------------------------

    def _job_callable(self, schedule: Any) -> Callable[[], None]:
        def fire() -> None:
            self.run_schedule(schedule)

        return fire

    def run_schedule(self, schedule: Any) -> Optional[JobResult]:
        if self._stop.is_set():
            log.info("not starting schedule %s: shutting down", schedule.id)
            return None
        token = CancelToken()
        with self._running_lock:
            self._running[schedule.id] = token
        started = utc_timestamp()
        t0 = time.monotonic()
        config = self.config
        try:
            result = self.runner(schedule, config, token)
        except Exception as exc:  # a runner must not raise; if it does, it failed
            log.exception("backup for schedule %s crashed", schedule.id)
            result = JobResult(status="failed", error_code="INTERNAL", error_message=str(exc))
        finally:
            with self._running_lock:
                self._running.pop(schedule.id, None)
        if not result.ok:
            self.failed_runs += 1
        self.state.record_run(
            schedule.id,
            started_at=started,
            status=result.status,
            job_id=result.job_id,
            error=result.error_message,
        )
        db = schedule.database
        self.metrics.record_backup(
            db.database_name, db.db_type, result, duration_seconds=time.monotonic() - t0
        )
        release_freed_memory()  # else glibc keeps the job's freed buffers: RSS creeps
        return result

    @property
    def running_jobs(self) -> int:
        with self._running_lock:
            return len(self._running)

    def _cancel_running(self, reason: str) -> None:
        with self._running_lock:
            tokens = list(self._running.values())
        for token in tokens:
            token.cancel(reason)

    # -- lifecycle --------------------------------------------------------------

    def request_stop(self) -> None:
        """Signal handler entry: first call stops new work, second cancels jobs."""
        if not self._stop.is_set():
            log.info("stop requested: finishing running jobs (a second signal cancels them)")
            self._stop.set()
        else:
            log.warning("second stop request: cancelling running jobs")
            self._cancel.set()
            self._cancel_running("CANCELLED")

    def start(self) -> None:
        limit_arenas()  # before the scheduler's threads: a flat RSS (memtrim.py)
        self.load_cached_config()
        self.scheduler.start(paused=True)
        if self.config is not None:
            schedules.reconcile(self.scheduler, self.config.schedules, self._job_callable)

    def _remove_leftover_containers(self) -> None:
        """Verification containers a crash left behind; only touches Docker (and
        imports its SDK) when some schedule verifies."""
        if self.config is None or not any(s.verification.enabled for s in self.config.schedules):
            return
        try:
            from backupagent.verify.container import cleanup_leftovers

            removed = cleanup_leftovers()
        except Exception as exc:  # Docker down: verification will say so when it runs
            log.warning("could not check for leftover verification containers: %s", exc)
            return
        if removed:
            log.warning("removed %d leftover verification container(s)", len(removed))

    def run_forever(self) -> int:
        self.start()
        if not self._first_sync():
            self.scheduler.shutdown(wait=False)
            return int(ExitCode.CONFIG)
        self.scheduler.resume()
        log.info(
            "agent running (%s), heartbeat every %.0fs",
            "standalone" if self.config_file else f"server {self.api.base_url}",  # type: ignore[union-attr]
            self.interval,
        )
        sdnotify.ready("running")
        self._ping_watchdog()
        try:
            while not self._stop.wait(self._jittered_interval()):
                self.tick()
                self._ping_watchdog()
        finally:
            sdnotify.stopping(f"stopping: {self.running_jobs} job(s) running")
            self._shutdown()
        return 0

    def _ping_watchdog(self) -> None:
        """Tell systemd we are healthy: while heartbeats succeed (standalone: while
        the loop runs). A running backup also counts, so a control-plane outage
        can never get a backup killed by a watchdog restart."""
        healthy = self.heartbeater is None or self.heartbeater.last_ok or self.running_jobs > 0
        if healthy:
            sdnotify.watchdog()
        if self.heartbeater is not None:
            sdnotify.status(
                "heartbeat ok"
                if self.heartbeater.last_ok
                else "control plane unreachable: heartbeats failing"
            )

    def run_once(self) -> int:
        """One heartbeat and config sync, then every due schedule, then exit."""
        self.start()
        if not self._first_sync():
            self.scheduler.shutdown(wait=False)
            return int(ExitCode.CONFIG)
        config = self.config
        if config is None:
            log.warning("no config: nothing to run")
            self.scheduler.shutdown(wait=False)
            return 0
        due = [
            s
            for s in config.schedules
            if s.enabled and schedules.is_due(s.cron, s.timezone, self.state.last_run_at(s.id))
        ]
        log.info("%d of %d schedules due", len(due), len(config.schedules))
        results: List[Optional[JobResult]] = []

        def work() -> None:
            for schedule in due:
                if self._stop.is_set():
                    break
                results.append(self.run_schedule(schedule))

        # Jobs run off the main thread so that signals are handled at once
        # (a long C call, such as compressing a chunk, would delay them).
        worker = threading.Thread(target=work, name="run-once", daemon=True)
        worker.start()
        grace_deadline: Optional[float] = None
        while worker.is_alive():
            worker.join(0.2)
            if self._stop.is_set() and grace_deadline is None:
                grace_deadline = time.monotonic() + self.settings.shutdown_grace
            overdue = grace_deadline is not None and time.monotonic() > grace_deadline
            if overdue and not self._cancel.is_set():
                log.warning("shutdown grace period over: cancelling the running job")
                self._cancel.set()
                self._cancel_running("CANCELLED")
        self.scheduler.shutdown(wait=False)
        self._close_runner()
        failed = sum(1 for r in results if r is not None and not r.ok)
        return int(ExitCode.FAILURE) if failed else 0

    def _first_sync(self) -> bool:
        """First heartbeat/config read. False only for a standalone file that is
        unusable: a local config error is the operator's to fix now, whereas a
        control plane that is down is waited out with the cached config."""
        if self.config_file is not None:
            if not self._reload_file(force=True):
                return False
        else:
            self.tick()
            if self._need_sync:
                log.warning("could not pull the config; using the last good one")
        self._recover()
        self._remove_leftover_containers()
        return True

    def _recover(self) -> None:
        """Report and clean up jobs a crash interrupted, before any job starts."""
        reporter = getattr(self.runner, "reporter", None)
        if reporter is None:
            return
        from backupagent.jobs.recovery import recover

        recover(self.settings, reporter, self.config)

    def _shutdown(self) -> None:
        if self.scheduler.running:
            self.scheduler.pause()
        deadline = time.monotonic() + self.settings.shutdown_grace
        if self.running_jobs:
            log.info(
                "waiting up to %.0fs for %d running job(s)",
                self.settings.shutdown_grace,
                self.running_jobs,
            )
        while self.running_jobs and not self._cancel.is_set() and time.monotonic() < deadline:
            self._cancel.wait(0.2)
        if self.running_jobs:
            reason = "CANCELLED"
            log.warning("cancelling %d running job(s)", self.running_jobs)
            self._cancel_running(reason)
            end = time.monotonic() + CANCEL_WAIT
            while self.running_jobs and time.monotonic() < end:
                time.sleep(0.1)
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        self._close_runner()
        log.info("agent stopped")

    def _close_runner(self) -> None:
        close = getattr(self.runner, "close", None)
        if close is not None:
            close()
