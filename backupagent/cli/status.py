"""``backupagent status``: what this host's agent knows about itself.

Reads only local files (settings, state, cached config), so it answers even
when the daemon or the control plane is down.
"""

from __future__ import annotations

from typing import Any, Dict, List

import click

from backupagent.cli.context import AppContext, emit_json, pass_app


def collect_status(app: AppContext) -> Dict[str, Any]:
    from backupagent.config.load import LastGoodConfigCache
    from backupagent.daemon import schedules
    from backupagent.daemon.state import AgentState
    from backupagent.report.outbox import read_backlog

    settings = app.settings()
    state = AgentState(settings.state_dir).snapshot() if settings.state_dir.exists() else {}
    cached = LastGoodConfigCache(settings.state_dir).load() if settings.state_dir.exists() else None
    runs = state.get("schedules", {})
    rows: List[Dict[str, Any]] = []
    if cached is not None:
        _, config = cached
        for s in config.schedules:
            nxt = schedules.next_fire(s.cron, s.timezone) if s.enabled else None
            last = runs.get(s.id, {})
            rows.append(
                {
                    "id": s.id,
                    "database": f"{s.database.db_type}/{s.database.database_name}",
                    "cron": s.cron,
                    "timezone": s.timezone,
                    "enabled": s.enabled,
                    "nextRun": nxt.isoformat() if nxt else None,
                    "lastRun": last.get("lastRunAt"),
                    "lastStatus": last.get("lastStatus"),
                }
            )
    return {
        "registered": settings.registered,
        "agentId": settings.agent_id,
        "server": settings.server_url,
        "configDir": str(settings.config_dir),
        "stateDir": str(settings.state_dir),
        "lastHeartbeat": state.get("lastHeartbeat"),
        "lastSuccessfulHeartbeat": state.get("lastHeartbeatOk"),
        "lastConfig": state.get("lastConfig"),
        "schedules": rows,
        "outbox": read_backlog(settings.state_dir) if settings.state_dir.exists() else None,
    }


@click.command(help="Show registration, last heartbeat and config, and each schedule's next run.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def status(app: AppContext, as_json: bool) -> None:
    info = collect_status(app)
    if as_json:
        emit_json(info)
        return
    if info["registered"]:
        click.echo(f"Registered:      yes, agent {info['agentId']} with {info['server']}")
    else:
        click.echo("Registered:      no (run `backupagent register --token TOKEN`)")
    hb = info["lastHeartbeat"]
    if hb:
        outcome = "ok" if hb.get("ok") else f"FAILED: {hb.get('error', '')}"
        click.echo(f"Last heartbeat:  {hb['at']} {outcome}")
        if not hb.get("ok") and info["lastSuccessfulHeartbeat"]:
            click.echo(f"Last good beat:  {info['lastSuccessfulHeartbeat']}")
    else:
        click.echo("Last heartbeat:  never")
    outbox = info["outbox"]
    if outbox and outbox.get("pending"):
        age = outbox.get("oldestAgeSeconds") or 0
        click.echo(
            f"Outbox:          {outbox['pending']} report(s) waiting for the control "
            f"plane (oldest {age:.0f}s)"
            + (
                f", {outbox['droppedLogLines']} log lines dropped"
                if outbox.get("droppedLogLines")
                else ""
            )
        )
    elif outbox is not None:
        click.echo("Outbox:          empty (every report delivered)")
    cfg = info["lastConfig"]
    if cfg:
        click.echo(f"Config:          {cfg['hash'][:12]} from {cfg['source']} at {cfg['at']}")
    else:
        click.echo("Config:          none yet")
    if not info["schedules"]:
        click.echo("Schedules:       none")
        return
    click.echo("Schedules:")
    for row in info["schedules"]:
        state = "" if row["enabled"] else " (disabled)"
        last = f"last {row['lastRun']} {row['lastStatus']}" if row["lastRun"] else "never run"
        click.echo(f"  {row['id']}: {row['database']} '{row['cron']}' {row['timezone']}{state}")
        click.echo(f"      next {row['nextRun'] or '-'}; {last}")
