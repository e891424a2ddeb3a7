"""A byte-budgeted FIFO between pipeline threads: the back-pressure of the stream.

Bounded by bytes rather than items because chunk sizes vary (zstd emits
whole jobs of several MiB, a dump chunk is 1 MiB); ``abort()`` wakes every
waiter so a failing stage can never leave another thread blocked forever.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, Optional


class Aborted(Exception):
    """A queue was shut down because another stage failed."""


class ByteQueue:
    """A FIFO of byte chunks bounded by total size; ``None`` marks the end.

    One chunk larger than the budget is still accepted when the queue is
    empty, so an oversized write can never deadlock.
    """

    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        self._items: deque = deque()
        self._bytes = 0
        self._cond = threading.Condition()
        self._aborted = False
        self.high_water = 0

    def put(self, item: Optional[Any]) -> None:
        n = len(item) if item is not None else 0
        with self._cond:
            while not self._aborted and self._items and self._bytes + n > self._max:
                self._cond.wait()
            if self._aborted:
                raise Aborted()
            self._items.append(item)
            self._bytes += n
            self.high_water = max(self.high_water, self._bytes)
            self._cond.notify_all()

    def get(self) -> Optional[Any]:
        with self._cond:
            while not self._aborted and not self._items:
                self._cond.wait()
            if self._aborted:
                raise Aborted()
            item = self._items.popleft()
            if item is not None:
                self._bytes -= len(item)
            self._cond.notify_all()
            return item

    def abort(self) -> None:
        with self._cond:
            self._aborted = True
            self._items.clear()
            self._bytes = 0
            self._cond.notify_all()
