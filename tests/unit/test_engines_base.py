"""engines.base.on_cancel: how an engine interrupts a blocking preparation step."""

from __future__ import annotations

import threading
import time

from backupagent.engines.base import on_cancel
from backupagent.jobs.result import CancelToken


def test_a_cancel_during_the_block_runs_the_action_once() -> None:
    token, calls, unblocked = CancelToken(), [], threading.Event()
    with on_cancel(token, lambda: (calls.append(1), unblocked.set())):
        threading.Timer(0.1, token.cancel, args=("TIMEOUT",)).start()
        assert unblocked.wait(5)  # the blocking step is freed by the action
    time.sleep(0.3)
    assert calls == [1]


def test_no_action_when_the_block_ends_first() -> None:
    token, calls = CancelToken(), []
    with on_cancel(token, lambda: calls.append(1), interval=0.01):
        pass
    token.cancel()
    time.sleep(0.1)
    assert calls == []


def test_without_a_token_nothing_runs() -> None:
    calls: list = []
    with on_cancel(None, lambda: calls.append(1)):
        pass
    assert calls == [] and not any(t.name == "engine-cancel-watch" for t in threading.enumerate())
