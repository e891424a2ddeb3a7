"""Hostile config end to end: through the reference control plane and as standalone YAML.

Values carry shell metacharacters with canary commands, ``..``, absolute
paths, newlines, NUL, bidi overrides, homoglyphs, huge strings and numbers,
wrong types and unknown enum values. Each invalid config is rejected whole as
CONFIG_INVALID naming the field, the daemon keeps heartbeating with the last
good configHash, no canary file appears and nothing is written outside the
target. A valid but weird database name (``a;b $(touch ...)``) backs up safely
from a real PostgreSQL database, under a sanitized key inside the target.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, List, Tuple

import pytest
import yaml

from backupagent.config.hashing import config_hash
from backupagent.controlplane.testing import ServerHandle
from backupagent.exitcodes import ExitCode
from tests.e2e.conftest import Agent, wait_until

HB = "/api/v1/agent/heartbeat"
CFG = "/api/v1/agent/config"


def canary(tmp: Path) -> Path:
    return tmp / "pwned"


def good_doc(tmp: Path) -> dict:
    return {
        "schedules": [
            {
                "id": "sched-1",
                "databaseId": "db-1",
                "targetId": "tgt-1",
                "cron": "0 3 * * *",
                "timezone": "UTC",
                "database": {
                    "id": "db-1",
                    "dbType": "postgresql",
                    "host": "127.0.0.1",
                    "port": "5432",
                    "databaseName": "app",
                },
                "verification": {"enabled": False, "image": "postgres:16"},
            }
        ],
        "targets": [{"id": "tgt-1", "type": "local", "path": str(tmp / "backups")}],
        "alertChannels": [
            {"id": "hook", "type": "webhook", "url": "https://hooks.example.com/x"},
            {
                "id": "mail",
                "type": "email",
                "to": ["ops@example.com"],
                "smtp": {"host": "127.0.0.1", "port": 25},
            },
        ],
    }


def hostile_cases(tmp: Path) -> List[Tuple[str, Tuple[Any, ...], Any]]:
    """(name, path into good_doc, value) -> the field the rejection must name."""
    pwn = str(canary(tmp))
    sub = f"$(touch {pwn})"
    return [
        ("shell in id", ("schedules", 0, "id"), f"s;{sub}"),
        ("backticks in databaseId", ("schedules", 0, "databaseId"), f"`touch {pwn}`"),
        ("pipe in host", ("schedules", 0, "database", "host"), f"h|touch {pwn}"),
        ("newline in host", ("schedules", 0, "database", "host"), "h\nX-Injected: 1"),
        ("dotdot in database name", ("schedules", 0, "database", "databaseName"), "../../etc"),
        ("NUL in database name", ("schedules", 0, "database", "databaseName"), "app\x00x"),
        ("RTL override in name", ("schedules", 0, "database", "databaseName"), "app\u202egpj"),
        ("huge database name", ("schedules", 0, "database", "databaseName"), "x" * 100_000),
        ("unknown dbType", ("schedules", 0, "database", "dbType"), "oracle"),
        ("dbType wrong type", ("schedules", 0, "database", "dbType"), ["postgresql"]),
        ("huge port", ("schedules", 0, "database", "port"), 10**30),
        ("shell in cron", ("schedules", 0, "cron"), f"0 3 * * *; {sub}"),
        ("bad timezone", ("schedules", 0, "timezone"), "../../../etc/localtime"),
        ("shell in image", ("schedules", 0, "verification", "image"), f"postgres:16 {sub}"),
        ("relative target path", ("targets", 0, "path"), "backups"),
        ("dotdot target path", ("targets", 0, "path"), str(tmp / "backups/../../etc")),
        ("homoglyph type", ("targets", 0, "type"), "l\u043ecal"),  # Cyrillic o
        ("bad recipient", ("targets", 0, "encryption"), {"recipients": [f"age1;{sub}"]}),
        ("file URL webhook", ("alertChannels", 0, "url"), f"file:///{pwn}"),
        ("shell in email", ("alertChannels", 1, "to"), [f"{sub}@example.com"]),
        ("huge keepLast", ("schedules", 0, "retention"), {"keepLast": 10**400}),
    ]


def _set(doc: Any, path: Tuple[Any, ...], value: Any) -> None:
    for key in path[:-1]:
        doc = doc[key]
    doc[path[-1]] = value


def _dotted(path: Tuple[Any, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _files_outside(tmp: Path, allowed: List[Path]) -> List[Path]:
    """Files under tmp not below one of the allowed dirs (what a config could write)."""
    out = []
    for d, _, files in os.walk(tmp):
        for f in files:
            p = Path(d, f)
            if not any(p.is_relative_to(a) for a in allowed):
                out.append(p)
    return out


def test_hostile_configs_from_the_control_plane_are_rejected_and_the_last_good_stays(
    agent: Agent, controlplane: ServerHandle, tmp_path: Path
) -> None:
    agent.register(controlplane)
    aid = controlplane.store.list_agents()[0]["agentId"]
    good = good_doc(tmp_path)
    controlplane.store.set_config(aid, good)
    proc = agent.start("run", "--heartbeat-interval", "0.2")

    def last_hash() -> str:
        beats = controlplane.store.list_requests(path=HB)
        return beats[-1]["json"]["configHash"] if beats else ""

    wait_until(lambda: last_hash() == config_hash(good), 30, "the good config")
    cases = hostile_cases(tmp_path)
    for name, path, value in cases:
        bad = copy.deepcopy(good)
        _set(bad, path, value)
        pulls = len(controlplane.store.list_requests(path=CFG))
        controlplane.store.set_config(aid, bad, check_items=False)
        wait_until(
            lambda p=pulls: len(controlplane.store.list_requests(path=CFG)) > p, 30, f"pull {name}"
        )
        beats = len(controlplane.store.list_requests(path=HB))
        wait_until(
            lambda b=beats: len(controlplane.store.list_requests(path=HB)) >= b + 2, 30, "beats"
        )
        assert last_hash() == config_hash(good), name
        assert proc.poll() is None, name
    assert agent.stop(proc) == 0
    rejections = [
        line
        for line in agent.log_lines(proc)
        if line.get("level") == "error" and "rejected config" in str(line.get("msg"))
    ]
    assert len(rejections) == len(cases)
    for (name, path, _), line in zip(cases, rejections):
        assert line.get("errorCode") == "CONFIG_INVALID", line
        field = _dotted(path)
        assert field in line["msg"], (name, field, line["msg"][:500])
        assert "\x00" not in line["msg"] and "\u202e" not in line["msg"]
    assert not canary(tmp_path).exists()
    stray = [
        p
        for p in _files_outside(tmp_path, [agent.state_dir, agent.config_dir])
        if not (p.name.startswith("controlplane.db") or p.name.startswith("agent-"))
    ]
    assert stray == []  # no backups, no canaries: nothing written by a hostile config
    status = json.loads(agent.cli("status", "--json").stdout)
    assert [s["id"] for s in status["schedules"]] == ["sched-1"]


@pytest.mark.parametrize("case", range(21))
def test_hostile_standalone_yaml_is_rejected_naming_the_field(
    agent: Agent, tmp_path: Path, case: int
) -> None:
    name, path, value = hostile_cases(tmp_path)[case]
    doc = good_doc(tmp_path)
    _set(doc, path, value)
    config = tmp_path / "config.yaml"
    try:
        config.write_text(yaml.safe_dump(doc, allow_unicode=False))
    except yaml.YAMLError as exc:  # a case that cannot reach the agent this way
        pytest.fail(f"hostile case {name!r} is not representable in YAML ({exc})")
    res = agent.cli("run", "--once", "--config-file", str(config))
    assert res.returncode == ExitCode.CONFIG, (name, res.returncode, res.stderr[-2000:])
    assert _dotted(path) in res.stderr, (name, res.stderr[-2000:])
    assert "CONFIG_INVALID" in res.stderr or "is invalid" in res.stderr
    assert "Traceback" not in res.stderr
    assert not canary(tmp_path).exists()
    assert not (tmp_path / "backups").exists()  # nothing ran, nothing written


def test_weird_but_valid_database_name_backs_up_safely(
    agent: Agent, postgres_server: Any, tmp_path: Path
) -> None:
    weird = f"a;b $(touch {canary(tmp_path)}) `id` | c"
    postgres_server.create_database(weird)
    try:
        postgres_server.psql("CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2);", weird)
        agent.config_dir.mkdir(parents=True, exist_ok=True)
        creds = agent.config_dir / "credentials.yaml"
        creds.write_text(
            yaml.safe_dump(
                {
                    "databases": {
                        "db-w": {
                            "user": postgres_server.user,
                            "password": postgres_server.password,
                        }
                    }
                }
            )
        )
        creds.chmod(0o600)
        doc = good_doc(tmp_path)
        doc["alertChannels"] = []
        db = doc["schedules"][0]["database"]
        db.update(id="db-w", port=str(postgres_server.port), databaseName=weird)
        doc["schedules"][0]["databaseId"] = "db-w"
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump(doc))
        res = agent.cli("run", "--once", "--config-file", str(config), timeout=120)
        assert res.returncode == 0, res.stderr[-3000:]
    finally:
        postgres_server.drop_database(weird)
    backups = tmp_path / "backups"
    objects = [p for p in backups.rglob("*") if p.is_file()]
    assert len(objects) == 2, objects  # the dump and its manifest
    for obj in objects:
        rel = obj.relative_to(backups)
        assert all(c.isascii() and (c.isalnum() or c in "_-./") for c in str(rel)), rel
        assert ".." not in rel.parts
    db_dir = objects[0].relative_to(backups).parts[2]
    assert db_dir.startswith("a_b__") and len(db_dir) <= 100
    manifest = json.loads(next(p for p in objects if p.name.endswith(".manifest.json")).read_text())
    assert weird in json.dumps(manifest, ensure_ascii=False)  # the real name is recorded
    assert not canary(tmp_path).exists()
