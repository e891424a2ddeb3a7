"""Prometheus textfile metrics: format, values, persistence, escaping, no raising."""

from __future__ import annotations

import os
import re
import stat
import threading
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from backupagent import __version__
from backupagent.jobs.result import JobResult
from backupagent.metrics import STATE_FILE, Metrics, escape_label_value, format_value
from backupagent.settings import Settings
from tests.servers import require

# The text exposition format, strictly: comments, then samples without timestamps
# (node_exporter's textfile collector refuses timestamps).
_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL_VALUE = r'"(?:[^"\\\n]|\\\\|\\"|\\n)*"'
_LABELS = (
    rf"\{{(?:[a-zA-Z_][a-zA-Z0-9_]*={_LABEL_VALUE})(?:,[a-zA-Z_][a-zA-Z0-9_]*={_LABEL_VALUE})*\}}"
)
_VALUE = r"(?:[-+]?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?|NaN|[+-]Inf)"
SAMPLE = re.compile(rf"^(?P<name>{_NAME})(?P<labels>{_LABELS})? (?P<value>{_VALUE})$")
HELP = re.compile(rf"^# HELP (?P<name>{_NAME}) (?:[^\\\n]|\\\\|\\n)*$")
TYPE = re.compile(rf"^# TYPE (?P<name>{_NAME}) (?P<type>counter|gauge|untyped)$")
LABEL_PAIR = re.compile(rf"([a-zA-Z_][a-zA-Z0-9_]*)=({_LABEL_VALUE})")


def _unescape(quoted: str) -> str:
    body = quoted[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), body)


def strict_parse(text: str) -> Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]:
    """Every line matches the grammar, each family has HELP then TYPE, once, before
    its samples, and families are not interleaved."""
    assert text.endswith("\n")
    samples: Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float] = {}
    declared: List[str] = []
    current = None
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            m = HELP.match(line)
            assert m, f"bad HELP line: {line!r}"
            assert m.group("name") not in declared, f"family declared twice: {line!r}"
            declared.append(m.group("name"))
            current = m.group("name")
            continue
        if line.startswith("# TYPE "):
            m = TYPE.match(line)
            assert m and m.group("name") == current, f"TYPE not right after HELP: {line!r}"
            continue
        m = SAMPLE.match(line)
        assert m, f"bad sample line: {line!r}"
        assert m.group("name") == current, f"sample outside its family: {line!r}"
        labels = tuple((k, _unescape(v)) for k, v in LABEL_PAIR.findall(m.group("labels") or ""))
        key = (m.group("name"), labels)
        assert key not in samples, f"duplicate sample {key}"
        samples[key] = float(m.group("value"))
    return samples


def ok_result(duration_ms: int = 1500, verification: str = "") -> JobResult:
    details = {"durationMs": duration_ms, "dumpSize": 1000, "storedSize": 400}
    if verification:
        details["verification"] = verification
    return JobResult(status="completed", job_id="j1", details=details)


def failed_result() -> JobResult:
    return JobResult(status="failed", job_id="j2", error_code="DUMP_FAIL", error_message="x")


class Clock:
    def __init__(self, now: float = 1_700_000_000.5) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def labels(database: str, db_type: str) -> Tuple[Tuple[str, str], ...]:
    return (("database", database), ("db_type", db_type))


def test_disabled_without_a_path_writes_nothing(tmp_path: Path) -> None:
    m = Metrics(None, tmp_path / "state")
    m.record_backup("app", "postgresql", ok_result())
    m.record_heartbeat(True)
    assert not m.enabled
    assert not (tmp_path / "state").exists()


def test_from_settings_reads_metrics_file(tmp_path: Path) -> None:
    prom = tmp_path / "tc" / "backupagent.prom"
    settings = Settings(tmp_path, tmp_path / "state", extra={"metricsFile": str(prom)})
    m = Metrics.from_settings(settings)
    assert m.path == prom and prom.exists()
    assert not Metrics.from_settings(Settings(tmp_path, tmp_path / "s2")).enabled
    assert not Metrics.from_settings(
        Settings(tmp_path, tmp_path / "s3", extra={"metricsFile": 7})
    ).enabled


def test_info_written_at_start_0644(tmp_path: Path) -> None:
    prom = tmp_path / "backupagent.prom"
    Metrics(prom, tmp_path / "state")
    assert stat.S_IMODE(os.stat(prom).st_mode) == 0o644
    samples = strict_parse(prom.read_text())
    assert samples == {("backupagent_info", (("version", __version__),)): 1.0}


def test_successful_backup(tmp_path: Path, clock: Clock) -> None:
    prom = tmp_path / "backupagent.prom"
    m = Metrics(prom, tmp_path / "state", clock=clock)
    m.record_backup("app", "postgresql", ok_result(verification="passed"))
    s = strict_parse(prom.read_text())
    lab = labels("app", "postgresql")
    assert s[("backupagent_backup_last_success_timestamp_seconds", lab)] == clock.now
    assert s[("backupagent_backup_last_run_timestamp_seconds", lab)] == clock.now
    assert s[("backupagent_backup_last_status", lab)] == 1
    assert s[("backupagent_backup_duration_seconds", lab)] == 1.5
    assert s[("backupagent_backup_dump_bytes", lab)] == 1000
    assert s[("backupagent_backup_stored_bytes", lab)] == 400
    assert s[("backupagent_backup_failures_total", lab)] == 0
    assert s[("backupagent_verification_last_status", lab)] == 1
    assert s[("backupagent_verification_last_timestamp_seconds", lab)] == clock.now
    assert "backupagent_backup_dump_bytes{" in prom.read_text()
    assert 'backupagent_backup_dump_bytes{database="app",db_type="postgresql"} 1000\n' in (
        prom.read_text()
    )


def test_failure_keeps_last_success_and_counts(tmp_path: Path, clock: Clock) -> None:
    prom = tmp_path / "backupagent.prom"
    m = Metrics(prom, tmp_path / "state", clock=clock)
    m.record_backup("app", "postgresql", ok_result())
    first = clock.now
    clock.now += 3600
    m.record_backup("app", "postgresql", failed_result(), duration_seconds=2.25)
    clock.now += 3600
    m.record_backup("app", "postgresql", failed_result())
    s = strict_parse(prom.read_text())
    lab = labels("app", "postgresql")
    assert s[("backupagent_backup_last_success_timestamp_seconds", lab)] == first
    assert s[("backupagent_backup_last_run_timestamp_seconds", lab)] == clock.now
    assert s[("backupagent_backup_last_status", lab)] == 0
    assert s[("backupagent_backup_failures_total", lab)] == 2
    assert s[("backupagent_backup_duration_seconds", lab)] == 2.25  # kept: the last had none
    assert s[("backupagent_backup_dump_bytes", lab)] == 1000  # sizes of the last good one


def test_only_failures_has_no_success_timestamp(tmp_path: Path) -> None:
    prom = tmp_path / "backupagent.prom"
    m = Metrics(prom, tmp_path / "state")
    m.record_backup("app", "mysql", failed_result())
    s = strict_parse(prom.read_text())
    assert ("backupagent_backup_last_success_timestamp_seconds", labels("app", "mysql")) not in s
    assert s[("backupagent_backup_failures_total", labels("app", "mysql"))] == 1


def test_failed_verification_is_zero(tmp_path: Path) -> None:
    prom = tmp_path / "backupagent.prom"
    m = Metrics(prom, tmp_path / "state")
    m.record_backup("a", "redis", ok_result(verification="failed"))
    m.record_backup("b", "redis", ok_result(verification="error"))
    s = strict_parse(prom.read_text())
    assert s[("backupagent_verification_last_status", labels("a", "redis"))] == 0
    assert s[("backupagent_verification_last_status", labels("b", "redis"))] == 0


def test_heartbeat(tmp_path: Path, clock: Clock) -> None:
    prom = tmp_path / "backupagent.prom"
    m = Metrics(prom, tmp_path / "state", clock=clock)
    m.record_heartbeat(False)
    s = strict_parse(prom.read_text())
    assert s[("backupagent_heartbeat_failures_total", ())] == 1
    assert ("backupagent_heartbeat_last_success_timestamp_seconds", ()) not in s
    m.record_heartbeat(True)
    m.record_heartbeat(False)
    s = strict_parse(prom.read_text())
    assert s[("backupagent_heartbeat_last_success_timestamp_seconds", ())] == clock.now
    assert s[("backupagent_heartbeat_failures_total", ())] == 2


def test_state_survives_a_restart(tmp_path: Path, clock: Clock) -> None:
    prom = tmp_path / "backupagent.prom"
    state = tmp_path / "state"
    m = Metrics(prom, state, clock=clock)
    m.record_backup("app", "postgresql", ok_result())
    m.record_backup("app", "postgresql", failed_result())
    m.record_heartbeat(True)
    before = prom.read_text()
    prom.unlink()
    Metrics(prom, state, clock=Clock(clock.now + 999))
    assert prom.read_text() == before  # rewritten at start from the state file
    assert (state / STATE_FILE).exists()


def test_damaged_state_is_ignored(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / STATE_FILE).write_text('{"backups": [{"database": 1}, "x"], "heartbeat": [1]}')
    prom = tmp_path / "backupagent.prom"
    m = Metrics(prom, state)
    m.record_backup("app", "sqlite", ok_result())
    assert strict_parse(prom.read_text())[
        ("backupagent_backup_last_status", labels("app", "sqlite"))
    ]
    (state / STATE_FILE).write_text("not json")
    Metrics(prom, state)  # no exception
    assert "backupagent_info" in prom.read_text()


HOSTILE = [
    'quo"te',
    "back\\slash",
    "new\nline",
    '\\"\n\\n',
    "} 1\nbackupagent_fake 2",
    "tab\tand unicode é ✓",
    "trailing\\",
    "lone \ud800 surrogate",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_label_values_are_escaped(tmp_path: Path, name: str) -> None:
    prom = tmp_path / "backupagent.prom"
    m = Metrics(prom, tmp_path / "state")
    m.record_backup(name, 'db"type\n', ok_result())
    text = prom.read_text(encoding="utf-8")
    s = strict_parse(text)
    expected = name.encode("utf-8", "replace").decode("utf-8")
    assert s[("backupagent_backup_last_status", labels(expected, 'db"type\n'))] == 1
    assert not any(k[0] == "backupagent_fake" for k in s)


def test_parses_with_prometheus_client(tmp_path: Path) -> None:
    try:
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError:
        text_string_to_metric_families = None
    require(text_string_to_metric_families is not None, "pip install prometheus-client")
    prom = tmp_path / "backupagent.prom"
    m = Metrics(prom, tmp_path / "state")
    for i, name in enumerate(HOSTILE[:-1]):
        m.record_backup(
            name, "postgresql", ok_result(verification="passed") if i % 2 else failed_result()
        )
    m.record_heartbeat(True)
    m.record_heartbeat(False)
    families = {f.name: f for f in text_string_to_metric_families(prom.read_text())}
    assert families["backupagent_backup_failures"].type == "counter"
    assert families["backupagent_heartbeat_failures"].type == "counter"
    assert families["backupagent_backup_last_status"].type == "gauge"
    statuses = {
        s.labels["database"]: s.value for s in families["backupagent_backup_last_status"].samples
    }
    assert statuses == {name: float(i % 2) for i, name in enumerate(HOSTILE[:-1])}
    info = families["backupagent_info"].samples[0]
    assert info.labels == {"version": __version__} and info.value == 1
    hb = families["backupagent_heartbeat_failures"].samples[0]
    assert hb.name == "backupagent_heartbeat_failures_total" and hb.value == 1


def test_format_value() -> None:
    assert format_value(3) == "3"
    assert format_value(1.5) == "1.5"
    assert format_value(1_700_000_000.0) == "1700000000"
    assert format_value(1_700_000_000.123) == "1700000000.123"
    assert format_value(float("nan")) == "NaN"
    assert format_value(float("inf")) == "+Inf"
    assert escape_label_value('a\\b"c\nd') == 'a\\\\b\\"c\\nd'


def test_unwritable_path_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    prom = blocker / "sub" / "backupagent.prom"  # parent is a regular file
    m = Metrics(prom, tmp_path / "state")
    m.record_backup("app", "postgresql", ok_result())
    m.record_heartbeat(True)
    m.record_heartbeat(True)
    warnings = [
        r for r in caplog.records if "metrics" in r.getMessage() and r.levelname == "WARNING"
    ]
    assert 1 <= len(warnings) <= 2  # once per outage, not once per heartbeat


def test_bad_result_never_raises(tmp_path: Path) -> None:
    prom = tmp_path / "backupagent.prom"
    m = Metrics(prom, tmp_path / "state")
    m.record_backup("app", "postgresql", object())  # not a JobResult at all
    m.record_backup("app", "postgresql", JobResult(status="completed", details={"durationMs": "x"}))
    s = strict_parse(prom.read_text())
    assert s[("backupagent_backup_last_status", labels("app", "postgresql"))] == 1


def test_concurrent_recording(tmp_path: Path) -> None:
    prom = tmp_path / "backupagent.prom"
    m = Metrics(prom, tmp_path / "state")

    def work(i: int) -> None:
        for _ in range(20):
            m.record_backup(f"db{i}", "postgresql", failed_result())
            m.record_heartbeat(False)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s = strict_parse(prom.read_text())
    for i in range(4):
        assert s[("backupagent_backup_failures_total", labels(f"db{i}", "postgresql"))] == 20
    assert s[("backupagent_heartbeat_failures_total", ())] == 80
    leftovers = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []
