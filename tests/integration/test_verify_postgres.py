"""Restore verification of real PostgreSQL backups in a real Docker engine.

Backups are made by the real job (pg_dump -> zstd -> age -> local target)
from the session's PostgreSQL server; verification restores the stored object
into the locally built ``backupagent-test/postgres:15`` image (the official
image's contract). Every test also checks that no labelled container is left.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

from backupagent.config.model import VerificationCheckSpec
from backupagent.crypto.keys import generate_identity
from backupagent.engines.base import parse_database_url
from backupagent.jobs.backup import BackupSpec, run_backup
from backupagent.report.local import LocalReporter
from backupagent.targets.local import LocalTarget
from backupagent.verify.container import LABEL, ManagedContainer, cleanup_leftovers
from backupagent.verify.run import verify_backup

pytestmark = pytest.mark.integration


def managed(client: Any) -> List[Any]:
    return client.containers.list(all=True, filters={"label": f"{LABEL}=true"})


@pytest.fixture
def docker_client(docker_engine: Any) -> Iterator[Any]:
    client = docker_engine.client
    cleanup_leftovers(client)
    yield client
    left = managed(client)
    cleanup_leftovers(client)
    assert left == [], f"verification containers left behind: {[c.name for c in left]}"


def make_backup(db: Any, tmp_path: Path, recipients: List[str]) -> Dict[str, Any]:
    target = LocalTarget(tmp_path / "target")
    spec = BackupSpec(
        conn=parse_database_url(db.dsn),
        target=target,
        database_id="db-1",
        target_id="t-1",
        hostname="verify-host",
        recipients=recipients,
    )
    result = run_backup(spec, LocalReporter(tmp_path / "state"))
    assert result.ok, result.error_message
    return {"target": target, "key": result.details["objectKey"], **result.details}


@pytest.fixture
def identity() -> Any:
    return generate_identity()


@pytest.fixture
def backup(pg_database: Any, tmp_path: Path, identity: Any) -> Dict[str, Any]:
    pg_database.psql(
        "CREATE TABLE empty_one (k text PRIMARY KEY);"
        "CREATE INDEX orders_amount ON orders (amount);"
        "CREATE ROLE verify_reader_x NOLOGIN;"
        "GRANT SELECT ON customers TO verify_reader_x;"
    )
    try:
        return make_backup(pg_database, tmp_path, [identity.recipient])
    finally:
        pg_database.psql("DROP OWNED BY verify_reader_x; DROP ROLE verify_reader_x;")


def test_good_backup_passes_every_check(
    backup: Dict[str, Any], identity: Any, postgres_image: str, docker_client: Any, pg_database
) -> None:
    from backupagent.engines.postgresql import PostgresEngine

    snapshot = PostgresEngine().schema_snapshot(parse_database_url(pg_database.dsn))
    checks = (
        VerificationCheckSpec(
            check_type="custom_query",
            check_name="order total",
            query="SELECT sum(amount) FROM orders",
            expected_value="487.50",
        ),
        VerificationCheckSpec(
            check_type="custom_query",
            check_name="customers",
            query="SELECT count(*) FROM customers",
            expected_value="10",
        ),
    )
    out = verify_backup(
        backup["target"],
        backup["key"],
        backup["manifest"],
        image=postgres_image,
        identities=[identity],
        checks=checks,
        schema_snapshot=snapshot,
        timeout=300,
        job_id="job-good",
    )
    assert out.status == "passed", (out.details, out.report)
    assert out.path_taken == "stored-object"
    assert out.report.containerId and len(out.report.containerId) == 64
    assert out.report.restoreDurationMs > 0
    by_name = {(c.checkType, c.checkName): c for c in out.report.checks}
    assert by_name[("row_count", "public.customers")].actualValue == "10"
    assert by_name[("row_count", "public.orders")].expectedValue == "25"
    assert by_name[("row_count", "public.orders")].deltaPct == 0.0
    assert by_name[("row_count", "public.empty_one")].actualValue == "0"
    assert by_name[("schema_match", "schema")].status == "passed"
    assert by_name[("custom_query", "order total")].actualValue == "487.50"
    assert all(c.status == "passed" for c in out.report.checks), out.report.checks
    assert out.details["storedSha256"] == backup["manifest"]["sha256"]
    assert out.details["encrypted"] is True
    assert not out.anomaly_due
    # the report serializes as the protocol's body
    from dataclasses import asdict

    body = json.loads(json.dumps(asdict(out.report)))
    assert set(body) == {"status", "containerId", "restoreDurationMs", "checks"}


def test_schema_hash_is_used_without_a_snapshot(
    backup: Dict[str, Any], identity: Any, postgres_image: str, docker_client: Any
) -> None:
    manifest = dict(backup["manifest"])
    assert manifest.get("schemaHash"), "the job records the dump-time schema hash"
    out = verify_backup(
        backup["target"], backup["key"], manifest, image=postgres_image, identities=[identity]
    )
    schema = next(c for c in out.report.checks if c.checkType == "schema_match")
    assert schema.status == "passed", schema


def test_wrong_custom_query_expectation_fails_with_expected_and_actual(
    backup: Dict[str, Any], identity: Any, postgres_image: str, docker_client: Any
) -> None:
    checks = (
        VerificationCheckSpec(
            check_type="custom_query",
            check_name="customers",
            query="SELECT count(*) FROM customers",
            expected_value="11",
        ),
        VerificationCheckSpec(
            check_type="custom_query",
            check_name="writes refused",
            query="DELETE FROM orders",
            expected_value="",
        ),
    )
    out = verify_backup(
        backup["target"],
        backup["key"],
        backup["manifest"],
        image=postgres_image,
        identities=[identity],
        checks=checks,
    )
    assert out.status == "failed"
    assert not out.anomaly_due
    bad = {c.checkName: c for c in out.report.checks if c.checkType == "custom_query"}
    assert bad["customers"].status == "failed"
    assert (bad["customers"].expectedValue, bad["customers"].actualValue) == ("11", "10")
    assert bad["customers"].deltaPct == pytest.approx(-9.0909, abs=1e-3)
    assert bad["writes refused"].status == "failed"
    assert "read-only" in bad["writes refused"].actualValue
    # row counts still passed: the data itself is fine
    assert all(c.status == "passed" for c in out.report.checks if c.checkType == "row_count")


def test_row_count_mismatch_fails(
    backup: Dict[str, Any], identity: Any, postgres_image: str, docker_client: Any
) -> None:
    manifest = json.loads(json.dumps(backup["manifest"]))
    manifest["rowCounts"]["public.orders"] = 30  # what the dump claimed vs what restores
    out = verify_backup(
        backup["target"], backup["key"], manifest, image=postgres_image, identities=[identity]
    )
    assert out.status == "failed"
    orders = next(c for c in out.report.checks if c.checkName == "public.orders")
    assert (orders.status, orders.expectedValue, orders.actualValue) == ("failed", "30", "25")
    assert orders.deltaPct == pytest.approx(-16.6667, abs=1e-3)


def _flip_byte(target: LocalTarget, key: str, tmp_path: Path, where: float) -> None:
    path = Path(target.url_for(key).replace("file://", ""))
    if not path.is_file():
        path = tmp_path / "target" / key
    data = bytearray(path.read_bytes())
    i = int(len(data) * where)
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("where", [0.5, 0.999])
def test_corrupted_stored_object_is_an_error(
    backup: Dict[str, Any],
    identity: Any,
    postgres_image: str,
    docker_client: Any,
    tmp_path: Path,
    where: float,
) -> None:
    _flip_byte(backup["target"], backup["key"], tmp_path, where)
    out = verify_backup(
        backup["target"],
        backup["key"],
        backup["manifest"],
        image=postgres_image,
        identities=[identity],
    )
    assert out.status == "error", out.report
    assert out.anomaly_due
    assert out.details["errorCode"] in ("DECRYPT_FAIL", "CHECKSUM_MISMATCH", "DECOMPRESS_FAIL")
    assert out.report.containerId


def test_unencrypted_corruption_is_caught_by_sha_or_zstd(
    pg_database: Any, tmp_path: Path, postgres_image: str, docker_client: Any
) -> None:
    b = make_backup(pg_database, tmp_path, [])
    _flip_byte(b["target"], b["key"], tmp_path, 0.5)
    out = verify_backup(b["target"], b["key"], b["manifest"], image=postgres_image)
    assert out.status == "error"
    assert out.details["errorCode"] in ("CHECKSUM_MISMATCH", "DECOMPRESS_FAIL", "RESTORE_FAIL")


def test_no_identity_uses_the_spool_and_still_checks_the_sha(
    backup: Dict[str, Any],
    identity: Any,
    pg_database: Any,
    postgres_image: str,
    docker_client: Any,
    tmp_path: Path,
) -> None:
    from backupagent.engines.postgresql import PostgresEngine

    spool = tmp_path / "spool.dump"
    conn = parse_database_url(pg_database.dsn)
    engine = PostgresEngine()
    with engine.prepare_dump(conn, tmp_path) as plan:
        import subprocess

        with open(spool, "wb") as f:
            subprocess.run(plan.argv, env=plan.env, stdout=f, check=True)
    out = verify_backup(
        backup["target"],
        backup["key"],
        backup["manifest"],
        image=postgres_image,
        identities=[],
        spool_path=spool,
    )
    assert out.status == "passed", out.details
    assert out.path_taken == "local-spool"
    assert out.details["storedSha256"] == backup["manifest"]["sha256"]

    # an identity that does not match the recipients also falls back to the spool
    out = verify_backup(
        backup["target"],
        backup["key"],
        backup["manifest"],
        image=postgres_image,
        identities=[generate_identity()],
        spool_path=spool,
    )
    assert (out.status, out.path_taken) == ("passed", "local-spool")

    # ... and a corrupted stored object is still caught on that path
    _flip_byte(backup["target"], backup["key"], tmp_path, 0.5)
    out = verify_backup(
        backup["target"],
        backup["key"],
        backup["manifest"],
        image=postgres_image,
        identities=[],
        spool_path=spool,
    )
    assert out.status == "error"
    assert out.details["errorCode"] == "CHECKSUM_MISMATCH"
    assert out.path_taken == "local-spool"


def test_no_identity_and_no_spool_is_a_clear_error(
    backup: Dict[str, Any], postgres_image: str, docker_client: Any
) -> None:
    out = verify_backup(
        backup["target"], backup["key"], backup["manifest"], image=postgres_image, identities=[]
    )
    assert out.status == "error"
    assert out.details["errorCode"] == "VERIFY_NO_SOURCE"
    assert "identityFile" in out.details["errorMessage"]


def test_timeout_kills_and_removes_the_container(
    backup: Dict[str, Any], identity: Any, postgres_image: str, docker_client: Any
) -> None:
    started = time.monotonic()
    out = verify_backup(
        backup["target"],
        backup["key"],
        backup["manifest"],
        image=postgres_image,
        identities=[identity],
        timeout=1.5,
    )
    took = time.monotonic() - started
    assert out.status == "error"
    assert out.details["errorCode"] == "VERIFY_TIMEOUT", out.details
    assert out.anomaly_due
    assert took < 30
    assert managed(docker_client) == []


def test_cancel_removes_the_container(
    backup: Dict[str, Any], identity: Any, postgres_image: str, docker_client: Any
) -> None:
    import threading

    from backupagent.jobs.result import CancelToken

    token = CancelToken()
    threading.Timer(1.0, token.cancel).start()
    out = verify_backup(
        backup["target"],
        backup["key"],
        backup["manifest"],
        image=postgres_image,
        identities=[identity],
        cancel=token,
    )
    assert out.status == "error"
    assert out.details["errorCode"] == "VERIFY_CANCELLED", out.details
    assert managed(docker_client) == []


def test_missing_image_is_a_clear_error(
    backup: Dict[str, Any], identity: Any, docker_client: Any
) -> None:
    out = verify_backup(
        backup["target"],
        backup["key"],
        backup["manifest"],
        image="backupagent-test/does-not-exist:1",
        identities=[identity],
        pull_timeout=20,
    )
    assert out.status == "error"
    assert out.details["errorCode"] == "VERIFY_IMAGE_MISSING"
    msg = out.details["errorMessage"]
    assert "backupagent-test/does-not-exist:1" in msg and "docker load" in msg
    assert out.report.containerId == ""


def test_leftover_cleanup_removes_only_labelled_containers(
    postgres_image: str, docker_client: Any
) -> None:
    ours = ManagedContainer(docker_client, postgres_image, environment={"POSTGRES_PASSWORD": "x"})
    ours.start()
    ours._done.set()  # simulate a crash: the context manager never ran its exit
    theirs = docker_client.containers.run(
        postgres_image,
        detach=True,
        environment={"POSTGRES_PASSWORD": "x"},
        network_mode="none",
        labels={"someone.else": "true"},
    )
    try:
        removed = cleanup_leftovers(docker_client)
        assert ours.id in removed
        assert theirs.id not in removed
        theirs.reload()
        assert theirs.status in ("running", "created")
    finally:
        theirs.remove(force=True, v=True)
    assert managed(docker_client) == []


def test_container_is_isolated_and_limited(postgres_image: str, docker_client: Any) -> None:
    from backupagent.verify.container import Limits

    with ManagedContainer(
        docker_client,
        postgres_image,
        environment={"POSTGRES_PASSWORD": "x"},
        job_id="j-9",
        limits=Limits(memory_bytes=512 * 1024 * 1024, cpus=0.5, pids=256),
    ) as box:
        attrs = docker_client.api.inspect_container(box.id)
        host = attrs["HostConfig"]
        assert host["NetworkMode"] == "none"
        assert host["Memory"] == 512 * 1024 * 1024
        assert host["NanoCpus"] == 500_000_000
        assert host["PidsLimit"] == 256
        labels = attrs["Config"]["Labels"]
        assert labels[LABEL] == "true" and labels["io.backupagent.job-id"] == "j-9"
        res = box.exec(["cat", "/proc/net/dev"])
        ifaces = {line.split(":")[0].strip() for line in res.text.splitlines() if ":" in line}
        assert ifaces == {"lo"}
        cid = box.id
    assert not [c for c in managed(docker_client) if c.id == cid]
