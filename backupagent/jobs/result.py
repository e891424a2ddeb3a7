"""The outcome of one job, as the daemon and the CLI need it."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional


@dataclass
class JobResult:
    status: str  # "completed" or "failed"
    job_id: Optional[str] = None
    error_code: Optional[str] = None
    error_message: Optional[str] = None
    details: Dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "completed"


class CancelToken:
    """Set when a running job must stop: a second SIGTERM, a timeout, a shutdown.

    Jobs poll ``cancelled`` between chunks and kill their child processes; the
    ``reason`` becomes the failure's error code (CANCELLED or TIMEOUT).
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = "CANCELLED"

    def cancel(self, reason: str = "CANCELLED") -> None:
        self.reason = reason
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        return self._event.wait(timeout)


# What the daemon calls when a schedule fires: (schedule, config, token) -> result.
JobRunner = Callable[[Any, Any, CancelToken], JobResult]
