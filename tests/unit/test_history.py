"""Local backup history: round trips, bounds, concurrency, a corrupt file."""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
from pathlib import Path

import pytest

from backupagent.analysis.history import HISTORY_FILE, History

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)


def test_records_round_trip_oldest_first(tmp_path: Path) -> None:
    with History.in_state_dir(tmp_path) as h:
        assert (tmp_path / HISTORY_FILE).exists()
        h.record_backup(
            "db1", when=T0 + dt.timedelta(days=1), dump_size=20, compressed_size=2, row_counts={}
        )
        h.record_backup("db1", when=T0, dump_size=10, compressed_size=1, row_counts={"t": 5})
        h.record_backup("db2", when=T0, dump_size=99)
        samples = h.backups("db1")
        assert [s.dump_size for s in samples] == [10, 20]
        assert samples[0].row_counts == {"t": 5}
        assert samples[0].timestamp == T0
        assert h.backups("db2")[0].compressed_size is None
        assert h.last_backup("db1").dump_size == 20
        assert h.last_backup("db1", before=T0).dump_size == 10
        assert h.last_backup("nope") is None
        assert h.backups("db1", since=T0 + dt.timedelta(hours=1))[0].dump_size == 20
        assert h.backups("db1", until=T0)[0].dump_size == 10
        assert h.database_ids() == ["db1", "db2"]
        sizes_only = h.backups("db1", row_counts=False)
        assert [(x.dump_size, x.row_counts) for x in sizes_only] == [(10, {}), (20, {})]


def test_history_survives_reopen_and_uses_wal(tmp_path: Path) -> None:
    with History.in_state_dir(tmp_path) as h:
        h.record_backup("db1", when=T0, dump_size=1)
        h.save_schema("db1", {"tables": []}, when=T0)
    with History.in_state_dir(tmp_path) as h:
        assert h.last_backup("db1").dump_size == 1
        assert h.latest_schema("db1").snapshot == {"tables": []}
    con = sqlite3.connect(str(tmp_path / HISTORY_FILE))
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()
    assert (tmp_path / HISTORY_FILE).stat().st_mode & 0o077 == 0


def test_naive_times_are_utc(tmp_path: Path) -> None:
    with History.in_state_dir(tmp_path) as h:
        h.record_backup("db1", when=dt.datetime(2024, 1, 1), dump_size=1)
        assert h.last_backup("db1").timestamp == T0


def test_latest_schema_replaces_previous(tmp_path: Path) -> None:
    with History.in_state_dir(tmp_path) as h:
        assert h.latest_schema("db1") is None
        first = h.save_schema("db1", {"tables": [{"schema": "s", "name": "a"}]}, when=T0)
        second = h.save_schema("db1", {"tables": []}, when=T0 + dt.timedelta(days=1))
        assert first != second
        rec = h.latest_schema("db1")
        assert rec.hash == second
        assert rec.snapshot == {"tables": []}
        assert rec.timestamp == T0 + dt.timedelta(days=1)


def test_rows_are_bounded_by_count_and_age(tmp_path: Path) -> None:
    with History.in_state_dir(tmp_path, max_age_days=10, max_rows_per_database=3) as h:
        h.save_schema("old-db", {"tables": []}, when=T0)
        for day in range(8):
            h.record_backup("db1", when=T0 + dt.timedelta(days=day), dump_size=day)
        assert [s.dump_size for s in h.backups("db1")] == [5, 6, 7]
        # 20 days later: everything older than 10 days goes, other databases too.
        h.record_backup("db2", when=T0 + dt.timedelta(days=20), dump_size=1)
        assert h.backups("db1") == []
        assert h.latest_schema("old-db") is None
        assert len(h.backups("db2")) == 1


def test_bounds_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        History(tmp_path / "h.db", max_rows_per_database=0)


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    with History.in_state_dir(tmp_path) as h:
        errors = []

        def work(n: int) -> None:
            try:
                for i in range(50):
                    h.record_backup(
                        f"db{n}",
                        when=T0 + dt.timedelta(minutes=i),
                        dump_size=i,
                        row_counts={"t": i},
                    )
                    h.backups(f"db{n}")
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        for n in range(4):
            assert len(h.backups(f"db{n}")) == 50
    # a second handle on the same file (another process, in real life) sees it all
    with History.in_state_dir(tmp_path) as other:
        assert len(other.backups("db3")) == 50


def test_corrupt_file_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / HISTORY_FILE
    path.write_bytes(b"this is not a sqlite database, just garbage bytes" * 100)
    with History(path) as h:
        h.record_backup("db1", when=T0, dump_size=1)
        assert h.last_backup("db1").dump_size == 1
    aside = list(tmp_path.glob(HISTORY_FILE + ".corrupt-*"))
    assert len(aside) == 1
    assert aside[0].read_bytes().startswith(b"this is not")


def test_page_cache_is_bounded_small(tmp_path: Path) -> None:
    """SQLite's default 2 MB cache per connection only fills as history grows:
    RSS creep in a long-running daemon (docs/performance.md, "Soak")."""
    from backupagent.analysis.history import CACHE_KIB

    with History.in_state_dir(tmp_path) as h:
        assert h._con.execute("PRAGMA cache_size").fetchone()[0] == -CACHE_KIB
    assert CACHE_KIB <= 512


def test_latest_keeps_the_newest_samples_oldest_first(tmp_path: Path) -> None:
    base = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    with History.in_state_dir(tmp_path) as h:
        for i in range(8):
            h.record_backup(
                "db", when=base + dt.timedelta(hours=i), dump_size=i, compressed_size=i,
                row_counts={},
            )  # fmt: skip
        got = h.backups("db", latest=3, row_counts=False)
        assert [s.dump_size for s in got] == [5, 6, 7]
        assert [s.dump_size for s in h.backups("db", until=base + dt.timedelta(hours=4),
                                                latest=2)] == [3, 4]  # fmt: skip
        assert len(h.backups("db")) == 8
