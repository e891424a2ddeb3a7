"""Fault injection for tests: make the next N matching requests fail or stall.

The agent's retry policy (5xx and 429 are transient, ``Retry-After`` is
honoured, 401 stops retries, every call has a timeout) can only be tested
end to end if the server misbehaves on cue; this is that cue. A production
server never has faults configured (the CLI does not expose them).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


@dataclass
class Fault:
    path: str  # exact request path, or a suffix of it such as "/heartbeat"
    status: Optional[int]  # None: only delay, then serve normally
    times: int = 1
    method: Optional[str] = None
    delay: float = 0.0  # seconds to stall before answering
    headers: Dict[str, str] = field(default_factory=dict)
    body: Optional[Dict[str, Any]] = None

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method.upper() != method:
            return False
        return path == self.path or path.endswith(self.path)


class FaultInjector:
    """A thread-safe queue of faults; each matching request consumes one use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: List[Fault] = []

    def add(
        self,
        path: str,
        status: Optional[int] = 503,
        *,
        times: int = 1,
        method: Optional[str] = None,
        delay: float = 0.0,
        retry_after: Optional[str] = None,
        body: Optional[Dict[str, Any]] = None,
    ) -> Fault:
        """Fail (or, with ``status=None``, only stall) the next ``times`` requests to ``path``."""
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        fault = Fault(path, status, times, method, delay, headers, body)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def take(self, method: str, path: str) -> Optional[Fault]:
        with self._lock:
            for fault in self._faults:
                if fault.times > 0 and fault.matches(method, path):
                    fault.times -= 1
                    return fault
        return None
