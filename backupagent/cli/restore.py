"""``backupagent restore`` and ``backupagent decrypt``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, List, Optional, Tuple

import click

from backupagent.cli.common import agent_errors, human_size, split_object_url
from backupagent.cli.context import AppContext, fail, pass_app
from backupagent.exitcodes import ExitCode


def _identities(paths: Tuple[Path, ...]) -> List[Any]:
    from backupagent.crypto.age import load_identities

    out: List[Any] = []
    with agent_errors(ExitCode.USAGE):
        for p in paths:
            out.extend(load_identities(p))
    return out


@click.command(
    help="""Restore a backup into a database: download, check the SHA-256
against the manifest, decrypt, decompress and feed the native restore tool, then (for
PostgreSQL) compare every table's row count with the manifest.

BACKUP is the backup's URL as `backupagent list` prints it (file:///... or s3://bucket/key).
The database must exist and be empty unless --force."""
)
@click.argument("backup_url")
@click.option(
    "--to",
    "database_url",
    required=True,
    metavar="DATABASE_URL",
    help="postgresql://user@host:port/db, mysql://..., sqlite:///path.db",
)
@click.option(
    "--identity",
    "-i",
    "identity_files",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="age identity file (repeatable). Needed for encrypted backups.",
)
@click.option("--force", is_flag=True, help="Restore into a database that is not empty.")
@pass_app
def restore(
    app: AppContext,
    backup_url: str,
    database_url: str,
    identity_files: Tuple[Path, ...],
    force: bool,
) -> None:
    from backupagent.engines.credentials import resolve_connection
    from backupagent.jobs.restore import restore_backup

    settings = app.settings()
    target, key = split_object_url(backup_url)
    identities = _identities(identity_files)
    with agent_errors(ExitCode.USAGE):
        conn = resolve_connection(database_url, settings.credentials_file)
    from backupagent.cli.progress import ProgressLine

    click.echo(f"Restoring {backup_url} into {conn.redacted_url()} ...", err=True)
    progress = ProgressLine(label=f"{conn.db_type}/{conn.database_name}: ")
    try:
        with agent_errors():
            try:
                outcome = restore_backup(
                    target,
                    key,
                    conn,
                    identities=identities,
                    force=force,
                    progress=progress.restore,
                )
            finally:
                progress.done()
    except KeyboardInterrupt:
        fail(ExitCode.INTERRUPTED, "interrupted: the database may be partially restored")
    click.echo(
        f"Restored {human_size(outcome.dump_size)} of dump in "
        f"{outcome.duration_ms / 1000:.1f}s; SHA-256 {outcome.sha256} verified"
        + (
            f"; {outcome.row_counts_checked} tables' row counts match the manifest"
            if outcome.row_counts_checked
            else ""
        )
    )


@click.command(
    help="""Decrypt (and decompress) a stored backup to a file or stdout, for
restoring by hand: `backupagent decrypt BACKUP -i key.txt | pg_restore -d db`.
The same as `age -d -i key.txt FILE | zstd -d`, with the manifest's SHA-256 checked."""
)
@click.argument("backup_url")
@click.option(
    "--identity",
    "-i",
    "identity_files",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="age identity file.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write here instead of stdout.",
)
@click.option("--keep-compressed", is_flag=True, help="Only decrypt; leave the zstd frame.")
def decrypt(
    backup_url: str, identity_files: Tuple[Path, ...], output: Optional[Path], keep_compressed: bool
) -> None:
    from backupagent.jobs.restore import read_backup_manifest
    from backupagent.pipeline.manifest import is_encrypted
    from backupagent.pipeline.restore import open_restore_stream

    target, key = split_object_url(backup_url)
    identities = _identities(identity_files)
    with agent_errors():
        manifest = read_backup_manifest(target, key)
        encrypted = is_encrypted(manifest) if manifest else None
        if encrypted and not identities:
            fail(ExitCode.USAGE, "this backup is encrypted: pass --identity FILE")
        if output is None and sys.stdout.isatty():
            fail(
                ExitCode.USAGE,
                "refusing to write a binary dump to a terminal: use -o FILE or a pipe",
            )
        reader = target.open_reader(key)
        sink = open(output, "xb") if output else sys.stdout.buffer  # noqa: SIM115
        try:
            stream = open_restore_stream(
                reader,
                identities,
                encrypted,
                False if keep_compressed else None,
                expected_sha256=(manifest or {}).get("sha256"),
            )
            while True:
                chunk = stream.read(1 << 20)
                if not chunk:
                    break
                sink.write(chunk)
            sink.flush()
        except BaseException:
            if output:
                sink.close()
                output.unlink(missing_ok=True)  # a partial plaintext must not look complete
            raise
        finally:
            reader.close()
        if output:
            sink.close()
