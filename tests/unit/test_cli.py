"""CLI behaviour that needs no server: help, exit codes, settings handling."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import pytest
from click.testing import CliRunner

from backupagent import __version__
from backupagent.cli.main import COMMANDS, cli
from backupagent.exitcodes import ExitCode


@pytest.fixture
def dirs(tmp_path: Path) -> list:
    return [
        "--config-dir",
        str(tmp_path / "etc"),
        "--state-dir",
        str(tmp_path / "state"),
        "--log-format",
        "text",
    ]


def invoke(*args: str, input: Optional[str] = None):  # type: ignore[assignment]
    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)


def test_help_lists_every_command_and_the_exit_codes() -> None:
    res = invoke("--help")
    assert res.exit_code == 0
    for name in COMMANDS:
        assert name in res.output
    assert "Exit codes:" in res.output and "7  control plane unreachable" in res.output


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help(name: str) -> None:
    res = invoke(name, "--help")
    assert res.exit_code == 0, res.output
    assert len(res.output.splitlines()) > 3


def test_version(dirs: list) -> None:
    res = invoke(*dirs, "version")
    assert res.exit_code == 0 and res.output.startswith(f"backupagent {__version__} (linux/")
    data = json.loads(invoke(*dirs, "version", "--json").output)
    assert data["version"] == __version__ and data["os"] == "linux"


def test_unknown_command_is_a_usage_error() -> None:
    assert invoke("frobnicate").exit_code == ExitCode.USAGE


def test_status_of_an_unregistered_host(dirs: list) -> None:
    res = invoke(*dirs, "status")
    assert res.exit_code == 0
    assert "Registered:      no" in res.output and "Last heartbeat:  never" in res.output
    data = json.loads(invoke(*dirs, "status", "--json").output)
    assert data["registered"] is False and data["schedules"] == []


def test_run_needs_registration_or_a_config_file(dirs: list) -> None:
    res = invoke(*dirs, "run", "--once")
    assert res.exit_code == ExitCode.NOT_REGISTERED


def test_broken_settings_file_is_a_config_error(dirs: list, tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "agent.yaml").write_text("serverUrl: [unclosed\n")
    res = invoke(*dirs, "status")
    assert res.exit_code == ExitCode.CONFIG
    (etc / "agent.yaml").write_text("heartbeatInterval: -5\n")
    res = invoke(*dirs, "status")
    assert res.exit_code == ExitCode.CONFIG and "heartbeatInterval" in res.output


def test_api_key_with_loose_permissions_is_refused(tmp_path: Path) -> None:
    from backupagent.errors import SettingsError
    from backupagent.settings import load_settings, save_registration

    s = load_settings(tmp_path / "etc", tmp_path / "state")
    save_registration(
        s, server_url="https://cp.example", agent_id="a1", api_key="bak_x" * 5, hostname="h"
    )
    assert (os.stat(s.api_key_file).st_mode & 0o777) == 0o600
    assert load_settings(tmp_path / "etc", tmp_path / "state").registered
    os.chmod(s.api_key_file, 0o644)
    with pytest.raises(SettingsError, match="chmod 600"):
        s.read_api_key()


def test_standalone_once_with_an_empty_config(dirs: list, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("schedules: []\ntargets: []\nalertChannels: []\n")
    res = invoke(*dirs, "run", "--once", "--config-file", str(cfg))
    assert res.exit_code == 0


def test_standalone_with_an_invalid_config_names_the_field(dirs: list, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("schedules:\n  - id: s1\n    cron: '61 * * * *'\n")
    res = CliRunner().invoke(cli, [*dirs, "run", "--once", "--config-file", str(cfg)])
    assert res.exit_code == ExitCode.CONFIG
    assert "schedules[0].cron" in res.output or "schedules[0]" in res.output
