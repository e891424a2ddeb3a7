"""The one place that decides whether and when a failed call is tried again.

Rules (docs/protocol.md): 401/403 are fatal for the call; 400/404/409/413/422
and other 4xx are permanent; 408, 429, 5xx and network errors are transient and
retried with full-jitter exponential backoff, capped, honouring Retry-After.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import enum
import random
from dataclasses import dataclass
from typing import Optional


class Outcome(enum.Enum):
    OK = "ok"
    FATAL = "fatal"  # credentials rejected: stop until re-registered
    PERMANENT = "permanent"  # this request will never succeed as sent
    TRANSIENT = "transient"  # try again later


def classify(status: int) -> Outcome:
    if 200 <= status < 300:
        return Outcome.OK
    if status in (401, 403):
        return Outcome.FATAL
    if status in (408, 429) or status >= 500:
        return Outcome.TRANSIENT
    return Outcome.PERMANENT


def parse_retry_after(value: Optional[str], now: Optional[dt.datetime] = None) -> Optional[float]:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    now = now or dt.datetime.now(dt.timezone.utc)
    return max(0.0, (when - now).total_seconds())


@dataclass(frozen=True)
class RetryPolicy:
    """Full-jitter exponential backoff (AWS architecture blog's "Full Jitter").

    The delay before retry ``n`` (0-based) is uniform in
    ``[0, min(cap, base * 2**n)]``: spreading agents that failed together so
    they do not all come back at once.
    """

    base: float = 1.0
    cap: float = 60.0
    max_attempts: int = 6  # total tries, the first included
    max_retry_after: float = 600.0  # a server asking for longer is still capped

    def backoff(self, retry_index: int, rng: Optional[random.Random] = None) -> float:
        ceiling = min(self.cap, self.base * (2 ** min(retry_index, 62)))
        return (rng or random).uniform(0.0, ceiling)

    def delay(
        self, retry_index: int, retry_after: Optional[float], rng: Optional[random.Random] = None
    ) -> float:
        """The wait before the next try: the server's Retry-After wins when given."""
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        return self.backoff(retry_index, rng)


NO_RETRY = RetryPolicy(max_attempts=1)
