"""The object every command receives: paths, settings loader, output helpers.

Tests drive commands through click's runner with a temporary config and
state dir; nothing here reads global state beyond the options.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Optional

import click

from backupagent.errors import SettingsError
from backupagent.exitcodes import ExitCode
from backupagent.settings import Settings, load_settings


@dataclass
class AppContext:
    config_dir: Path
    state_dir: Path
    log_level: str
    log_format: Optional[str]

    def settings(self) -> Settings:
        try:
            return load_settings(self.config_dir, self.state_dir)
        except SettingsError as exc:
            fail(ExitCode.CONFIG, str(exc))


def fail(code: ExitCode, message: str) -> NoReturn:
    """Print one clear line (or a few) on stderr and exit with ``code``."""
    click.echo(f"backupagent: error: {message}", err=True)
    sys.exit(int(code))


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


pass_app = click.make_pass_decorator(AppContext)
