"""``backupagent list TARGET_URL``: the backups stored in a target, from their manifests."""

from __future__ import annotations

import click

from backupagent.cli.common import agent_errors, human_size, open_target
from backupagent.cli.context import emit_json


@click.command(
    name="list",
    help="""List the backups in a target, newest first, read from the
manifests beside them. TARGET_URL is file:///dir or s3://bucket/prefix (S3 options as URL
query: ?endpoint=URL&region=R&path_style=true).""",
)
@click.argument("target_url")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_backups(target_url: str, as_json: bool) -> None:
    from backupagent.jobs.prune import scan

    target = open_target(target_url)
    with agent_errors():
        inventory = scan(target, "")
    rows = []
    for b in sorted(inventory.backups, key=lambda b: b.created_at, reverse=True):
        m = b.manifest or {}
        db = m.get("database") or {}
        sizes = m.get("sizes") or {}
        rows.append(
            {
                "url": target.url_for(b.key),
                "key": b.key,
                "createdAt": b.created_at.isoformat(),
                "database": f"{db.get('type', '?')}/{db.get('name', '?')}" if db else b.database,
                "storedSize": b.size,
                "dumpSize": sizes.get("dump"),
                "encrypted": (m.get("encryption") or {}).get("format", "?") != "none",
                "jobId": b.job_id,
                "good": b.good,
            }
        )
    if as_json:
        emit_json({"backups": rows, "orphans": [o.key for o in inventory.orphans]})
        return
    if not rows:
        click.echo("No backups found.")
    else:
        click.echo(f"{'CREATED (UTC)':<20} {'DATABASE':<28} {'STORED':>10} {'DUMP':>10}  URL")
        for r in rows:
            flag = "" if r["encrypted"] else " (unencrypted)"
            click.echo(
                f"{r['createdAt'][:19].replace('T', ' '):<20} {r['database'][:28]:<28} "
                f"{human_size(r['storedSize']):>10} {human_size(r['dumpSize']):>10}  "
                f"{r['url']}{flag}"
            )
    for orphan in inventory.orphans:
        click.echo(
            f"warning: {orphan.key} has no manifest (incomplete or foreign object)", err=True
        )
