"""Object keys: nothing from config can escape the prefix or the target directory."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backupagent.targets.base import validate_key
from backupagent.targets.keys import (
    MAX_SEGMENT,
    database_prefix,
    manifest_key,
    object_key,
    parse_backup_name,
    sanitize_prefix,
    sanitize_segment,
)

T = dt.datetime(2024, 5, 1, 12, 30, 5, tzinfo=dt.timezone.utc)
NASTY = ["..", ".", "", "/", "\\", "a/../b", "\x00", "\n", ".hidden", "-rf", "x" * 500, "ü", "a b"]

text = st.text(max_size=300)
aware = st.datetimes(timezones=st.just(dt.timezone.utc))


def test_layout_of_a_clean_key() -> None:
    key = object_key(
        "backups", "db1.example.com", "postgresql", "app", T, "0b6c-1f7e", "dump.zst.age"
    )
    assert key == "backups/db1.example.com/postgresql/app/20240501T123005Z-0b6c-1f7e.dump.zst.age"
    assert manifest_key(key) == key + ".manifest.json"
    assert object_key("", "h", "redis", "0", T, "j", "rdb") == "h/redis/0/20240501T123005Z-j.rdb"


def test_timestamp_converted_to_utc_and_naive_refused() -> None:
    plus2 = dt.timezone(dt.timedelta(hours=2))
    key = object_key("", "h", "p", "d", dt.datetime(2024, 5, 1, 14, 30, 5, tzinfo=plus2), "j", "x")
    assert "/20240501T123005Z-j.x" in key
    with pytest.raises(ValueError, match="timezone-aware"):
        object_key("", "h", "p", "d", dt.datetime(2024, 5, 1), "j", "x")


@pytest.mark.parametrize("bad", NASTY)
def test_nasty_segments_become_safe_and_distinct(bad: str) -> None:
    clean = sanitize_segment(bad)
    assert clean and "/" not in clean and "\\" not in clean
    assert not clean.startswith(".") and not clean.startswith("-")
    assert clean not in (".", "..")
    assert len(clean) <= MAX_SEGMENT
    assert clean == sanitize_segment(bad)  # deterministic


def test_clean_names_are_kept_and_collisions_are_split() -> None:
    assert sanitize_segment("my_db-2.prod") == "my_db-2.prod"
    assert sanitize_segment("a/b") != sanitize_segment("a_b")
    assert sanitize_segment("a/b").startswith("a_b-")
    assert sanitize_segment("..") != sanitize_segment("__")
    assert sanitize_prefix("/backups//prod/") == "backups/prod"
    assert sanitize_prefix("") == ""
    assert sanitize_prefix("../etc").split("/")[1] == "etc"


def test_parse_backup_name_round_trip() -> None:
    key = object_key("p", "h", "pg", "d", T, "job.with.dots", "dump.zst.age")
    parsed = parse_backup_name(key)
    assert parsed is not None
    assert parsed.timestamp == T
    assert parsed.ext == "dump.zst.age"
    assert parsed.job_id.startswith("job_with_dots-")
    assert "." not in parsed.job_id
    assert parse_backup_name(manifest_key(key)) is None
    assert parse_backup_name("h/x/random-file.txt") is None


@settings(max_examples=300, deadline=None)
@given(text, text, text, text, aware, text, text)
def test_key_never_escapes(
    prefix: str, host: str, db_type: str, name: str, ts: dt.datetime, job: str, ext: str
) -> None:
    key = object_key(prefix, host, db_type, name, ts, job, ext)
    clean_prefix = sanitize_prefix(prefix)
    segments = key.split("/")
    prefix_segments = clean_prefix.split("/") if clean_prefix else []
    assert key.startswith(clean_prefix + "/" if clean_prefix else "")
    assert len(segments) == len(prefix_segments) + 4
    assert segments[: len(prefix_segments)] == prefix_segments
    assert all(s not in ("", ".", "..") and not s.startswith(".") for s in segments)
    assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in key)
    assert "\\" not in key and "\x00" not in key
    assert key.isascii()
    validate_key(key)  # every generated key is one both targets accept
    validate_key(manifest_key(key))
    assert key == object_key(prefix, host, db_type, name, ts, job, ext)
    assert key.startswith(database_prefix(prefix, host, db_type, name) + "/")
    parsed = parse_backup_name(key)
    assert parsed is not None and parsed.timestamp == ts.replace(microsecond=0)


@settings(max_examples=300, deadline=None)
@given(st.lists(text, min_size=2, max_size=2, unique=True))
def test_different_names_different_segments(pair: list) -> None:
    a, b = pair
    assert sanitize_segment(a) != sanitize_segment(b)
