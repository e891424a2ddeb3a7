"""The retry policy: classification, full jitter, Retry-After."""

from __future__ import annotations

import datetime as dt
import random
import statistics

import pytest

from backupagent.api.retry import Outcome, RetryPolicy, classify, parse_retry_after


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.OK),
        (201, Outcome.OK),
        (204, Outcome.OK),
        (401, Outcome.FATAL),
        (403, Outcome.FATAL),
        (400, Outcome.PERMANENT),
        (404, Outcome.PERMANENT),
        (409, Outcome.PERMANENT),
        (413, Outcome.PERMANENT),
        (422, Outcome.PERMANENT),
        (408, Outcome.TRANSIENT),
        (429, Outcome.TRANSIENT),
        (500, Outcome.TRANSIENT),
        (502, Outcome.TRANSIENT),
        (503, Outcome.TRANSIENT),
        (504, Outcome.TRANSIENT),
    ],
)
def test_classify(status: int, outcome: Outcome) -> None:
    assert classify(status) is outcome


def test_jitter_is_never_constant_and_spans_the_window() -> None:
    # A known agent shipped a "jitter" that was always zero: draw many delays
    # and check they really spread over [0, ceiling].
    policy = RetryPolicy(base=1.0, cap=60.0)
    rng = random.Random(1234)
    for retry_index, ceiling in [(0, 1.0), (1, 2.0), (3, 8.0), (10, 60.0)]:
        draws = [policy.backoff(retry_index, rng) for _ in range(2000)]
        assert all(0.0 <= d <= ceiling for d in draws)
        assert len(set(draws)) > 1900  # not constant, not a handful of values
        assert min(draws) < ceiling * 0.05
        assert max(draws) > ceiling * 0.95
        # Uniform on [0, c]: the mean is c/2.
        assert statistics.mean(draws) == pytest.approx(ceiling / 2, rel=0.08)


def test_jitter_uses_the_module_rng_by_default() -> None:
    policy = RetryPolicy(base=1.0, cap=10.0)
    draws = {policy.backoff(4) for _ in range(50)}
    assert len(draws) > 45


def test_backoff_is_capped_even_for_huge_attempt_numbers() -> None:
    policy = RetryPolicy(base=2.0, cap=30.0)
    rng = random.Random(7)
    assert all(policy.backoff(10_000, rng) <= 30.0 for _ in range(200))


def test_retry_after_wins_over_backoff_but_is_capped() -> None:
    policy = RetryPolicy(base=1.0, cap=5.0, max_retry_after=120.0)
    assert policy.delay(0, 42.0) == 42.0
    assert policy.delay(0, 10_000.0) == 120.0
    assert 0.0 <= policy.delay(0, None) <= 1.0


def test_parse_retry_after_forms() -> None:
    now = dt.datetime(2026, 4, 9, 2, 0, 0, tzinfo=dt.timezone.utc)
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after("Thu, 09 Apr 2026 02:00:30 GMT", now) == pytest.approx(30.0)
    assert parse_retry_after("Thu, 09 Apr 2026 01:00:00 GMT", now) == 0.0  # in the past
    assert parse_retry_after(None, now) is None
    assert parse_retry_after("", now) is None
    assert parse_retry_after("soon", now) is None
