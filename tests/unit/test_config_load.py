"""Standalone YAML loading and the last-good config cache."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest

from backupagent.config.hashing import config_hash
from backupagent.config.load import CACHE_FILE, LastGoodConfigCache, load_config_file
from backupagent.errors import ConfigInvalid

REPO = Path(__file__).resolve().parents[2]
GOOD_YAML = """\
schedules:
  - id: nightly
    databaseId: app-db
    targetId: disk
    cron: "30 2 * * *"
    database: {id: app-db, dbType: postgresql, port: 5432, databaseName: app}
targets:
  - id: disk
    type: local
    path: /var/backups/db
"""


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_problems(path: Path) -> list:
    with pytest.raises(ConfigInvalid) as info:
        load_config_file(path)
    assert info.value.source == str(path)
    return info.value.problems


def test_loads_a_good_file(tmp_path: Path) -> None:
    raw, config = load_config_file(write(tmp_path, GOOD_YAML))
    assert raw["schedules"][0]["database"]["port"] == 5432  # raw stays raw
    assert config.schedules[0].database.port == "5432"
    assert config.target("disk").local.path == "/var/backups/db"
    assert config.alert_channels == ()  # a missing section is an empty list


def test_shipped_example_is_valid() -> None:
    raw, config = load_config_file(REPO / "examples" / "standalone.yaml")
    assert config.schedules and config.targets
    assert config.schedules[0].database.db_type == "postgresql"
    assert config.target(config.schedules[0].target_id).type == "local"
    json.dumps(raw)


def test_missing_unreadable_and_directory(tmp_path: Path) -> None:
    assert load_problems(tmp_path / "nope.yaml") == ["file: does not exist"]
    assert load_problems(tmp_path)[0].startswith("file: is a directory")
    path = write(tmp_path, GOOD_YAML)
    if os.geteuid() != 0:  # root reads anything
        path.chmod(0)
        assert load_problems(path)[0].startswith("file: cannot be read")


def test_yaml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "schedules:\n  - id: a\n   cron: x\n")
    (problem,) = load_problems(path)
    assert problem.startswith("line 3, column ")


def test_unquoted_star_gets_a_hint(tmp_path: Path) -> None:
    path = write(tmp_path, "schedules:\n  - cron: * * * * *\n")
    (problem,) = load_problems(path)
    assert problem.startswith("line 2") and "must be quoted" in problem


def test_duplicate_keys_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        GOOD_YAML.replace(
            '    cron: "30 2 * * *"\n', '    cron: "30 2 * * *"\n    cron: "0 0 * * *"\n'
        ),
    )
    (problem,) = load_problems(path)
    assert "duplicate key" in problem and '"cron"' in problem and problem.startswith("line 6")


def test_merge_keys_may_override(tmp_path: Path) -> None:
    text = GOOD_YAML.replace(
        "    database: {id: app-db, dbType: postgresql, port: 5432, databaseName: app}\n",
        "    database:\n      <<: {id: app-db, dbType: postgresql, port: 1, databaseName: app}\n"
        "      port: 5433\n",
    )
    _, config = load_config_file(write(tmp_path, text))
    assert config.schedules[0].database.port == "5433"


def test_not_a_mapping_and_empty(tmp_path: Path) -> None:
    assert load_problems(write(tmp_path, "- a\n- b\n")) == [
        "document: expected a mapping with keys schedules, targets, alertChannels, got a list"
    ]
    assert load_problems(write(tmp_path, "# nothing\n"))[0].startswith("file: is empty")


def test_yaml_only_values_refused_with_path(tmp_path: Path) -> None:
    text = GOOD_YAML + "alertChannels:\n  - id: 2024-01-01\n    1: x\n    n: .nan\n"
    assert load_problems(write(tmp_path, text)) == [
        "alertChannels[0].id: is a YAML date, which JSON cannot hold; quote it",
        "alertChannels[0].n: nan is not a finite number",
        "alertChannels[0]: has a key that is not a string (1)",
    ]


def test_huge_numbers_do_not_crash_the_loader(tmp_path: Path) -> None:
    digits = "9" * 5000
    (problem,) = load_problems(write(tmp_path, f"schedules: [{digits}]\n"))
    assert problem.startswith("file: holds a value YAML cannot convert")
    text = GOOD_YAML + "alertChannels:\n  - {id: a, type: slack, " + "1" * 45 + ": x}\n"
    found = load_problems(write(tmp_path, text))
    assert found[0] == "alertChannels[0]: has a key that is not a string (a very large number)"


def test_alias_bomb_is_bounded(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 10)}]")
    lines.append("schedules: *a8")
    (problem,) = load_problems(write(tmp_path, "\n".join(lines) + "\n"))
    assert "more than" in problem


def test_not_utf8_and_too_big(tmp_path: Path) -> None:
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"schedules: [\xff]\n")
    assert load_problems(path)[0].startswith("file: is not UTF-8")
    path.write_bytes(b"#" * (4 * 1024 * 1024 + 1))
    assert load_problems(path)[0].startswith("file: is larger than")


def test_validation_problems_carry_the_path_as_source(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD_YAML.replace("30 2 * * *", "61 * * * *"))
    with pytest.raises(ConfigInvalid) as info:
        load_config_file(path)
    assert str(info.value).startswith(f"{path} is invalid (1 problem):")
    assert info.value.problems[0].startswith("schedules[0].cron:")


# -------------------------------------------------------------------- cache


def test_cache_round_trip_atomic_and_private(tmp_path: Path) -> None:
    raw, config = load_config_file(write(tmp_path, GOOD_YAML))
    cache = LastGoodConfigCache(tmp_path / "state")
    assert cache.load() is None
    assert cache.save(raw) is True
    path = tmp_path / "state" / CACHE_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == [CACHE_FILE]  # no temp file left
    loaded = cache.load()
    assert loaded is not None
    assert loaded[0] == raw and loaded[1] == config
    assert config_hash(loaded[0]) == config_hash(raw)
    cache.clear()
    assert cache.load() is None


@pytest.mark.parametrize(
    "damage",
    [
        b"",
        b"{not json",
        b"[]",
        b'{"version": 99, "config": {}}',
        b"\xff\xfe",
        b"[" * 100000,
    ],
)
def test_corrupt_cache_is_logged_and_ignored(
    tmp_path: Path, damage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / CACHE_FILE).write_bytes(damage)
    with caplog.at_level(logging.WARNING):
        assert LastGoodConfigCache(tmp_path).load() is None
    assert "ignoring the cached config" in caplog.text


def test_edited_or_now_invalid_cache_is_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    raw, _ = load_config_file(write(tmp_path, GOOD_YAML))
    cache = LastGoodConfigCache(tmp_path)
    cache.save(raw)
    body = json.loads((tmp_path / CACHE_FILE).read_text())
    body["config"]["schedules"][0]["cron"] = "61 * * * *"
    (tmp_path / CACHE_FILE).write_text(json.dumps(body))
    with caplog.at_level(logging.WARNING):
        assert cache.load() is None
    assert "hash does not match" in caplog.text
    # a cache that was valid for an older agent but not for this one
    body["configHash"] = config_hash(body["config"])
    (tmp_path / CACHE_FILE).write_text(json.dumps(body))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert cache.load() is None
    assert "schedules[0].cron" in caplog.text


def test_save_failure_returns_false(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with caplog.at_level(logging.ERROR):
        assert LastGoodConfigCache(blocker / "sub").save({"schedules": []}) is False
    assert "could not save" in caplog.text
