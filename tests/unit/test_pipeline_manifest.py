"""The manifest: built from a pipeline result, parsed back, strictly checked."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from backupagent.crypto.age import generate_identity, recipient_fingerprint
from backupagent.engines.base import ConnectionSpec, DumpPlan
from backupagent.pipeline.manifest import (
    FORMAT_VERSION,
    ManifestError,
    build_manifest,
    is_compressed,
    is_encrypted,
    manifest_bytes,
    parse_manifest,
    schema_hash,
)
from backupagent.pipeline.run import PipelineResult


class FakeEngine:
    db_type = "postgresql"
    dump_format = "pg_dump custom (-Fc)"
    file_extension = "dump"


def result() -> PipelineResult:
    return PipelineResult(
        dump_size=1000,
        compressed_size=400,
        stored_size=600,
        sha256="ab" * 32,
        encrypted=True,
        compression_level=3,
        durations_ms={"total": 12, "dump": 10, "compress": 5, "encrypt": 1, "upload": 1},
    )


def build(recipients=(), **kw):
    plan = DumpPlan(
        argv=["pg_dump"],
        row_counts={"public.users": 10, "public.orders": 25},
        row_counts_exact=True,
        extra={"serverVersion": "15.6", "toolVersion": "pg_dump (PostgreSQL) 15.6"},
    )
    conn = ConnectionSpec(
        db_type="postgresql",
        host="127.0.0.1",
        port="5432",
        database_name="app",
        user="u",
        password="s3cret-pass",
    )
    return build_manifest(
        engine=FakeEngine(),
        conn=conn,
        plan=plan,
        result=result(),
        job_id="job-1",
        object_key="h/postgresql/app/x.dump.zst.age",
        recipients=list(recipients),
        compression_level=3,
        schedule_id="sch-1",
        database_id="db-1",
        started_at=dt.datetime(2026, 4, 9, 2, 0, 1, 5000, tzinfo=dt.timezone.utc),
        duration_ms=99,
        **kw,
    )


def test_build_encrypted_manifest_round_trips() -> None:
    ident = generate_identity()
    snap = {"tables": [{"schema": "public", "name": "users", "columns": []}]}
    m = build([ident.recipient], schema_snapshot=snap, extra={"hostname": "db1"})
    raw = manifest_bytes(m)
    assert b"s3cret-pass" not in raw  # credentials never reach the manifest
    back = parse_manifest(raw)
    assert back == json.loads(raw)
    assert back["formatVersion"] == FORMAT_VERSION
    assert back["encryption"] == {
        "format": "age-v1",
        "recipientFingerprints": [recipient_fingerprint(ident.recipient)],
    }
    assert back["sizes"] == {"dump": 1000, "compressed": 400, "stored": 600}
    assert back["database"] == {
        "type": "postgresql",
        "name": "app",
        "host": "127.0.0.1",
        "port": "5432",
    }
    assert back["serverVersion"] == "15.6"
    assert back["dumpToolVersion"] == "pg_dump (PostgreSQL) 15.6"
    assert back["rowCounts"] == {"public.users": 10, "public.orders": 25}
    assert back["rowCountsExact"] is True
    assert back["schemaHash"] == schema_hash(snap)
    assert back["schemaHash"].startswith("sha256:")
    assert back["createdAt"] == "2026-04-09T02:00:01.005Z"
    assert back["timings"]["durationMs"] == 99
    assert back["timings"]["stagesMs"]["dump"] == 10
    assert back["compression"] == {"algorithm": "zstd", "level": 3}
    assert back["jobId"] == "job-1" and back["scheduleId"] == "sch-1"
    assert back["databaseId"] == "db-1"
    assert back["extra"] == {"hostname": "db1"}
    assert is_encrypted(back) and is_compressed(back)
    assert back["restoreHint"].startswith("age -d -i")


def test_unencrypted_manifest_carries_a_warning() -> None:
    m = parse_manifest(manifest_bytes(build()))
    assert m["encryption"]["format"] == "none"
    assert "NOT encrypted" in m["encryption"]["warning"]
    assert not is_encrypted(m)


def test_schema_hash_is_order_independent_for_keys() -> None:
    assert schema_hash({"a": 1, "b": [1, 2]}) == schema_hash({"b": [1, 2], "a": 1})
    assert schema_hash({"a": 1}) != schema_hash({"a": 2})
    assert schema_hash(None) is None


@pytest.mark.parametrize(
    "mutate, fragment",
    [
        (lambda m: m.pop("sha256"), "'sha256'"),
        (lambda m: m.__setitem__("sha256", "XYZ"), "sha256"),
        (lambda m: m.__setitem__("formatVersion", 99), "upgrade"),
        (lambda m: m["sizes"].__setitem__("stored", "600"), "sizes.stored"),
        (lambda m: m["sizes"].__setitem__("dump", -1), "negative"),
        (lambda m: m["encryption"].__setitem__("format", "gpg"), "encryption.format"),
        (lambda m: m["compression"].__setitem__("algorithm", "lz4"), "compression.algorithm"),
        (lambda m: m["database"].pop("type"), "database.type"),
        (lambda m: m.__setitem__("rowCounts", {"t": "many"}), "rowCounts"),
    ],
)
def test_parse_rejects_bad_manifests(mutate, fragment: str) -> None:
    m = json.loads(manifest_bytes(build()))
    mutate(m)
    with pytest.raises(ManifestError) as info:
        parse_manifest(json.dumps(m).encode())
    assert fragment in str(info.value)
    assert info.value.code == "MANIFEST_INVALID"


def test_parse_rejects_non_json_and_keeps_unknown_fields() -> None:
    with pytest.raises(ManifestError):
        parse_manifest(b"\xff\xfe")
    with pytest.raises(ManifestError):
        parse_manifest(b"[1, 2]")
    m = json.loads(manifest_bytes(build()))
    m["futureField"] = {"x": 1}
    assert parse_manifest(json.dumps(m).encode())["futureField"] == {"x": 1}
