"""``backupagent version``."""

from __future__ import annotations

import platform

import click

from backupagent import __version__
from backupagent.api.client import go_arch, go_os


@click.command(help="Print the agent version, platform and Python.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def version(as_json: bool) -> None:
    if as_json:
        from backupagent.cli.context import emit_json

        emit_json(
            {
                "version": __version__,
                "os": go_os(),
                "arch": go_arch(),
                "python": platform.python_version(),
            }
        )
    else:
        click.echo(
            f"backupagent {__version__} ({go_os()}/{go_arch()}, Python {platform.python_version()})"
        )
