"""Cache discovery results so heartbeats stay cheap.

A discovery run scans every process and may spend seconds in psql/mariadb
calls; heartbeats come every minute. Servers appear and go rarely, so a
result a few minutes old is good enough and keeps the agent light.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, List, Mapping, Optional

from backupagent.api.models import DiscoveredDatabase

Discover = Callable[..., List[DiscoveredDatabase]]


class DiscoveryCache:
    """``get()`` returns the last result while younger than ``ttl`` seconds,
    else runs discovery again. Thread-safe: concurrent callers share one run
    instead of starting several."""

    def __init__(
        self,
        ttl: float = 300.0,
        settings: Any = None,
        credentials: Optional[Mapping[str, Any]] = None,
        discover: Optional[Discover] = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if discover is None:
            from backupagent.discovery.discover import discover_databases

            discover = discover_databases
        self.ttl = ttl
        self._settings = settings
        self._credentials = credentials
        self._discover = discover
        self._clock = clock
        self._lock = threading.Lock()
        self._value: Optional[List[DiscoveredDatabase]] = None
        self._at = 0.0

    def get(self) -> List[DiscoveredDatabase]:
        with self._lock:
            now = self._clock()
            if self._value is None or now - self._at >= self.ttl:
                self._value = list(self._discover(self._settings, self._credentials))
                self._at = self._clock()
            return list(self._value)

    def invalidate(self) -> None:
        """Force the next ``get()`` to rediscover (e.g. after a config change)."""
        with self._lock:
            self._value = None
