"""Anomaly detection: size statistics, per-table row counts, drift, restore failure."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from backupagent.analysis.anomalies import (
    AnomalyThresholds,
    analyze_backup,
    restore_failure,
    row_count_anomalies,
    size_anomaly,
)
from backupagent.analysis.history import BackupSample, History
from backupagent.analysis.humanize import human_bytes, percent
from backupagent.api.models import ANOMALY_TYPES, SEVERITIES

NOW = dt.datetime(2024, 6, 1, 12, 0, tzinfo=dt.timezone.utc)
GB = 1_000_000_000


@pytest.fixture
def history(tmp_path: Path):
    with History.in_state_dir(tmp_path) as h:
        yield h


def seed(
    history: History,
    sizes: List[int],
    *,
    compressed: Optional[List[int]] = None,
    rows: Optional[Dict[str, int]] = None,
    first_day_ago: int = 0,
    db: str = "db1",
) -> None:
    """One backup a day, the last one ``first_day_ago + 1`` days before NOW."""
    n = len(sizes)
    for i, size in enumerate(sizes):
        history.record_backup(
            db,
            when=NOW - dt.timedelta(days=first_day_ago + n - i),
            dump_size=size,
            compressed_size=(compressed[i] if compressed else size // 4),
            row_counts=rows or {},
        )


def analyze(history: History, dump: int, compressed: Optional[int] = None, **kw):
    reports = analyze_backup(
        history,
        kw.pop("db", "db1"),
        dump,
        compressed if compressed is not None else dump // 4,
        kw.pop("rows", None),
        kw.pop("schema", None),
        kw.pop("now", NOW),
        **kw,
    )
    for r in reports:
        assert r.type in ANOMALY_TYPES
        assert r.severity in SEVERITIES
    return reports


def test_human_units() -> None:
    assert human_bytes(2_400_000_000) == "2.4 GB"
    assert human_bytes(312_000_000) == "312 MB"
    assert human_bytes(999) == "999 bytes"
    assert human_bytes(1) == "1 byte"
    assert human_bytes(999_999) == "1.0 MB"
    assert human_bytes(10**18) == "1000 PB"
    assert percent(-0.6) == "60%"
    assert percent(0.004) == "0.4%"


def test_fewer_than_five_samples_reports_nothing(history: History) -> None:
    seed(history, [GB] * 4)
    assert analyze(history, GB // 100) == []
    assert len(history.backups("db1")) == 5  # recorded nonetheless
    seed(history, [GB] * 4, db="db2")
    assert analyze(history, GB, db="db2") == []
    # five samples now exist: the next one is judged
    later = NOW + dt.timedelta(hours=1)
    assert [r.severity for r in analyze(history, GB // 100, db="db2", now=later)] == ["critical"]


def test_normal_size_within_two_sigma_is_quiet(history: History) -> None:
    seed(history, [100 * GB, 102 * GB, 98 * GB, 101 * GB, 99 * GB, 100 * GB])
    assert analyze(history, 101 * GB) == []


def test_reference_example_is_critical_with_human_text(history: History) -> None:
    seed(history, [2_400_000_000, 2_420_000_000, 2_380_000_000, 2_410_000_000, 2_390_000_000])
    (r,) = analyze(history, 960_000_000)
    assert r.type == "size_anomaly"
    assert r.severity == "critical"
    assert r.title == "Backup size 60% smaller than average"
    assert r.description.startswith("Expected ~2.4 GB, got 960 MB.")
    assert "average of 5 successful backups in the last 30 days" in r.description


def test_smaller_but_above_half_is_warning(history: History) -> None:
    seed(history, [1000, 1010, 990, 1005, 995] * 2)
    (r,) = analyze(history, 700)
    assert r.severity == "warning"
    assert r.title == "Backup size 30% smaller than average"


def test_larger_is_warning_and_large_multiples_read_as_times(history: History) -> None:
    seed(history, [1000, 1010, 990, 1005, 995])
    (r,) = analyze(history, 1500)
    assert (r.severity, r.title) == ("warning", "Backup size 50% larger than average")
    seed(history, [1000, 1010, 990, 1005, 995], db="db2")
    (r,) = analyze(history, 3200, db="db2")
    assert r.title == "Backup size 3.2 times the average"


def test_zero_variance_tolerates_tiny_changes_but_not_real_ones(history: History) -> None:
    seed(history, [50_000] * 6)
    assert analyze(history, 50_001) == []  # one more row in an idle database
    assert analyze(history, 50_000, now=NOW + dt.timedelta(hours=1)) == []
    (r,) = analyze(history, 56_000, now=NOW + dt.timedelta(hours=2))
    assert r.severity == "warning"


def test_samples_older_than_thirty_days_are_ignored(history: History) -> None:
    # five tiny backups 31+ days ago, then three normal ones: only three count
    seed(history, [10] * 5, first_day_ago=31)
    seed(history, [1000, 1000, 1000])
    assert analyze(history, 1000) == []  # would be "100 times the average" with old samples
    assert analyze(history, 10, now=NOW + dt.timedelta(minutes=1)) == []  # 4 in window: too few


def test_other_databases_do_not_count(history: History) -> None:
    seed(history, [1000] * 10, db="other")
    assert analyze(history, 1) == []


def test_compressed_size_alone_can_be_anomalous(history: History) -> None:
    seed(history, [1000] * 6, compressed=[250, 251, 249, 250, 252, 248])
    (r,) = analyze(history, 1000, 400)
    assert r.title == "Compressed backup size 60% larger than average"
    assert r.description.startswith("Expected ~250 bytes, got 400 bytes.")
    assert r.severity == "warning"


def test_both_sizes_off_give_one_report_led_by_dump(history: History) -> None:
    seed(history, [1000] * 6)
    (r,) = analyze(history, 100, 25)
    assert r.title == "Backup size 90% smaller than average"
    assert "Compressed size also unusual: expected ~250 bytes, got 25 bytes." in r.description


def test_missing_sizes_are_skipped(history: History) -> None:
    samples = [BackupSample(NOW, None, None)] * 6
    assert size_anomaly(None, None, samples) is None
    assert size_anomaly(10, 10, samples) is None


def test_table_dropped_to_zero_with_normal_total_size(history: History) -> None:
    rows = {"public.orders": 10_000, "public.events": 5_000_000}
    seed(history, [GB, GB, GB, GB, GB, GB], rows=rows)
    reports = analyze(history, GB, rows={"public.orders": 0, "public.events": 5_000_000})
    (r,) = reports  # no size anomaly: the dump is dominated by events
    assert r.type == "size_anomaly"
    assert r.severity == "critical"
    assert r.title == "Table public.orders dropped from 10,000 to 0 rows"
    assert "total backup size looked normal" in r.description


def test_sharp_drop_is_warning_and_threshold_configurable(history: History) -> None:
    prev = BackupSample(NOW - dt.timedelta(days=1), row_counts={"orders": 10_000, "tiny": 8})
    (r,) = row_count_anomalies({"orders": 4_000, "tiny": 0}, prev)
    assert r.severity == "warning"
    assert r.title == "Table orders dropped from 10,000 to 4,000 rows"
    assert "fell 60%" in r.description
    assert row_count_anomalies({"orders": 6_000}, prev) == []  # a 40% drop is not sharp
    strict = AnomalyThresholds(row_drop_fraction=0.3, row_zero_min_rows=1)
    found = row_count_anomalies({"orders": 6_000, "tiny": 0}, prev, strict)
    assert [x.title for x in found] == [
        "Table tiny dropped from 8 to 0 rows",
        "Table orders dropped from 10,000 to 6,000 rows",
    ]


def test_growth_and_small_tables_are_quiet() -> None:
    prev = BackupSample(NOW, row_counts={"a": 50, "b": 1000, "queue": 5})
    assert row_count_anomalies({"a": 1, "b": 5000, "queue": 0}, prev) == []
    assert row_count_anomalies({}, prev) == []
    assert row_count_anomalies({"a": 0}, None) == []


def test_vanished_table_is_drift_for_sql_but_zero_for_key_value() -> None:
    prev = BackupSample(NOW, row_counts={"db0": 500, "orders": 500})
    assert row_count_anomalies({"orders": 500}, prev) == []
    (r,) = row_count_anomalies({"orders": 500}, prev, missing_is_zero=True)
    assert r.title == "Table db0 dropped from 500 to 0 rows"


def test_many_dropped_tables_are_one_report() -> None:
    prev = BackupSample(NOW, row_counts={f"t{i:03d}": 1000 for i in range(40)})
    (r,) = row_count_anomalies({f"t{i:03d}": 0 for i in range(40)}, prev)
    assert r.title == "Row counts fell sharply in 40 tables (40 now empty)"
    assert r.severity == "critical"
    assert "... and 20 more tables" in r.description


def test_row_counts_compare_with_previous_backup_only(history: History) -> None:
    seed(history, [GB] * 3, rows={"orders": 10_000})
    history.record_backup(
        "db1", when=NOW - dt.timedelta(hours=1), dump_size=GB, row_counts={"orders": 3_000}
    )
    # 3,000 -> 2,500 is not sharp, though 10,000 -> 2,500 would be
    assert analyze(history, GB, rows={"orders": 2_500}) == []


def test_schema_drift_info_and_warning(history: History) -> None:
    snap1 = {
        "tables": [
            {
                "schema": "public",
                "name": "orders",
                "columns": [{"name": "total", "type": "integer", "nullable": False}],
                "primaryKey": [],
                "indexes": [],
            }
        ]
    }
    assert analyze(history, GB, schema=snap1, now=NOW) == []  # first snapshot: no baseline
    assert history.latest_schema("db1").snapshot == snap1
    assert analyze(history, GB, schema=snap1, now=NOW + dt.timedelta(days=1)) == []
    snap2 = {"tables": [dict(snap1["tables"][0], name="orders"), dict(snap1["tables"][0])]}
    snap2["tables"][1]["name"] = "invoices"
    (r,) = analyze(history, GB, schema=snap2, now=NOW + dt.timedelta(days=2))
    assert (r.type, r.severity, r.title) == (
        "schema_drift",
        "info",
        "Schema changed: 1 table added",
    )
    snap3 = {"tables": [dict(t) for t in snap2["tables"]]}
    snap3["tables"][0]["columns"] = [{"name": "total", "type": "numeric(12,2)", "nullable": False}]
    (r,) = analyze(history, GB, schema=snap3, now=NOW + dt.timedelta(days=3))
    assert r.severity == "warning"
    assert "orders.total: type integer -> numeric(12,2)" in r.description


def test_sample_is_recorded_after_evaluation(history: History) -> None:
    seed(history, [1000] * 4)
    # With itself counted this would be 5 samples and a report; it must be none.
    assert analyze(history, 10) == []
    assert len(history.backups("db1")) == 5


def test_database_label_goes_into_description(history: History) -> None:
    seed(history, [1000] * 5)
    (r,) = analyze(history, 10, database_label="shop (postgresql 127.0.0.1:5432)")
    assert r.description.endswith("\nDatabase: shop (postgresql 127.0.0.1:5432)")


def test_history_failure_never_raises(history: History) -> None:
    history.close()  # every query now fails
    assert analyze(history, 1000, rows={"t": 1}, schema={"tables": []}) == []


def test_restore_failure_is_critical_and_redacted() -> None:
    r = restore_failure(
        "pg_restore: connection to postgresql://app:hunter2@db/x failed",
        database_label="shop",
        backup="s3://bucket/host/pg/shop/2024.dump.zst.age",
    )
    assert (r.type, r.severity) == ("restore_failure", "critical")
    assert r.title == "Backup restore verification failed"
    assert "hunter2" not in r.description
    assert "pg_restore: connection to postgresql://app:***@db/x failed" in r.description
    assert "Backup: s3://bucket/host/pg/shop/2024.dump.zst.age" in r.description
    assert len(restore_failure("x" * 100_000).description) < 4000


def test_thresholds_are_validated() -> None:
    with pytest.raises(ValueError):
        AnomalyThresholds(min_samples=1)
    with pytest.raises(ValueError):
        AnomalyThresholds(row_drop_fraction=1.5)


def test_size_baseline_is_the_latest_max_samples_of_the_window(history: History) -> None:
    """A backup reads at most ``max_samples`` earlier sizes, the newest ones, so
    its work and memory stay flat however often the schedule runs."""
    t = AnomalyThresholds(max_samples=10)
    # An old regime of 100 GB, then ten days at 10 GB. Against the whole
    # window (mean ~62 GB, sigma ~45 GB) 100 GB would pass unnoticed; against
    # the latest ten it is ten times the average.
    seed(history, [100 * GB] * 15 + [10 * GB] * 10)
    later = NOW + dt.timedelta(hours=1)
    (r,) = analyze(history, 100 * GB, thresholds=t, now=later)
    assert r.title == "Backup size 10.0 times the average"
    assert "average of 10 latest successful backups in the last 30 days" in r.description
    assert analyze(history, 100 * GB, thresholds=AnomalyThresholds(), now=later) == []


def test_max_samples_must_cover_min_samples() -> None:
    with pytest.raises(ValueError):
        AnomalyThresholds(min_samples=5, max_samples=4)
