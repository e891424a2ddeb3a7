"""``backupagent keygen``: an age identity for encrypting backups."""

from __future__ import annotations

from pathlib import Path

import click

from backupagent.cli.common import agent_errors


@click.command(
    help="""Create an age identity (secret key) file, mode 0600, and print its
public recipient (age1...). Put the recipient in a target's encryption.recipients; keep the
identity file safe and OFF this host if you can: whoever has it can read the backups.
The file is the standard age format: `age -d -i FILE` decrypts the backups."""
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Where to write the identity file (refuses to overwrite).",
)
def keygen(output: Path) -> None:
    from backupagent.crypto.age import generate_identity, write_identity_file

    identity = generate_identity()
    with agent_errors():
        write_identity_file(output, identity)
    click.echo(f"Identity written to {output} (mode 0600).", err=True)
    click.echo(identity.recipient)
