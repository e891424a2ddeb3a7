"""Retention applied to real targets: a local directory and S3 on SeaweedFS.

Fake backups (a few bytes each) with manifests are written through the
target's own writer, retention is applied, and the objects that remain are
checked key by key.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any, Dict, Iterator, Optional, Set

import pytest

from backupagent.jobs.prune import (
    apply_retention,
    format_plan,
    list_backups,
    parse_created_at,
    prune_command_impl,
    scan,
)
from backupagent.retention import REASON_NEWEST_GOOD, RetentionError, RetentionPolicy
from backupagent.targets.base import TargetError
from backupagent.targets.keys import database_prefix, manifest_key, object_key
from backupagent.targets.local import LocalTarget
from backupagent.targets.s3 import S3Target

pytestmark = pytest.mark.integration

UTC = dt.timezone.utc
DB_A = database_prefix("", "host1", "postgresql", "app")
DB_B = database_prefix("", "host1", "postgresql", "other")


@pytest.fixture(params=["local", "s3"])
def target(request: Any, tmp_path: Any) -> Any:
    if request.param == "local":
        return LocalTarget(str(tmp_path / "root"))
    s3 = request.getfixturevalue("s3_server")
    return S3Target(
        s3.make_bucket(),
        "backups/prod",
        region=s3.region,
        endpoint_url=s3.endpoint_url,
        credentials={"access_key_id": s3.access_key, "secret_access_key": s3.secret_key},
    )


def put(target: Any, key: str, data: bytes) -> None:
    with target.open_writer(key) as writer:
        writer.write(data)
        writer.commit()


def keys(target: Any, prefix: str = "") -> Set[str]:
    return {info.key for info in target.list(prefix)}


def make_backup(
    target: Any,
    when: dt.datetime,
    job: str,
    db: str = "app",
    manifest: Optional[Dict[str, Any]] = None,
    raw_manifest: Optional[bytes] = None,
    with_manifest: bool = True,
) -> str:
    key = object_key("", "host1", "postgresql", db, when, job, "dump.zst.age")
    put(target, key, b"backup-bytes-" + job.encode())
    if with_manifest:
        body = raw_manifest
        if body is None:
            doc = {"createdAt": when.strftime("%Y-%m-%dT%H:%M:%S.000Z"), "jobId": job}
            doc.update(manifest or {})
            body = json.dumps(doc).encode()
        put(target, manifest_key(key), body)
    return key


def at(d: int, h: int = 3, month: int = 1) -> dt.datetime:
    return dt.datetime(2024, month, d, h, 0, tzinfo=UTC)


def test_apply_keeps_exactly_what_the_policy_says_and_deletes_pairs(target, caplog):
    daily = {d: make_backup(target, at(d), f"d{d}") for d in range(1, 11)}  # Jan 1..10 03:00
    extra = make_backup(target, at(10, 15), "late")  # a second one on Jan 10
    other_db = make_backup(target, at(1), "b1", db="other")
    orphan = make_backup(target, at(2, 5), "inflight", with_manifest=False)
    before = keys(target)

    caplog.set_level(logging.INFO, logger="backupagent.jobs.prune")
    result = apply_retention(target, DB_A, RetentionPolicy(keep_last=2, keep_daily=4))

    # last 2: Jan 10 15:00 and 03:00; daily 4: Jan 10 (15:00), 9, 8, 7
    kept = {extra, daily[10], daily[9], daily[8], daily[7]}
    gone = {daily[d] for d in range(1, 7)}
    assert {b.key for b in result.kept_backups} == kept
    assert {b.key for b in result.remove} == gone
    assert {b.key for b in result.deleted} == gone
    assert result.errors == []
    expected = before - gone - {manifest_key(k) for k in gone}
    assert keys(target) == expected
    # the other database and the manifest-less object are untouched
    assert other_db in keys(target) and orphan in keys(target)
    assert [o.key for o in result.orphans] == [orphan]
    # every deletion is logged, with the key
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for key in gone:
        assert f"deleted {key} and its manifest" in logged


def test_dry_run_deletes_nothing(target):
    for d in range(1, 8):
        make_backup(target, at(d), f"d{d}")
    before = keys(target)
    result = apply_retention(target, DB_A, RetentionPolicy(keep_last=1), dry_run=True)
    assert len(result.remove) == 6 and result.deleted == []
    assert result.dry_run
    assert keys(target) == before
    text = format_plan(result)
    assert text.count("would remove") == 6
    assert "Would remove 6 backup(s)" in text
    assert "dry run: nothing deleted" in text


def test_a_second_run_deletes_nothing_more(target):
    for d in range(1, 15):
        make_backup(target, at(d), f"d{d}")
    policy = RetentionPolicy(keep_daily=3, keep_weekly=2)
    first = apply_retention(target, DB_A, policy)
    assert first.deleted
    after_first = keys(target)
    second = apply_retention(target, DB_A, policy)
    assert second.remove == [] and keys(target) == after_first


def test_no_policy_or_empty_policy_deletes_nothing(target):
    for d in range(1, 5):
        make_backup(target, at(d), f"d{d}")
    before = keys(target)
    for policy in (None, RetentionPolicy(), RetentionPolicy(0, 0, 0, 0)):
        result = apply_retention(target, DB_A, policy)
        assert result.remove == [] and len(result.keep) == 4
    assert keys(target) == before


def test_manifest_created_at_wins_over_the_name(target):
    # named Jan 1, but the manifest says Jan 20: it is the newest backup
    renamed = make_backup(target, at(1), "a", manifest={"createdAt": "2024-01-20T03:00:00.5Z"})
    newer_by_name = make_backup(target, at(5), "b")
    backups = list_backups(target, "")
    assert [b.key for b in backups] == [renamed, newer_by_name]
    assert backups[0].created_at == dt.datetime(2024, 1, 20, 3, 0, 0, 500000, tzinfo=UTC)
    result = apply_retention(target, DB_A, RetentionPolicy(keep_last=1))
    assert [b.key for b in result.deleted] == [newer_by_name]


def test_unreadable_manifests_do_not_shield_the_newest_good_backup(target):
    good = make_backup(target, at(1), "good")
    old = make_backup(target, at(1, 1), "old")
    bad1 = make_backup(target, at(2), "bad1", raw_manifest=b"{not json")
    bad2 = make_backup(target, at(3), "bad2", raw_manifest=b"[1, 2]")
    result = apply_retention(target, DB_A, RetentionPolicy(keep_last=1))
    reasons = {k.backup.key: k.reasons for k in result.keep}
    assert reasons == {bad2: ["last"], good: [REASON_NEWEST_GOOD]}
    assert {b.key for b in result.deleted} == {bad1, old}
    assert good in keys(target) and manifest_key(good) in keys(target)
    assert "manifest unreadable" in format_plan(result)


def test_a_crash_between_the_two_deletes_is_cleaned_up_next_run(target):
    keep = make_backup(target, at(5), "keep")
    half = make_backup(target, at(1), "half")
    # what an interrupted deletion leaves: the object gone, its manifest still there
    target.delete(half)
    result = apply_retention(target, DB_A, RetentionPolicy(keep_last=1), dry_run=True)
    assert result.dangling_manifests == [manifest_key(half)]
    assert manifest_key(half) in keys(target)
    result = apply_retention(target, DB_A, RetentionPolicy(keep_last=1))
    assert result.deleted_manifests == [manifest_key(half)]
    assert keys(target) == {keep, manifest_key(keep)}


def test_objects_without_a_manifest_are_never_deleted(target):
    for d in range(1, 6):
        make_backup(target, at(d, 1), f"o{d}", with_manifest=False)
    put(target, f"{DB_A}/README.txt", b"not a backup")
    newest = make_backup(target, at(9), "new")
    before = keys(target)
    result = apply_retention(target, DB_A, RetentionPolicy(keep_last=1))
    assert result.remove == [] and [b.key for b in result.kept_backups] == [newest]
    assert len(result.orphans) == 6
    assert keys(target) == before
    assert "Not touched (6 without a usable manifest)" in format_plan(result)


def test_prune_command_applies_the_policy_per_database(target):
    a = [make_backup(target, at(d), f"a{d}") for d in range(1, 6)]
    b = [make_backup(target, at(d), f"b{d}", db="other") for d in range(1, 4)]
    result = prune_command_impl(target, "", {"keepLast": 2}, dry_run=True)
    assert {x.key for x in result.kept_backups} == {a[4], a[3], b[2], b[1]}
    assert {x.key for x in result.remove} == {a[0], a[1], a[2], b[0]}
    text = format_plan(result)
    assert f"{DB_A}: keep 2, remove 3" in text
    assert f"{DB_B}: keep 2, remove 1" in text
    result = prune_command_impl(target, "", {"keepLast": 2})
    assert len(result.deleted) == 4
    remaining = {k for k in keys(target) if not k.endswith(".manifest.json")}
    assert remaining == {a[4], a[3], b[2], b[1]}
    assert "Removed 4 backup(s)" in format_plan(result)


@pytest.mark.parametrize("suffix", ["", "/"])
def test_a_prefix_never_matches_a_sibling_directory(target, suffix):
    mine = [make_backup(target, at(d), f"m{d}") for d in range(1, 4)]
    sibling = [make_backup(target, at(d), f"s{d}", db="app2") for d in range(1, 4)]
    nested = f"{DB_A}/nested/20240101T030000Z-n.dump"
    put(target, nested, b"x")
    put(target, manifest_key(nested), b'{"createdAt": "2024-01-01T03:00:00Z"}')
    apply_retention(target, DB_A + suffix, RetentionPolicy(keep_last=1))
    assert {nested, manifest_key(nested)} <= keys(target)
    assert all(k in keys(target) for k in sibling)
    assert mine[0] not in keys(target)


class FlakyTarget:
    """A real target whose delete or read fails for chosen keys (fault injection)."""

    def __init__(self, inner: Any, fail_delete: Set[str] = frozenset(), fail_read: bool = False):
        self.inner = inner
        self.fail_delete = set(fail_delete)
        self.fail_read = fail_read

    def list(self, prefix: str = "") -> Iterator[Any]:
        return self.inner.list(prefix)

    def open_reader(self, key: str) -> Any:
        if self.fail_read:
            raise TargetError(f"reading {key} failed: connection reset")
        return self.inner.open_reader(key)

    def delete(self, key: str) -> None:
        if key in self.fail_delete:
            raise TargetError(f"deleting {key} failed: access denied")
        self.inner.delete(key)


def test_a_failed_delete_keeps_the_manifest_and_carries_on(tmp_path):
    inner = LocalTarget(str(tmp_path / "root"))
    olds = [make_backup(inner, at(d), f"d{d}") for d in range(1, 4)]
    newest = make_backup(inner, at(9), "new")
    flaky = FlakyTarget(inner, fail_delete={olds[1]})
    result = apply_retention(flaky, DB_A, RetentionPolicy(keep_last=1))
    assert {b.key for b in result.deleted} == {olds[0], olds[2]}
    assert len(result.errors) == 1 and olds[1] in result.errors[0]
    # the failed one is still a whole pair, so the next run simply retries it
    assert keys(inner) == {newest, manifest_key(newest), olds[1], manifest_key(olds[1])}
    assert "remove FAILED" in format_plan(result)
    apply_retention(inner, DB_A, RetentionPolicy(keep_last=1))
    assert keys(inner) == {newest, manifest_key(newest)}


def test_a_failed_manifest_read_stops_before_deleting_anything(tmp_path):
    inner = LocalTarget(str(tmp_path / "root"))
    for d in range(1, 4):
        make_backup(inner, at(d), f"d{d}")
    before = keys(inner)
    with pytest.raises(RetentionError, match="nothing was deleted"):
        apply_retention(FlakyTarget(inner, fail_read=True), DB_A, RetentionPolicy(keep_last=1))
    assert keys(inner) == before


def test_scan_pairs_and_sorts(tmp_path):
    target = LocalTarget(str(tmp_path / "root"))
    k1 = make_backup(target, at(1), "x")
    k2 = make_backup(target, at(2), "y")
    inv = scan(target, DB_A, direct_only=True)
    assert sorted(b.key for b in inv.backups) == [k1, k2]
    assert all(b.good and b.manifest and b.manifest["jobId"] for b in inv.backups)
    assert inv.backups[0].database == DB_A
    assert inv.backups[0].manifest_size > 0 and inv.backups[0].size > 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-02T03:04:05Z", dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2024-01-02T03:04:05.123Z", dt.datetime(2024, 1, 2, 3, 4, 5, 123000, tzinfo=UTC)),
        ("2024-01-02T03:04:05.123456789Z", dt.datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)),
        ("2024-01-02T05:04:05+02:00", dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2024-01-02T03:04:05", dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2024-13-02T03:04:05Z", None),
        ("yesterday", None),
        (1700000000, None),
        (None, None),
    ],
)
def test_parse_created_at(text, expected):
    assert parse_created_at(text) == expected
