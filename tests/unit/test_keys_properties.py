"""Property tests for object keys *through the targets* (tests/unit/test_keys.py
covers the key strings themselves).

Hostile names (a database called ``../../etc``, a job id from a hostile server,
an S3 prefix with ``..``) must never make a target write outside its root or
prefix, and two different databases must never share a retention directory:
retention deletes by listing that directory, so sharing it would let one
database's policy delete another's backups.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backupagent.targets.keys import database_prefix, object_key, sanitize_prefix
from backupagent.targets.local import LocalTarget
from backupagent.targets.s3 import S3Target

T = dt.datetime(2024, 5, 1, 12, 30, 5, tzinfo=dt.timezone.utc)
HOSTILE = [
    "..", "../..", "../../etc/passwd", "/etc/passwd", "a/../b", "a\x00b", "a\nb", "\u202e",
    "$(touch /tmp/pwned)", "`id`", "a;b", "a|b", "~root", "-rf", ".", "", " ", "\\..\\x",
    "x" * 400, "ф", "a/b", "%2e%2e", "C:\\x",
]  # fmt: skip
names = st.sampled_from(HOSTILE) | st.text(max_size=60)
db_ids = st.tuples(names, names, names)  # hostname, dbType, databaseName


class OfflineS3Target(S3Target):
    """The real naming code without a boto3 client (building one takes ~100 ms)."""

    def _make_client(self, credentials: object) -> None:
        return None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(names, names, names, names, names)
def test_local_target_writes_only_below_its_root(
    host: str, db_type: str, name: str, job: str, ext: str
) -> None:
    """Commit a real object under a hostile key and look where it landed."""
    with tempfile.TemporaryDirectory() as top:
        root = Path(top) / "root"
        target = LocalTarget(str(root))
        key = object_key("", host, db_type, name, T, job, ext)
        with target.open_writer(key) as writer:
            writer.write(b"x")
            url = writer.commit()
        written = [
            Path(d, f) for d, _, files in os.walk(top) for f in files
        ]  # everything anywhere under the temp dir
        assert len(written) == 1, written
        real = written[0].resolve()
        assert real.is_relative_to(root.resolve()), real
        assert url == f"file://{real}"
        assert [o.key for o in target.list()] == [key]


@settings(max_examples=400, deadline=None)
@given(names, names, names, names, names, names)
def test_s3_keys_stay_under_the_targets_prefix(
    prefix: str, host: str, db_type: str, name: str, job: str, ext: str
) -> None:
    target = OfflineS3Target("backups", prefix=prefix)
    clean = sanitize_prefix(prefix)
    key = object_key("", host, db_type, name, T, job, ext)
    full = target._full_key(key)
    assert full == (f"{clean}/{key}" if clean else key)
    segments = full.split("/")
    assert all(s not in ("", ".", "..") for s in segments)
    assert target.url_for(key) == f"s3://backups/{full}"
    assert "\x00" not in full and full.isascii()


@settings(max_examples=400, deadline=None)
@given(st.lists(db_ids, min_size=2, max_size=2, unique=True), names)
def test_distinct_databases_never_share_a_retention_directory(pair: list, prefix: str) -> None:
    (h1, t1, n1), (h2, t2, n2) = pair
    a = database_prefix(prefix, h1, t1, n1) + "/"
    b = database_prefix(prefix, h2, t2, n2) + "/"
    assert not a.startswith(b) and not b.startswith(a), (a, b)
    key = object_key(prefix, h1, t1, n1, T, "job", "dump")
    assert key.startswith(a) and not key.startswith(b)
