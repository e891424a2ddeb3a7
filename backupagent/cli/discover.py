"""``backupagent discover``: what the heartbeat would report as discoveredDatabases."""

from __future__ import annotations

import click

from backupagent.cli.context import emit_json


@click.command(
    help="List the database servers (and databases, where local credentials allow) "
    "running on this host, as reported in heartbeats."
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (the API's fields).")
def discover(as_json: bool) -> None:
    from backupagent.api.models import to_json
    from backupagent.discovery import discover_databases

    found = discover_databases()
    if as_json:
        emit_json(to_json(found))
        return
    if not found:
        click.echo("No database servers found on this host.")
        return
    click.echo(f"{'TYPE':<11} {'VERSION':<10} {'HOST':<15} {'PORT':<6} DATABASE")
    for db in found:
        click.echo(
            f"{db.dbType:<11} {db.dbVersion:<10} {db.host:<15} {db.port:<6} "
            f"{db.databaseName or '(not listed)'}"
        )
