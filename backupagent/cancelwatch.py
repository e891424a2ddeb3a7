"""Acting the moment a job's cancel token fires, whoever is blocked.

Checking a token between chunks or statements is not enough: a dump that
hangs (lock wait, dead network) never yields the next chunk, and a psql
connecting to a hung server never returns its first row. A ``CancelWatch``
is a thread that waits on the token and runs one action (kill the process,
kill the session) when it fires; ``stop()``, or leaving its ``with`` block,
ends the watch without acting. Shared by the pipeline (the dump and restore
processes) and the engines (PostgreSQL's snapshot session).
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Optional


class CancelWatch(threading.Thread):
    """Runs ``action`` once if ``cancel`` (a jobs.result.CancelToken) fires
    before ``stop()``. ``finished``, when given, ends the watch early (the
    watched process exited by itself). Without a token it does nothing."""

    def __init__(
        self,
        cancel: Any,
        action: Callable[[], None],
        *,
        finished: Optional[Callable[[], bool]] = None,
        interval: float = 0.2,
    ) -> None:
        super().__init__(name="cancel-watch", daemon=True)
        self._cancel = cancel
        self._action = action
        self._finished = finished
        self._interval = interval
        self._done = threading.Event()
        self.fired = False

    def start(self) -> None:
        if self._cancel is not None:
            super().start()

    def run(self) -> None:
        while not self._done.is_set():
            if self._cancel.wait(self._interval):
                if not self._done.is_set():
                    self.fired = True
                    self._action()
                return
            if self._finished is not None and self._finished():
                return

    def stop(self) -> None:
        """End the watch; does not wait for the thread (it exits within
        ``interval``, and the action can no longer run)."""
        self._done.set()

    def __enter__(self) -> CancelWatch:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
