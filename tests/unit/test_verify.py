"""Unit tests for verification: image selection, limits and check evaluation (no Docker)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from backupagent.config.model import VerificationCheckSpec as Spec
from backupagent.verify.checks import (
    custom_query_check,
    delta_pct,
    overall_status,
    row_count_checks,
    schema_check,
)
from backupagent.verify.container import Limits
from backupagent.verify.errors import VerifyError
from backupagent.verify.images import default_image, select_image, split_image, version_tag

# -- images ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "db_type,version,image",
    [
        ("postgresql", "15.4 (Debian 15.4-1.pgdg120+1)", "postgres:15"),
        ("postgres", "16.2", "postgres:16"),
        ("postgresql", "9.6.24", "postgres:9.6"),
        ("mariadb", "10.11.6-MariaDB-0+deb12u1", "mariadb:10.11"),
        ("mysql", "8.0.36", "mysql:8.0"),
        ("redis", "7.0.15", "redis:7"),
        ("redis", None, "redis:latest"),
    ],
)
def test_default_image_follows_the_server_version(db_type, version, image) -> None:
    assert default_image(db_type, version) == image


def test_sqlite_cannot_be_verified_in_a_container() -> None:
    with pytest.raises(VerifyError) as info:
        default_image("sqlite", "3.40")
    assert info.value.code == "UNSUPPORTED"


def test_schedule_image_wins_over_host_settings_and_default() -> None:
    extra = {"verification": {"images": {"postgresql": "reg.local/pg:{version}"}}}
    choice = select_image(
        "postgresql", "15.2", schedule_image="my/pg:15-postgis", settings_extra=extra
    )
    assert (choice.image, choice.source) == ("my/pg:15-postgis", "schedule")
    choice = select_image("postgresql", "15.2", settings_extra=extra)
    assert (choice.image, choice.source) == ("reg.local/pg:15", "host settings")
    choice = select_image("mariadb", "10.11.2", settings_extra=extra)
    assert (choice.image, choice.source) == ("mariadb:10.11", "default")
    # host settings keyed by an alias
    choice = select_image(
        "postgresql", "14.1", settings_extra={"verification": {"images": {"postgres": "x/pg"}}}
    )
    assert choice.image == "x/pg"


def test_bad_host_image_settings_are_named() -> None:
    with pytest.raises(VerifyError) as info:
        select_image("redis", "7", settings_extra={"verification": {"images": ["redis:7"]}})
    assert "verification.images" in str(info.value)


@pytest.mark.parametrize(
    "image,parts",
    [
        ("postgres:15", ("postgres", "15")),
        ("postgres", ("postgres", None)),
        ("reg.local:5000/pg", ("reg.local:5000/pg", None)),
        ("reg.local:5000/pg:15", ("reg.local:5000/pg", "15")),
        ("pg@sha256:abc", ("pg", "sha256:abc")),
    ],
)
def test_split_image(image, parts) -> None:
    assert split_image(image) == parts


def test_version_tag_unknown() -> None:
    assert version_tag("postgresql", "garbage") is None


def test_limits_from_settings() -> None:
    assert Limits.from_settings(None) == Limits()
    lim = Limits.from_settings({"verification": {"memoryMb": 2048, "cpus": 1.5, "pids": 100}})
    assert (lim.memory_bytes, lim.cpus, lim.pids) == (2048 * 1024 * 1024, 1.5, 100)
    with pytest.raises(VerifyError):
        Limits.from_settings({"verification": {"memoryMb": 8}})
    with pytest.raises(VerifyError):
        Limits.from_settings({"verification": {"cpus": "lots"}})


def test_importing_verify_does_not_import_docker() -> None:
    code = (
        "import sys, backupagent.verify, backupagent.verify.run, backupagent.verify.checks;"
        "print('docker' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- checks ---------------------------------------------------------------------------


def test_delta_pct() -> None:
    assert delta_pct(100, 100) == 0.0
    assert delta_pct(100, 90) == -10.0
    assert delta_pct(0, 5) == 100.0
    assert delta_pct(0, 0) == 0.0
    assert delta_pct(3, 4) == pytest.approx(33.3333)


def test_exact_row_counts_fail_on_any_difference() -> None:
    checks = row_count_checks(
        {"public.a": 10, "public.b": 1000}, {"public.a": 10, "public.b": 999}, exact=True
    )
    by = {c.checkName: c for c in checks}
    assert by["public.a"].status == "passed" and by["public.a"].deltaPct == 0.0
    assert by["public.b"].status == "failed"
    assert (by["public.b"].expectedValue, by["public.b"].actualValue) == ("1000", "999")
    assert by["public.b"].deltaPct == pytest.approx(-0.1)
    assert overall_status(checks) == "failed"


def test_approximate_row_counts_use_the_default_tolerance() -> None:
    checks = row_count_checks({"a": 100, "b": 100}, {"a": 96, "b": 94}, exact=False)
    by = {c.checkName: c for c in checks}
    assert by["a"].status == "passed" and by["a"].deltaPct == -4.0
    assert by["b"].status == "failed"


def test_schedule_tolerances_per_table_and_general() -> None:
    specs = [
        Spec(check_type="row_count", tolerance_pct=20.0),
        Spec(check_type="row_count", check_name="users table", tolerance_pct=0.0),
    ]
    checks = row_count_checks(
        {"public.users": 100, "public.events": 100},
        {"public.users": 99, "public.events": 85},
        exact=False,
        specs=specs,
    )
    by = {c.checkName: c for c in checks}
    assert by["public.users"].status == "failed"
    assert by["public.events"].status == "passed"


def test_missing_table_and_unknown_named_table_fail() -> None:
    checks = row_count_checks(
        {"a": 5}, {}, exact=True, specs=[Spec(check_type="row_count", check_name="ghost")]
    )
    by = {c.checkName: c for c in checks}
    assert by["a"].status == "failed" and by["a"].actualValue == "table missing"
    assert by["a"].deltaPct == -100.0
    assert by["ghost"].status == "failed"


SNAP = {
    "tables": [
        {
            "schema": "public",
            "name": "users",
            "columns": [
                {"name": "id", "type": "integer", "nullable": False, "default": None},
                {"name": "email", "type": "text", "nullable": True, "default": None},
            ],
            "primaryKey": ["id"],
            "indexes": [{"name": "users_pkey", "columns": ["id"], "unique": True}],
        }
    ]
}


def test_schema_match_passes_on_equal_and_names_differences() -> None:
    import copy

    check, lines = schema_check(copy.deepcopy(SNAP), expected_snapshot=SNAP)
    assert check.status == "passed" and lines == []
    assert check.expectedValue == check.actualValue == "1 tables, 2 columns"
    changed = copy.deepcopy(SNAP)
    changed["tables"][0]["columns"][1]["type"] = "varchar(10)"
    changed["tables"][0]["columns"][1]["nullable"] = False
    check, lines = schema_check(changed, expected_snapshot=SNAP)
    assert check.status == "failed"
    assert "1 column changed" in check.actualValue
    assert any("email" in line for line in lines)


def test_schema_match_by_manifest_hash() -> None:
    from backupagent.pipeline.manifest import schema_hash

    check, _ = schema_check(SNAP, expected_hash=schema_hash(SNAP))
    assert check.status == "passed"
    other = {"tables": []}
    check, lines = schema_check(other, expected_hash=schema_hash(SNAP))
    assert check.status == "failed" and lines
    check, _ = schema_check(SNAP)
    assert check.status == "skipped"
    check, _ = schema_check(None, expected_hash="sha256:00")
    assert check.status == "skipped"


def test_custom_query_comparisons() -> None:
    spec = Spec(check_type="custom_query", check_name="n", query="q", expected_value="10")
    assert custom_query_check(spec, actual="10\n").status == "passed"
    c = custom_query_check(spec, actual="8")
    assert (c.status, c.expectedValue, c.actualValue, c.deltaPct) == ("failed", "10", "8", -20.0)
    # numeric equality across representations
    assert custom_query_check(spec, actual="10.00").status == "passed"
    tol = Spec(check_type="custom_query", query="q", expected_value="100", tolerance_pct=5.0)
    assert custom_query_check(tol, actual="96").status == "passed"
    assert custom_query_check(tol, actual="94").status == "failed"
    text = Spec(check_type="custom_query", query="q", expected_value="ok")
    c = custom_query_check(text, actual="nope", index=3)
    assert (c.checkName, c.status, c.deltaPct) == ("custom query 3", "failed", None)
    c = custom_query_check(spec, error="syntax error at or near x")
    assert c.status == "failed" and c.actualValue.startswith("error: ")
    assert (
        custom_query_check(Spec(check_type="custom_query", query="q"), actual="7").status
        == "skipped"
    )


def test_overall_status_ignores_skipped() -> None:
    spec = Spec(check_type="custom_query", query="q")
    assert overall_status([custom_query_check(spec, actual="1")]) == "passed"
    assert overall_status([]) == "passed"
