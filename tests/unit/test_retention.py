"""Retention policy: restic-like worked examples, edge cases and properties."""

from __future__ import annotations

import datetime as dt
import random
from types import SimpleNamespace
from typing import List, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backupagent.errors import ConfigInvalid
from backupagent.retention import (
    REASON_EMPTY,
    REASON_NEWEST_GOOD,
    Backup,
    RetentionPolicy,
    day_bucket,
    month_bucket,
    plan,
    week_bucket,
)

UTC = dt.timezone.utc


def mk(when: dt.datetime, name: Optional[str] = None, good: bool = True) -> Backup:
    stamp = when.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    key = f"h/postgresql/app/{stamp}-{name or 'job'}.dump"
    return Backup(
        key, key + ".manifest.json", when, size=100, database="h/postgresql/app", good=good
    )


def at(y: int, m: int, d: int, hh: int = 11, mm: int = 0) -> dt.datetime:
    return dt.datetime(y, m, d, hh, mm, tzinfo=UTC)


def kept_times(result) -> List[dt.datetime]:
    return sorted(k.backup.created_at for k in result.keep)


def removed_times(result) -> List[dt.datetime]:
    return sorted(b.created_at for b in result.remove)


# restic's documented example: one backup every Sunday for 12 weeks ------------------

SUNDAYS = [at(2019, 9, 1) + dt.timedelta(weeks=i) for i in range(12)]  # 2019-09-01 .. 11-17


def test_restic_doc_example_keep_daily_4_keeps_the_last_four_sundays():
    result = plan([mk(t) for t in SUNDAYS], RetentionPolicy(keep_daily=4))
    assert kept_times(result) == [
        at(2019, 10, 27),
        at(2019, 11, 3),
        at(2019, 11, 10),
        at(2019, 11, 17),
    ]
    assert len(result.remove) == 8
    assert removed_times(result)[0] == at(2019, 9, 1)
    assert removed_times(result)[-1] == at(2019, 10, 20)
    assert all(k.reasons == [f"daily {day_bucket(k.backup.created_at)}"] for k in result.keep)


def test_weekly_on_sundays_is_the_same_as_daily():
    backups = [mk(t) for t in SUNDAYS]
    by_week = plan(backups, RetentionPolicy(keep_weekly=4))
    assert kept_times(by_week) == kept_times(plan(backups, RetentionPolicy(keep_daily=4)))
    assert by_week.keep[0].reasons == ["weekly 2019-W46"]


def test_monthly_keeps_the_newest_of_each_month():
    result = plan([mk(t) for t in SUNDAYS], RetentionPolicy(keep_monthly=2))
    assert kept_times(result) == [at(2019, 10, 27), at(2019, 11, 17)]
    assert [k.reasons for k in result.keep] == [["monthly 2019-11"], ["monthly 2019-10"]]


def test_monthly_with_counts_left_keeps_the_oldest_too():
    # 3 months of Sundays, keep_monthly 5: the newest of each month, plus (as
    # restic >= 0.17) the oldest backup because counts are left over
    result = plan([mk(t) for t in SUNDAYS], RetentionPolicy(keep_monthly=5))
    assert kept_times(result) == [
        at(2019, 9, 1),
        at(2019, 9, 29),
        at(2019, 10, 27),
        at(2019, 11, 17),
    ]
    assert result.keep[-1].reasons == ["oldest monthly 2019-09"]


def test_restic_doc_example_daily_backups_daily_weekly_monthly():
    # One backup a day for all of 2019 (restic's "100 years" example, scaled
    # down): keep_daily 7, keep_weekly 5, keep_monthly 12 keeps 7 daily, the
    # weekly ones not already kept (2019-12-31 is a Tuesday in ISO week
    # 2020-W01, so that week and 2019-W52 are covered by the dailies), and the
    # last day of each month (December's is already a daily).
    days = [at(2019, 1, 1) + dt.timedelta(days=i) for i in range(365)]
    result = plan(
        [mk(t) for t in days], RetentionPolicy(keep_daily=7, keep_weekly=5, keep_monthly=12)
    )
    dailies = [at(2019, 12, d) for d in range(25, 32)]
    weeklies = [at(2019, 12, 8), at(2019, 12, 15), at(2019, 12, 22)]
    ends = [(1, 31), (2, 28), (3, 31), (4, 30), (5, 31), (6, 30), (7, 31), (8, 31), (9, 30)]
    month_ends = [at(2019, m, d) for m, d in [*ends, (10, 31), (11, 30)]]
    assert kept_times(result) == sorted(dailies + weeklies + month_ends)
    assert len(result.keep) == 21 and len(result.remove) == 365 - 21
    reasons = {k.backup.created_at: k.reasons for k in result.keep}
    assert reasons[at(2019, 12, 31)] == ["daily 2019-12-31", "weekly 2020-W01", "monthly 2019-12"]
    assert reasons[at(2019, 12, 29)] == ["daily 2019-12-29", "weekly 2019-W52"]
    assert reasons[at(2019, 12, 22)] == ["weekly 2019-W51"]
    assert reasons[at(2019, 1, 31)] == ["monthly 2019-01"]


# keep_last and same-day backups ---------------------------------------------------


def test_keep_last_keeps_the_n_newest():
    backups = [mk(at(2024, 1, 1, h)) for h in range(10)]
    result = plan(backups, RetentionPolicy(keep_last=3))
    assert kept_times(result) == [at(2024, 1, 1, 7), at(2024, 1, 1, 8), at(2024, 1, 1, 9)]
    assert all(k.reasons == ["last"] for k in result.keep)


def test_many_backups_a_day_daily_keeps_the_newest_of_each_day():
    backups = [mk(at(2024, 1, d, h)) for d in (1, 2, 3) for h in (1, 9, 17, 23)]
    result = plan(backups, RetentionPolicy(keep_daily=2))
    assert kept_times(result) == [at(2024, 1, 2, 23), at(2024, 1, 3, 23)]


def test_daily_with_more_count_than_days_keeps_the_oldest_as_restic():
    backups = [mk(at(2024, 1, d, h)) for d in (1, 2) for h in (1, 9, 17)]
    result = plan(backups, RetentionPolicy(keep_daily=3))
    assert kept_times(result) == [at(2024, 1, 1, 1), at(2024, 1, 1, 17), at(2024, 1, 2, 17)]
    assert result.keep[-1].reasons == ["oldest daily 2024-01-01"]


def test_gaps_count_only_days_that_have_backups():
    backups = [mk(at(2024, 1, 1)), mk(at(2024, 1, 10)), mk(at(2024, 2, 20)), mk(at(2023, 6, 1))]
    result = plan(backups, RetentionPolicy(keep_daily=2))
    assert kept_times(result) == [at(2024, 1, 10), at(2024, 2, 20)]


def test_rules_combine_with_or_and_record_every_reason():
    backups = [mk(at(2024, 1, d, h)) for d in range(1, 11) for h in (6, 18)]
    result = plan(backups, RetentionPolicy(keep_last=3, keep_daily=4))
    # last 3: 10th 18h, 10th 6h, 9th 18h; daily 4: 10th, 9th, 8th, 7th (18h each)
    assert kept_times(result) == [
        at(2024, 1, 7, 18),
        at(2024, 1, 8, 18),
        at(2024, 1, 9, 18),
        at(2024, 1, 10, 6),
        at(2024, 1, 10, 18),
    ]
    assert result.keep[0].reasons == ["last", "daily 2024-01-10"]
    assert result.keep[1].reasons == ["last"]
    assert result.keep[2].reasons == ["last", "daily 2024-01-09"]


# UTC days, ISO weeks, year boundaries --------------------------------------------


def test_days_are_utc_days_whatever_the_offset_of_the_timestamp():
    new_york = dt.timezone(dt.timedelta(hours=-5))
    # 23:30 in New York on the 10th is 04:30 UTC on the 11th: same UTC day as 01:00Z
    evening = mk(dt.datetime(2024, 3, 10, 23, 30, tzinfo=new_york), "ny")
    early = mk(at(2024, 3, 11, 1), "utc")
    result = plan([evening, early], RetentionPolicy(keep_daily=1))
    assert [k.backup.job_id or k.backup.key for k in result.keep] == [evening.key]
    assert result.keep[0].reasons == ["daily 2024-03-11"]
    assert result.remove == [early]


def test_dst_change_is_irrelevant_because_buckets_are_utc():
    # Europe's 2024 spring-forward night (31 March): +01:00 then +02:00 local.
    before = dt.datetime(2024, 3, 31, 1, 30, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    after = dt.datetime(2024, 3, 31, 3, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert day_bucket(before) == day_bucket(after) == "2024-03-31"
    result = plan([mk(before, "a"), mk(after, "b")], RetentionPolicy(keep_daily=1))
    assert len(result.keep) == 1 and result.keep[0].backup.created_at == after


@pytest.mark.parametrize(
    ("when", "week"),
    [
        (at(2024, 12, 29), "2024-W52"),  # Sunday
        (at(2024, 12, 30), "2025-W01"),  # Monday: ISO year 2025 already
        (at(2025, 1, 1), "2025-W01"),
        (at(2020, 12, 31), "2020-W53"),  # a 53-week year
        (at(2021, 1, 3), "2020-W53"),  # Sunday of that week, calendar year 2021
        (at(2021, 1, 4), "2021-W01"),
        (at(2027, 1, 1), "2026-W53"),
    ],
)
def test_iso_week_buckets_across_year_boundaries(when, week):
    assert week_bucket(when) == week


def test_weekly_across_the_year_boundary_treats_one_iso_week_as_one():
    backups = [mk(at(2024, 12, 29)), mk(at(2024, 12, 30)), mk(at(2025, 1, 1)), mk(at(2025, 1, 6))]
    result = plan(backups, RetentionPolicy(keep_weekly=2))
    assert kept_times(result) == [at(2025, 1, 1), at(2025, 1, 6)]
    assert removed_times(result) == [at(2024, 12, 29), at(2024, 12, 30)]


def test_month_bucket_is_the_utc_month():
    late = dt.datetime(2024, 1, 31, 23, 0, tzinfo=dt.timezone(dt.timedelta(hours=-3)))
    assert month_bucket(late) == "2024-02"


# empty policies, the newest good backup -------------------------------------------


@pytest.mark.parametrize(
    "policy",
    [
        None,
        RetentionPolicy(),
        RetentionPolicy(0, 0, 0, 0),
        RetentionPolicy(keep_last=0, keep_daily=None),
        SimpleNamespace(keep_last=None, keep_daily=0, keep_weekly=None, keep_monthly=None),
        {},
    ],
)
def test_a_policy_with_every_rule_off_keeps_everything(policy):
    backups = [mk(at(2024, 1, 1) + dt.timedelta(days=i)) for i in range(30)]
    result = plan(backups, policy)
    assert result.remove == []
    assert len(result.keep) == 30
    assert all(k.reasons == [REASON_EMPTY] for k in result.keep)


def test_the_newest_good_backup_is_kept_even_when_newer_ones_are_not_good():
    good = mk(at(2024, 1, 1), "good")
    bad1 = mk(at(2024, 1, 2), "bad1", good=False)
    bad2 = mk(at(2024, 1, 3), "bad2", good=False)
    old = mk(at(2023, 12, 1), "old")
    result = plan([good, bad1, bad2, old], RetentionPolicy(keep_last=1))
    assert [k.backup.key for k in result.keep] == [bad2.key, good.key]
    assert result.keep[1].reasons == [REASON_NEWEST_GOOD]
    assert {b.key for b in result.remove} == {bad1.key, old.key}


def test_one_rule_off_and_another_on_still_keeps_the_newest():
    backups = [mk(at(2024, 1, 1, h)) for h in range(5)]
    result = plan(backups, RetentionPolicy(keep_last=0, keep_daily=1))
    assert kept_times(result) == [at(2024, 1, 1, 4)]


def test_no_backups_no_plan():
    result = plan([], RetentionPolicy(keep_last=1))
    assert result.keep == [] and result.remove == []


# policy validation and inputs -----------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"keep_last": -1}, "retention.keepLast"),
        ({"keep_daily": True}, "retention.keepDaily"),
        ({"keep_weekly": "3"}, "retention.keepWeekly"),
        ({"keep_monthly": 1.5}, "retention.keepMonthly"),
    ],
)
def test_bad_counts_are_refused_naming_the_field(kwargs, field):
    with pytest.raises(ConfigInvalid) as err:
        RetentionPolicy(**kwargs)
    assert field in str(err.value)
    assert "0/null to switch the rule off" in str(err.value)


def test_every_bad_count_is_reported_at_once():
    with pytest.raises(ConfigInvalid) as err:
        RetentionPolicy(keep_last=-1, keep_monthly=-2)
    assert len(err.value.problems) == 2


def test_policy_from_config_object_or_mapping():
    cfg = SimpleNamespace(keep_last=2, keep_daily=7, keep_weekly=None, keep_monthly=6)
    assert RetentionPolicy.from_any(cfg) == RetentionPolicy(2, 7, None, 6)
    assert RetentionPolicy.from_any({"keepLast": 2, "keepDaily": 7}) == RetentionPolicy(2, 7)
    assert RetentionPolicy.from_any({"keep_weekly": 4}) == RetentionPolicy(keep_weekly=4)
    assert RetentionPolicy(2, 7, None, 6).describe() == "keep last 2, daily 7, monthly 6"
    assert "keep everything" in RetentionPolicy().describe()


def test_naive_timestamps_are_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        Backup("k", "k.manifest.json", dt.datetime(2024, 1, 1))


def test_duplicate_keys_are_refused():
    b = mk(at(2024, 1, 1))
    with pytest.raises(ValueError, match="twice"):
        plan([b, b], RetentionPolicy(keep_last=1))


def test_equal_times_are_ordered_by_key_so_the_plan_is_deterministic():
    same = at(2024, 1, 1)
    backups = [mk(same, name) for name in ("a", "c", "b")]
    for _ in range(5):
        random.shuffle(backups)
        result = plan(backups, RetentionPolicy(keep_last=1))
        assert result.keep[0].backup.key.endswith("-c.dump")


# properties ---------------------------------------------------------------------

EPOCH = dt.datetime(2018, 1, 1, tzinfo=UTC)
counts = st.one_of(st.none(), st.integers(min_value=0, max_value=12))
policies = st.builds(RetentionPolicy, counts, counts, counts, counts)


@st.composite
def backup_lists(draw) -> List[Backup]:
    # minutes over ~3 years: dense same-day clusters and long gaps both occur
    offsets = draw(
        st.lists(st.integers(min_value=0, max_value=3 * 366 * 24 * 60), unique=True, max_size=60)
    )
    goods = draw(st.lists(st.booleans(), min_size=len(offsets), max_size=len(offsets)))
    return [
        mk(EPOCH + dt.timedelta(minutes=m), f"j{i}", good=g)
        for i, (m, g) in enumerate(zip(offsets, goods))
    ]


def _newest(backups: List[Backup]) -> Backup:
    return max(backups, key=lambda b: (b.created_at, b.key))


@settings(max_examples=300, deadline=None)
@given(backup_lists(), policies)
def test_kept_and_removed_partition_the_input(backups, policy):
    result = plan(backups, policy)
    kept = [b.key for b in result.kept_backups]
    removed = [b.key for b in result.remove]
    assert not set(kept) & set(removed)
    assert sorted(kept + removed) == sorted(b.key for b in backups)
    assert all(k.reasons for k in result.keep)


@settings(max_examples=300, deadline=None)
@given(backup_lists(), policies)
def test_the_newest_and_the_newest_good_are_always_kept(backups, policy):
    result = plan(backups, policy)
    kept = {b.key for b in result.kept_backups}
    if backups:
        assert _newest(backups).key in kept
    goods = [b for b in backups if b.good]
    if goods:
        assert _newest(goods).key in kept


@settings(max_examples=300, deadline=None)
@given(backup_lists(), policies)
def test_applying_the_plan_then_planning_again_removes_nothing(backups, policy):
    first = plan(backups, policy)
    second = plan(first.kept_backups, policy)
    assert second.remove == []


@settings(max_examples=200, deadline=None)
@given(
    backup_lists(),
    policies,
    st.sampled_from(["keep_last", "keep_daily", "keep_weekly", "keep_monthly"]),
)
def test_a_larger_count_never_keeps_less(backups, policy, attr):
    bigger = RetentionPolicy(**{**policy.__dict__, attr: (getattr(policy, attr) or 0) + 1})
    if policy.empty:
        return  # empty keeps all; bigger keeps a subset of all, by design
    small = {b.key for b in plan(backups, policy).kept_backups}
    large = {b.key for b in plan(backups, bigger).kept_backups}
    assert small <= large


@settings(max_examples=200, deadline=None)
@given(backup_lists(), policies)
def test_each_rule_keeps_at_most_its_count_and_only_bucket_heads(backups, policy):
    result = plan(backups, policy)
    if policy.empty:
        return
    ordered = sorted(backups, key=lambda b: (b.created_at, b.key), reverse=True)
    oldest = ordered[-1] if ordered else None
    for attr, label, bucket in [
        ("keep_daily", "daily", day_bucket),
        ("keep_weekly", "weekly", week_bucket),
        ("keep_monthly", "monthly", month_bucket),
    ]:
        n = getattr(policy, attr) or 0
        by_rule = [
            k.backup for k in result.keep if any(r.startswith(label + " ") for r in k.reasons)
        ]
        oldest_extra = [
            k.backup
            for k in result.keep
            if any(r.startswith(f"oldest {label} ") for r in k.reasons)
        ]
        assert len(by_rule) + len(oldest_extra) <= n
        # the newest backup of each of the n newest buckets, exactly
        heads = []
        for b in ordered:
            if not heads or bucket(heads[-1].created_at) != bucket(b.created_at):
                heads.append(b)
        assert [b.key for b in by_rule] == [b.key for b in heads[:n]]
        assert all(b is oldest for b in oldest_extra)
    n_last = policy.keep_last or 0
    by_last = [k.backup.key for k in result.keep if "last" in k.reasons]
    assert by_last == [b.key for b in ordered[:n_last]]


def test_the_worked_example_in_docs_retention_md():
    backups = [mk(at(2024, 1, 1, 3) + dt.timedelta(days=3 * i), f"job{i}") for i in range(12)]
    result = plan(
        backups, RetentionPolicy(keep_last=2, keep_daily=3, keep_weekly=4, keep_monthly=3)
    )
    got = {k.backup.created_at.strftime("%Y-%m-%d"): k.reasons for k in result.keep}
    assert got == {
        "2024-02-03": ["last", "daily 2024-02-03", "weekly 2024-W05", "monthly 2024-02"],
        "2024-01-31": ["last", "daily 2024-01-31", "monthly 2024-01"],
        "2024-01-28": ["daily 2024-01-28", "weekly 2024-W04"],
        "2024-01-19": ["weekly 2024-W03"],
        "2024-01-13": ["weekly 2024-W02"],
        "2024-01-01": ["oldest monthly 2024-01"],
    }
    assert [b.created_at.strftime("%m-%d") for b in result.remove] == [
        "01-25",
        "01-22",
        "01-16",
        "01-10",
        "01-07",
        "01-04",
    ]


def test_the_config_models_retention_is_accepted_as_is():
    from backupagent.config.model import Retention

    backups = [mk(at(2024, 1, d)) for d in range(1, 11)]
    result = plan(backups, Retention(keep_last=2, keep_daily=None, keep_weekly=1, keep_monthly=0))
    assert result.policy == RetentionPolicy(keep_last=2, keep_weekly=1, keep_monthly=0)
    assert kept_times(result) == [at(2024, 1, 9), at(2024, 1, 10)]
    assert plan(backups, Retention()).remove == []
