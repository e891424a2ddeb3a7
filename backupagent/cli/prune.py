"""``backupagent prune``: apply a retention policy now (or show what it would do)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from backupagent.cli.common import (
    CONFIG_FILE_OPTION,
    active_config,
    agent_errors,
    find_schedule,
    open_target,
)
from backupagent.cli.context import AppContext, fail, pass_app
from backupagent.exitcodes import ExitCode


@click.command(
    help="""Delete old backups by retention policy (restic-style keep rules;
docs/retention.md). Either --schedule ID (its target and retention from the config) or
TARGET_URL with --keep-* options. The newest good backup is never deleted; objects
without a manifest are never touched. Use --dry-run first."""
)
@click.argument("target_url", required=False)
@click.option("--schedule", "schedule_id", metavar="ID", help="Use this schedule's policy.")
@CONFIG_FILE_OPTION
@click.option("--keep-last", type=click.IntRange(min=0))
@click.option("--keep-daily", type=click.IntRange(min=0))
@click.option("--keep-weekly", type=click.IntRange(min=0))
@click.option("--keep-monthly", type=click.IntRange(min=0))
@click.option("--dry-run", is_flag=True, help="Show what would be deleted; delete nothing.")
@pass_app
def prune(
    app: AppContext,
    target_url: Optional[str],
    schedule_id: Optional[str],
    config_file: Optional[Path],
    keep_last: Optional[int],
    keep_daily: Optional[int],
    keep_weekly: Optional[int],
    keep_monthly: Optional[int],
    dry_run: bool,
) -> None:
    from backupagent.jobs.prune import format_plan, prune_command_impl
    from backupagent.retention import RetentionPolicy

    prefix = ""
    if schedule_id is not None:
        if target_url is not None:
            fail(ExitCode.USAGE, "give either --schedule or TARGET_URL, not both")
        from backupagent.targets.keys import database_prefix
        from backupagent.targets.registry import target_from_config

        config = active_config(app, config_file)
        schedule = find_schedule(config, schedule_id)
        with agent_errors():
            target = target_from_config(config.target(schedule.target_id))
        import socket

        host = app.settings().hostname or socket.gethostname()
        prefix = (
            database_prefix(
                "", host, schedule.database.db_type, schedule.database.database_name or "default"
            )
            + "/"
        )
        policy = RetentionPolicy.from_any(schedule.retention)
    elif target_url is not None:
        target = open_target(target_url)
        with agent_errors(ExitCode.USAGE):
            policy = RetentionPolicy(
                keep_last=keep_last,
                keep_daily=keep_daily,
                keep_weekly=keep_weekly,
                keep_monthly=keep_monthly,
            )
    else:
        fail(ExitCode.USAGE, "give --schedule ID or TARGET_URL (see --help)")
    with agent_errors():
        plan = prune_command_impl(target, prefix, policy, dry_run=dry_run)
    click.echo(format_plan(plan))
    if plan.errors:
        raise SystemExit(int(ExitCode.FAILURE))
