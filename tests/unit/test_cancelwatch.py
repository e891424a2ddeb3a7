"""CancelWatch: acting the moment a cancel token fires (dump processes, psql sessions)."""

from __future__ import annotations

import subprocess
import threading
import time

from backupagent.cancelwatch import CancelWatch
from backupagent.jobs.result import CancelToken
from backupagent.pipeline.proc import watch_process


def test_a_cancel_during_the_block_runs_the_action_once() -> None:
    token, calls, unblocked = CancelToken(), [], threading.Event()
    with CancelWatch(token, lambda: (calls.append(1), unblocked.set()), interval=0.05) as w:
        threading.Timer(0.1, token.cancel, args=("TIMEOUT",)).start()
        assert unblocked.wait(5)  # the blocking step is freed by the action
    time.sleep(0.2)
    assert calls == [1] and w.fired


def test_no_action_once_stopped() -> None:
    token, calls = CancelToken(), []
    with CancelWatch(token, lambda: calls.append(1), interval=0.01) as w:
        pass
    token.cancel()
    time.sleep(0.1)
    assert calls == [] and not w.fired


def test_without_a_token_nothing_runs() -> None:
    calls: list = []
    with CancelWatch(None, lambda: calls.append(1)) as w:
        pass
    assert calls == [] and not w.is_alive()


def test_a_process_watch_kills_a_hung_child_and_ends_when_it_exits() -> None:
    token = CancelToken()
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    w = watch_process(proc, token, interval=0.05)
    w.start()
    token.cancel()
    assert proc.wait(timeout=5) != 0 and w.fired
    quiet = subprocess.Popen(["true"], start_new_session=True)
    w2 = watch_process(quiet, CancelToken(), interval=0.05)
    w2.start()
    quiet.wait()
    w2.join(timeout=2)
    assert not w2.is_alive() and not w2.fired  # ended by itself, nothing killed
