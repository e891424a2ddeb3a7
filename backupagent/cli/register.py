"""``backupagent register``: trade a one-time token for an agent id and API key."""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Optional

import click

from backupagent import __version__
from backupagent.api.client import ApiClient, go_arch, go_os
from backupagent.api.errors import (
    ApiError,
    AuthRejected,
    PermanentApiError,
    TransientApiError,
    Unreachable,
)
from backupagent.api.models import RegisterRequest
from backupagent.api.retry import RetryPolicy
from backupagent.cli.context import AppContext, fail, pass_app
from backupagent.errors import AgentError
from backupagent.exitcodes import ExitCode
from backupagent.settings import DEFAULT_SERVER_URL, save_registration

REGISTER_RETRY = RetryPolicy(base=1.0, cap=8.0, max_attempts=4)


def read_token(token: Optional[str], token_file: Optional[Path]) -> str:
    """The token from exactly one source; ``-`` reads stdin (keeps it out of /proc)."""
    if (token is None) == (token_file is None):
        fail(
            ExitCode.USAGE,
            "give the token with exactly one of --token TOKEN, --token - "
            "(stdin) or --token-file PATH",
        )
    if token_file is not None:
        try:
            value = token_file.read_text(encoding="utf-8")
        except OSError as exc:
            fail(ExitCode.USAGE, f"cannot read --token-file {token_file}: {exc.strerror}")
    elif token == "-":  # noqa: S105 - the stdin marker, not a password
        value = sys.stdin.readline()
    else:
        assert token is not None
        value = token
    value = value.strip()
    if not value:
        fail(ExitCode.USAGE, "the registration token is empty")
    if any(c.isspace() or ord(c) < 32 for c in value) or len(value) > 4096:
        fail(
            ExitCode.USAGE,
            "the registration token contains whitespace or control "
            "characters: copy it again from the dashboard",
        )
    return value


@click.command(
    help="""Register this host with the control plane using a one-time token
from the dashboard. Stores the agent id in <config-dir>/agent.yaml and the API key in
<config-dir>/api-key (mode 0600). The key is never printed.

Pass the token on stdin (--token -) or from a file (--token-file) to keep it out of
the process list."""
)
@click.option("--token", metavar="TOKEN", help="Registration token, or - to read it from stdin.")
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Read the registration token from this file.",
)
@click.option(
    "--server",
    metavar="URL",
    envvar="BACKUPAGENT_SERVER",
    help=f"Control plane URL. [default: {DEFAULT_SERVER_URL}; env: BACKUPAGENT_SERVER]",
)
@click.option(
    "--hostname", metavar="NAME", help="Name to register under. [default: this host's name]"
)
@click.option("--force", is_flag=True, help="Replace an existing registration.")
@click.option(
    "--insecure-http",
    is_flag=True,
    help="Allow plain http:// to a non-loopback server (the key travels in clear).",
)
@click.option(
    "--ca-bundle",
    type=click.Path(dir_okay=False, exists=True),
    help="CA bundle to verify the server's TLS certificate with.",
)
@pass_app
def register(
    app: AppContext,
    token: Optional[str],
    token_file: Optional[Path],
    server: Optional[str],
    hostname: Optional[str],
    force: bool,
    insecure_http: bool,
    ca_bundle: Optional[str],
) -> None:
    settings = app.settings()
    if settings.registered and not force:
        fail(
            ExitCode.ALREADY_REGISTERED,
            f"this host is already registered as agent {settings.agent_id} with "
            f"{settings.server_url}; pass --force to replace that registration",
        )
    secret = read_token(token, token_file)
    server_url = server or settings.server_url or DEFAULT_SERVER_URL
    name = hostname or settings.hostname or socket.gethostname()
    try:
        client = ApiClient(
            server_url, retry=REGISTER_RETRY, ca_bundle=ca_bundle, insecure_http=insecure_http
        )
    except AgentError as exc:
        fail(ExitCode.USAGE, str(exc))
    req = RegisterRequest(
        registrationToken=secret,
        hostname=name,
        os=go_os(),
        arch=go_arch(),
        agentVersion=__version__,
    )
    try:
        resp = client.register(req)
    except AuthRejected as exc:
        fail(
            ExitCode.AUTH,
            f"registration token rejected by {client.base_url} ({exc}): get a "
            "new token from the dashboard; tokens are single-use and expire",
        )
    except (Unreachable, TransientApiError) as exc:
        fail(ExitCode.UNREACHABLE, f"control plane unreachable: {exc}")
    except (PermanentApiError, ApiError) as exc:
        fail(ExitCode.SERVER, f"registration failed: {exc}")
    finally:
        client.close()
    try:
        save_registration(
            settings,
            server_url=client.base_url,
            agent_id=resp.agentId,
            api_key=resp.apiKey,
            hostname=name,
        )
    except OSError as exc:
        fail(
            ExitCode.FAILURE,
            f"registered as agent {resp.agentId}, but could not save the "
            f"key under {settings.config_dir}: {exc.strerror}. Fix the "
            "directory's permissions and register again with a new token",
        )
    if ca_bundle or insecure_http:
        _remember(settings.settings_file, ca_bundle, insecure_http)
    click.echo(f"Registered {name} as agent {resp.agentId} with {client.base_url}.")
    click.echo(f"API key saved to {settings.api_key_file} (mode 0600).")
    click.echo("Start the agent: sudo systemctl enable --now backupagent")


def _remember(path: Path, ca_bundle: Optional[str], insecure_http: bool) -> None:
    import yaml

    from backupagent.fsutil import atomic_write

    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if ca_bundle:
        data["caBundle"] = str(Path(ca_bundle).resolve())
    if insecure_http:
        data["insecureHttp"] = True
    atomic_write(path, yaml.safe_dump(data, sort_keys=True).encode(), mode=0o640)
