"""Restore verification of real MariaDB and Redis backups in a real Docker engine.

Backups are made by the real job from the session's servers; verification
restores them into the locally built ``backupagent-test/mariadb:10.11`` and
``backupagent-test/redis:7`` images (the official images' contracts).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

from backupagent.config.model import VerificationCheckSpec
from backupagent.crypto.keys import generate_identity
from backupagent.engines.base import parse_database_url
from backupagent.jobs.backup import BackupSpec, run_backup
from backupagent.report.local import LocalReporter
from backupagent.targets.local import LocalTarget
from backupagent.verify.container import LABEL, cleanup_leftovers
from backupagent.verify.run import verify_backup

pytestmark = pytest.mark.integration


@pytest.fixture
def docker_client(docker_engine: Any) -> Iterator[Any]:
    client = docker_engine.client
    cleanup_leftovers(client)
    yield client
    left = client.containers.list(all=True, filters={"label": f"{LABEL}=true"})
    cleanup_leftovers(client)
    assert left == [], f"verification containers left behind: {[c.name for c in left]}"


def make_backup(url: str, tmp_path: Path, recipients: List[str]) -> Dict[str, Any]:
    target = LocalTarget(tmp_path / "target")
    spec = BackupSpec(
        conn=parse_database_url(url),
        target=target,
        database_id="db-1",
        target_id="t-1",
        hostname="verify-host",
        recipients=recipients,
    )
    result = run_backup(spec, LocalReporter(tmp_path / "state"))
    assert result.ok, result.error_message
    return {"target": target, "key": result.details["objectKey"], **result.details}


def test_mariadb_backup_passes(
    mariadb_database: Any, tmp_path: Path, mariadb_image: str, docker_client: Any
) -> None:
    ident = generate_identity()
    b = make_backup(mariadb_database.dsn, tmp_path, [ident.recipient])
    checks = (
        VerificationCheckSpec(
            check_type="custom_query",
            check_name="orders",
            query="SELECT COUNT(*) FROM orders",
            expected_value="15",
        ),
        VerificationCheckSpec(
            check_type="custom_query",
            check_name="wrong",
            query="SELECT SUM(amount) FROM orders",
            expected_value="1",
        ),
    )
    out = verify_backup(
        b["target"], b["key"], b["manifest"], image=mariadb_image, identities=[ident], checks=checks
    )
    by = {(c.checkType, c.checkName): c for c in out.report.checks}
    assert by[("row_count", "orders")].actualValue == "15", out.details
    assert by[("row_count", "customers")].status == "passed"
    assert by[("schema_match", "schema")].status == "passed", out.details
    assert by[("custom_query", "orders")].status == "passed"
    wrong = by[("custom_query", "wrong")]
    assert (wrong.status, wrong.expectedValue, wrong.actualValue) == ("failed", "1", "120.00")
    assert out.status == "failed"
    assert out.path_taken == "stored-object"


def test_redis_backup_passes(
    redis_server: Any, tmp_path: Path, redis_image: str, docker_client: Any
) -> None:
    redis_server.cli("FLUSHALL")
    for i in range(50):
        redis_server.cli("SET", f"k{i}", f"v{i}")
    redis_server.cli("SELECT", "0")
    redis_server.cli("HSET", "h", "a", "1", "b", "2")
    ident = generate_identity()
    b = make_backup(redis_server.url, tmp_path, [ident.recipient])
    checks = (
        VerificationCheckSpec(
            check_type="custom_query", check_name="k7", query="GET k7", expected_value="v7"
        ),
        VerificationCheckSpec(
            check_type="custom_query", check_name="writes", query="SET k7 x", expected_value="OK"
        ),
    )
    out = verify_backup(
        b["target"], b["key"], b["manifest"], image=redis_image, identities=[ident], checks=checks
    )
    by = {(c.checkType, c.checkName): c for c in out.report.checks}
    assert by[("row_count", "db0")].actualValue == "51", (out.details, out.report)
    assert by[("row_count", "db0")].status == "passed"
    assert by[("custom_query", "k7")].status == "passed"
    assert by[("custom_query", "writes")].status == "failed"
    assert "not read-only" in by[("custom_query", "writes")].actualValue
    assert by[("schema_match", "schema")].status == "skipped"
    assert out.status == "failed"  # only because of the refused write
    assert out.details.get("errorCode") is None
