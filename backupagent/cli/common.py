"""Helpers shared by the backup-related commands: the active config, a target
from a URL, human sizes, and turning AgentErrors into one-line failures."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, Optional, Tuple

import click

from backupagent.cli.context import AppContext, fail
from backupagent.errors import AgentError, ConfigInvalid
from backupagent.exitcodes import ExitCode

CONFIG_FILE_OPTION = click.option(
    "--config-file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Standalone config (YAML). Default: the last config pulled from the control plane.",
)


def active_config(app: AppContext, config_file: Optional[Path]) -> Any:
    """The config to act on: the given file, or the daemon's last good config."""
    from backupagent.config.load import LastGoodConfigCache, load_config_file

    if config_file is not None:
        try:
            return load_config_file(config_file)[1]
        except ConfigInvalid as exc:
            fail(ExitCode.CONFIG, str(exc))
    cached = LastGoodConfigCache(app.settings().state_dir).load()
    if cached is None:
        fail(
            ExitCode.CONFIG,
            "no config yet: pass --config-file FILE, or let `backupagent run` "
            "pull one from the control plane first",
        )
    return cached[1]


def find_schedule(config: Any, schedule_id: str) -> Any:
    for schedule in config.schedules:
        if schedule.id == schedule_id:
            return schedule
    known = ", ".join(s.id for s in config.schedules) or "none"
    fail(ExitCode.USAGE, f"no schedule with id {schedule_id!r} (known: {known})")


def open_target(url: str) -> Any:
    from backupagent.targets.registry import open_target_url

    with agent_errors():
        return open_target_url(url)


def split_object_url(url: str) -> Tuple[Any, str]:
    """A backup's URL (file:///dir/x.dump.zst.age, s3://bucket/key) as (target, key).

    The target is rooted at the object's directory for files and at the bucket
    for S3, so the manifest beside the object is reachable by the same target.
    """
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme == "file":
        path = Path(parts.path)
        return open_target(f"file://{path.parent}"), path.name
    if parts.scheme == "s3":
        key = parts.path.lstrip("/")
        query = f"?{parts.query}" if parts.query else ""
        return open_target(f"s3://{parts.netloc}{query}"), key
    fail(
        ExitCode.USAGE,
        f"{url!r} is not a backup URL: use file:///path/to/backup or "
        "s3://bucket/key (as printed by `backupagent list`)",
    )


@contextlib.contextmanager
def agent_errors(code: ExitCode = ExitCode.FAILURE) -> Iterator[None]:
    try:
        yield
    except ConfigInvalid as exc:
        fail(ExitCode.CONFIG, str(exc))
    except AgentError as exc:
        fail(code, str(exc))


def human_size(n: Optional[float]) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
