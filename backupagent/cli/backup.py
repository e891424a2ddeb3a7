"""``backupagent backup``: run one backup now.

Two forms: ``--schedule ID`` runs a configured schedule exactly as the daemon
would (and reports it the same way); ``DATABASE_URL --to TARGET_URL`` is a
one-off with no config at all, recorded locally.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, Optional, Tuple

import click

from backupagent.cli.common import (
    CONFIG_FILE_OPTION,
    active_config,
    agent_errors,
    find_schedule,
    human_size,
    open_target,
)
from backupagent.cli.context import AppContext, emit_json, fail, pass_app
from backupagent.exitcodes import ExitCode


@click.command(
    help="""Back up one database now.

\b
  backupagent backup --schedule ID
      run a configured schedule now, reported like a scheduled run
  backupagent backup DATABASE_URL --to TARGET_URL [--recipient age1...]
      a one-off backup without any config, recorded in the state dir

DATABASE_URL: postgresql://user@host:port/db, mysql://user@host:port/db,
redis://host:port/0, sqlite:///abs/path.db. Passwords come from
<config-dir>/credentials.yaml, ~/.pgpass, MySQL option files or the tools'
environment (PGPASSWORD...); a password in the URL works but is visible to
other users in the process list.

TARGET_URL: file:///dir or s3://bucket/prefix (?endpoint=URL&region=R).
Without --recipient the backup is stored unencrypted (with a warning)."""
)
@click.argument("database_url", required=False)
@click.option("--schedule", "schedule_id", metavar="ID", help="Run this schedule now.")
@CONFIG_FILE_OPTION
@click.option("--to", "target_url", metavar="TARGET_URL", help="Where to store a one-off backup.")
@click.option(
    "--recipient",
    "-r",
    "recipients",
    multiple=True,
    metavar="AGE1...",
    help="age recipient to encrypt to (repeatable).",
)
@click.option(
    "--level",
    type=click.IntRange(1, 22),
    default=3,
    show_default=True,
    help="zstd compression level.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_app
def backup(
    app: AppContext,
    database_url: Optional[str],
    schedule_id: Optional[str],
    config_file: Optional[Path],
    target_url: Optional[str],
    recipients: Tuple[str, ...],
    level: int,
    as_json: bool,
) -> None:
    from backupagent.cli.progress import ProgressLine
    from backupagent.jobs.backup import run_backup
    from backupagent.jobs.result import CancelToken

    settings = app.settings()
    if schedule_id is not None:
        if database_url or target_url or recipients:
            fail(
                ExitCode.USAGE,
                "--schedule takes no DATABASE_URL, --to or --recipient: the "
                "schedule's config says what and where",
            )
        spec, reporter = _from_schedule(app, schedule_id, config_file)
    elif database_url and target_url:
        spec, reporter = _one_off(app, database_url, target_url, recipients, level)
    else:
        fail(ExitCode.USAGE, "give --schedule ID, or DATABASE_URL --to TARGET_URL (see --help)")
    progress = ProgressLine(label=f"{spec.conn.db_type}/{spec.conn.database_name}: ")
    try:
        result = run_backup(spec, reporter, CancelToken(), progress=progress)
    except KeyboardInterrupt:
        progress.done()
        fail(ExitCode.INTERRUPTED, "interrupted: the partial backup was discarded")
    progress.done()
    from backupagent.jobs.runner import close_reporter

    close_reporter(reporter, timeout=5.0)
    if spec.alerts is not None:
        spec.alerts.close(timeout=30)
    if schedule_id is not None:
        from backupagent.daemon.state import AgentState
        from backupagent.logs import utc_timestamp

        AgentState(settings.state_dir).record_run(
            schedule_id,
            started_at=utc_timestamp(),
            status=result.status,
            job_id=result.job_id,
            error=result.error_message,
        )
    if as_json:
        emit_json(
            {
                "status": result.status,
                "jobId": result.job_id,
                "errorCode": result.error_code,
                "errorMessage": result.error_message,
                **{k: v for k, v in result.details.items() if k != "manifest"},
            }
        )
    elif result.ok:
        d = result.details
        click.echo(f"Backup completed: {d['uploadPath']}")
        click.echo(
            f"  dump {human_size(d['dumpSize'])}, stored {human_size(d['storedSize'])}, "
            f"{d['durationMs'] / 1000:.1f}s, sha256 {d['sha256']}"
        )
    if not result.ok:
        fail(ExitCode.FAILURE, f"backup failed ({result.error_code}): {result.error_message}")


def _from_schedule(app: AppContext, schedule_id: str, config_file: Optional[Path]) -> Any:
    from backupagent.jobs.backup import BackupSpec
    from backupagent.jobs.runner import make_reporter, resolve_schedule

    settings = app.settings()
    config = active_config(app, config_file)
    schedule = find_schedule(config, schedule_id)
    api = None
    if config_file is None and settings.registered:
        from backupagent.cli.run import make_api_client

        with agent_errors(ExitCode.CONFIG):
            api = make_api_client(settings)
    from backupagent.alerts import AlertDispatcher
    from backupagent.analysis import History

    with agent_errors(ExitCode.CONFIG):
        spec = BackupSpec(
            **resolve_schedule(settings, schedule, config),
            history=History.in_state_dir(settings.state_dir),
            alerts=AlertDispatcher(
                config.alert_channels, settings.hostname or socket.gethostname()
            ),
        )
    return spec, make_reporter(settings, api)


def _one_off(
    app: AppContext, database_url: str, target_url: str, recipients: Tuple[str, ...], level: int
) -> Any:
    from backupagent.crypto.recipient import parse_recipient
    from backupagent.engines.credentials import resolve_connection
    from backupagent.jobs.backup import BackupSpec
    from backupagent.report.local import LocalReporter

    settings = app.settings()
    with agent_errors(ExitCode.USAGE):
        for r in recipients:
            parse_recipient(r)
        conn = resolve_connection(database_url, settings.credentials_file)
    target = open_target(target_url)
    spool = settings.state_dir / "spool"
    spool.mkdir(parents=True, exist_ok=True, mode=0o700)
    spec = BackupSpec(
        conn=conn,
        target=target,
        database_id=f"cli:{conn.db_type}",
        target_id="cli",
        hostname=settings.hostname or socket.gethostname(),
        recipients=recipients,
        compression_level=level,
        spool_dir=spool,
    )
    return spec, LocalReporter(settings.state_dir)
