"""``backupagent verify BACKUP``: prove a stored backup restores, on demand."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import click

from backupagent.cli.common import split_object_url
from backupagent.cli.context import AppContext, emit_json, fail, pass_app
from backupagent.exitcodes import ExitCode


@click.command(
    help="""Restore a stored backup into a throwaway Docker container and check it:
row counts against the manifest, the schema against the dump-time schema hash, and any
--query. The container has no network, is limited in memory and CPU, and is always removed.

BACKUP is the URL `backupagent list` prints. Exit 0 when every check passed, 1 otherwise.
The image defaults to the engine's official one for the dumped version (postgres:<major>,
mariadb:<major.minor>, redis:<major>); override with --image or the host settings
(verification.images in agent.yaml) on hosts without Docker Hub."""
)
@click.argument("backup_url")
@click.option(
    "--identity",
    "-i",
    "identity_files",
    multiple=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="age identity file (default: verification.identityFile in agent.yaml).",
)
@click.option("--image", help="Container image to restore into.")
@click.option("--query", metavar="SQL", help="A read-only query to run in the restored copy.")
@click.option("--expect", metavar="VALUE", help="The value --query must return.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=10),
    default=1800,
    show_default=True,
    help="Hard limit in seconds for the whole verification.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the verification report as JSON.")
@pass_app
def verify(
    app: AppContext,
    backup_url: str,
    identity_files: Tuple[Path, ...],
    image: Optional[str],
    query: Optional[str],
    expect: Optional[str],
    timeout: float,
    as_json: bool,
) -> None:
    from backupagent.api.models import to_json
    from backupagent.config.model import VerificationCheckSpec
    from backupagent.crypto.age import load_identities
    from backupagent.jobs.restore import read_backup_manifest
    from backupagent.verify.run import verify_backup

    if (query is None) != (expect is None):
        fail(ExitCode.USAGE, "--query and --expect go together")
    settings = app.settings()
    target, key = split_object_url(backup_url)
    manifest = read_backup_manifest(target, key)
    if manifest is None:
        fail(ExitCode.FAILURE, f"{backup_url} has no manifest: nothing to verify against")
    checks = [
        VerificationCheckSpec(
            check_type="row_count",
            check_name=None,
            query=None,
            expected_value=None,
            tolerance_pct=None,
        ),
        VerificationCheckSpec(
            check_type="schema_match",
            check_name=None,
            query=None,
            expected_value=None,
            tolerance_pct=None,
        ),
    ]
    if query is not None:
        checks.append(
            VerificationCheckSpec(
                check_type="custom_query",
                check_name="--query",
                query=query,
                expected_value=expect,
                tolerance_pct=None,
            )
        )
    identities = [i for f in identity_files for i in load_identities(f)] or None
    outcome = verify_backup(
        target,
        key,
        manifest,
        image=image,
        identities=identities,
        checks=checks,
        timeout=timeout,
        settings_extra=settings.extra,
    )
    if as_json:
        emit_json(
            {
                **to_json(outcome.report),
                "pathTaken": outcome.path_taken,
                "errorCode": outcome.details.get("errorCode"),
                "errorMessage": outcome.details.get("errorMessage"),
            }
        )
    else:
        click.echo(
            f"Verification {outcome.status.upper()} ({outcome.path_taken}; restore "
            f"{outcome.report.restoreDurationMs / 1000:.1f}s)"
        )
        for c in outcome.report.checks:
            delta = f" ({c.deltaPct:+.1f}%)" if c.deltaPct else ""
            click.echo(
                f"  {c.status:<7} {c.checkType:<12} {c.checkName}: expected "
                f"{c.expectedValue}, got {c.actualValue}{delta}"
            )
        if outcome.details.get("errorMessage"):
            click.echo(
                f"  error ({outcome.details.get('errorCode')}): {outcome.details['errorMessage']}"
            )
    if outcome.status != "passed":
        raise SystemExit(int(ExitCode.FAILURE))
