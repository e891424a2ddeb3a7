"""``backupagent-server``: run the reference control plane and administer its store.

Every admin command works on the SQLite file directly (WAL mode), so it can be
used while ``serve`` runs: a ``config set`` is seen by the agent at its next
heartbeat.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import click

import backupagent
from backupagent.controlplane.errors import ControlPlaneError
from backupagent.controlplane.store import Store

DEFAULT_DB = "backupagent-server.db"
_TTL_RE = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
AGENT_COLUMNS = [
    "agentId",
    "hostname",
    "os",
    "arch",
    "agentVersion",
    "lastStatus",
    "lastHeartbeatAt",
    "configInSync",
]
JOB_COLUMNS = [
    "jobId",
    "agentId",
    "databaseId",
    "status",
    "stages",
    "dumpSize",
    "compressedSize",
    "durationMs",
    "errorCode",
    "uploadPath",
]
_TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``24h``, ``7d`` -> seconds."""
    match = _TTL_RE.match(text.strip())
    if not match or float(match.group(1)) <= 0:
        raise click.BadParameter(f"{text!r} is not a positive duration like 30m, 24h or 7d")
    return float(match.group(1)) * _TTL_UNITS[match.group(2)]


def db_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--db",
        "db_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=DEFAULT_DB,
        envvar="BACKUPAGENT_SERVER_DB",
        show_default=True,
        show_envvar=True,
        help="SQLite file holding the control plane's state (created if missing).",
    )(func)


def json_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")(
        func
    )


def _open(db_path: Path) -> Store:
    try:
        return Store(db_path)
    except Exception as exc:  # sqlite3 errors: unreadable file, not a database, ...
        raise click.ClickException(f"cannot open store {str(db_path)!r}: {exc}") from exc


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _table(rows: Sequence[Dict[str, Any]], columns: Sequence[str]) -> None:
    """Plain aligned columns; ``-`` for missing values."""
    cells = [[("-" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    click.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip())
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


@click.group()
@click.version_option(backupagent.__version__, prog_name="backupagent-server")
def main() -> None:
    """Reference control plane for backupagent (the Agent API, self-hosted)."""


@main.command()
@db_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=int, help="0 picks a free port.")
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
)
def serve(db_path: Path, host: str, port: int, log_level: str) -> None:
    """Serve the Agent API under /api/v1/agent until interrupted."""
    from backupagent.controlplane.server import bind, make_server, url_for

    store = _open(db_path)
    try:
        sock, actual = bind(host, port)
    except OSError as exc:
        store.close()
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc}") from exc
    url = url_for(host, actual)
    click.echo(f"backupagent-server listening on {url} (Agent API: {url}/api/v1/agent)")
    click.echo(f"store: {db_path.resolve()}")
    sys.stdout.flush()
    try:
        make_server(store, log_level=log_level).run(sockets=[sock])
    except KeyboardInterrupt:
        pass  # uvicorn already shut down gracefully; Ctrl-C is the normal way to stop
    finally:
        sock.close()
        store.close()


@main.group()
def token() -> None:
    """One-time registration tokens."""


@token.command("create")
@db_option
@click.option("--ttl", default="24h", show_default=True, help="Validity: 30m, 24h, 7d, ...")
@json_option
def token_create(db_path: Path, ttl: str, as_json: bool) -> None:
    """Create a token and print it (only its hash is stored: this is the one chance to copy it)."""
    seconds = parse_ttl(ttl)
    with _open(db_path) as store:
        value = store.create_registration_token(seconds)
        info = store.list_registration_tokens()[-1]
    if as_json:
        _emit_json({"token": value, "expiresAt": info["expiresAt"]})
    else:
        click.echo(value)
        hint = "use: backupagent register --token-file FILE"
        click.echo(f"expires {info['expiresAt']}; {hint}", err=True)


@token.command("list")
@db_option
@json_option
def token_list(db_path: Path, as_json: bool) -> None:
    """Tokens (by hash prefix) and whether they are valid, used or expired."""
    with _open(db_path) as store:
        rows = store.list_registration_tokens()
    if as_json:
        _emit_json(rows)
    else:
        _table(rows, ["tokenHashPrefix", "state", "createdAt", "expiresAt", "usedByAgent"])


@main.group()
def config() -> None:
    """Per-agent config: schedules, targets and alert channels."""


@config.command("set")
@db_option
@click.option("--agent", "agent_id", required=True, help="Agent id (see `agents list`).")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path))
def config_set(db_path: Path, agent_id: str, file: Path) -> None:
    """Replace an agent's config with FILE (.yaml, .yml or .json; - for YAML on stdin)."""
    doc = _load_doc(file)
    with _open(db_path) as store:
        try:
            digest = store.set_config(agent_id, doc)
        except ControlPlaneError as exc:
            raise click.ClickException(exc.message) from exc
    click.echo(f"config for agent {agent_id} set; configHash {digest}")
    click.echo("the agent pulls it at its next heartbeat", err=True)


def _load_doc(file: Path) -> Any:
    import yaml

    try:
        text = sys.stdin.read() if str(file) == "-" else file.read_text(encoding="utf-8")
    except OSError as exc:
        raise click.ClickException(f"cannot read {str(file)!r}: {exc.strerror}") from exc
    try:
        # JSON is parsed as JSON: YAML 1.1 would read a number like 1e3 as a string
        if file.suffix.lower() == ".json":
            return json.loads(text)
        return yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise click.ClickException(f"{str(file)!r} is not valid YAML/JSON: {exc}") from exc


@config.command("show")
@db_option
@click.option("--agent", "agent_id", required=True, help="Agent id (see `agents list`).")
@click.option("--hash", "only_hash", is_flag=True, help="Print only the configHash.")
def config_show(db_path: Path, agent_id: str, only_hash: bool) -> None:
    """Print the agent's config document as JSON (what GET /config returns)."""
    with _open(db_path) as store:
        if store.get_agent(agent_id) is None:
            raise click.ClickException(f"agent {agent_id!r} is not registered (see `agents list`)")
        if only_hash:
            click.echo(store.config_hash(agent_id))
        else:
            _emit_json(store.get_config(agent_id))


@main.group()
def agents() -> None:
    """Registered agents."""


@agents.command("list")
@db_option
@json_option
def agents_list(db_path: Path, as_json: bool) -> None:
    """Agents with their last heartbeat and whether they run the current config."""
    with _open(db_path) as store:
        rows = store.list_agents()
    if as_json:
        _emit_json(rows)
    else:
        _table(
            rows,
            AGENT_COLUMNS,
        )


@main.group()
def jobs() -> None:
    """Backup jobs reported by agents."""


@jobs.command("list")
@db_option
@click.option("--agent", "agent_id", default=None, help="Only this agent's jobs.")
@json_option
def jobs_list(db_path: Path, agent_id: Optional[str], as_json: bool) -> None:
    """Jobs with their status history."""
    with _open(db_path) as store:
        rows = store.list_jobs(agent_id)
    if as_json:
        _emit_json(rows)
        return
    for row in rows:
        row["stages"] = " > ".join(h["status"] for h in row["history"]) or "-"
    _table(
        rows,
        JOB_COLUMNS,
    )


@main.command("logs")
@db_option
@click.option("--job", "job_id", required=True, help="Job id (see `jobs list`).")
@json_option
def logs(db_path: Path, job_id: str, as_json: bool) -> None:
    """A job's log entries, in the order received."""
    with _open(db_path) as store:
        if store.get_job(job_id) is None:
            raise click.ClickException(f"job {job_id!r} not found (see `jobs list`)")
        rows = store.job_logs(job_id)
    if as_json:
        _emit_json(rows)
        return
    for row in rows:
        click.echo(f"{row['timestamp']} {row['level'].upper():5} {row['message']}")


@main.group()
def anomalies() -> None:
    """Anomalies reported by agents."""


@anomalies.command("list")
@db_option
@click.option("--agent", "agent_id", default=None, help="Only this agent's anomalies.")
@json_option
def anomalies_list(db_path: Path, agent_id: Optional[str], as_json: bool) -> None:
    with _open(db_path) as store:
        rows = store.list_anomalies(agent_id)
    if as_json:
        _emit_json(rows)
    else:
        _table(rows, ["createdAt", "agentId", "type", "severity", "title", "description"])


@main.group()
def verifications() -> None:
    """Restore verifications reported by agents."""


@verifications.command("list")
@db_option
@click.option("--job", "job_id", default=None, help="Only this job's verifications.")
@json_option
def verifications_list(db_path: Path, job_id: Optional[str], as_json: bool) -> None:
    with _open(db_path) as store:
        rows = store.list_verifications(job_id)
    if as_json:
        _emit_json(rows)
        return
    for row in rows:
        row["checks"] = _summarize_checks(row["checks"])
    _table(rows, ["verificationId", "jobId", "status", "restoreDurationMs", "checks"])


def _summarize_checks(checks: List[Dict[str, Any]]) -> str:
    return ", ".join(f"{c['checkName']}={c['status']}" for c in checks) or "-"


@main.command("openapi")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write here (e.g. docs/openapi.json) instead of stdout.",
)
def openapi(output: Optional[Path]) -> None:
    """Print (or write) the OpenAPI document generated from the app."""
    from backupagent.controlplane.openapi import openapi_document

    text = openapi_document()
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
        click.echo(f"wrote {output}", err=True)


if __name__ == "__main__":
    main()
