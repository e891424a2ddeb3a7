"""``backupagent run``: the daemon (or one pass of it with --once)."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any, Optional

import click

from backupagent.cli.context import AppContext, fail, pass_app
from backupagent.errors import AgentError
from backupagent.exitcodes import ExitCode
from backupagent.settings import Settings

log = logging.getLogger("backupagent.run")


def make_api_client(settings: Settings, stop_event: Any = None) -> Any:
    from backupagent.api.client import ApiClient

    assert settings.server_url is not None
    return ApiClient(
        settings.server_url,
        settings.read_api_key(),
        ca_bundle=settings.ca_bundle,
        insecure_http=settings.insecure_http,
        stop_event=stop_event,
    )


@click.command(
    help="""Run the agent: heartbeat to the control plane, pull the config,
and run the scheduled backups. Stops gracefully on SIGTERM/SIGINT (running backups
finish within the grace period); a second signal cancels them.

With --config-file the agent runs standalone: schedules and targets come from a local
YAML file of the same shape as the control plane's config, no registration needed."""
)
@click.option(
    "--heartbeat-interval",
    type=click.FloatRange(min=0.05),
    metavar="SECONDS",
    help="Seconds between heartbeats. [default: 60, or heartbeatInterval in agent.yaml]",
)
@click.option(
    "--once",
    is_flag=True,
    help="One heartbeat and config sync, run every schedule that is due, then exit.",
)
@click.option(
    "--config-file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Standalone mode: take schedules/targets from this YAML file.",
)
@pass_app
def run(
    app: AppContext, heartbeat_interval: Optional[float], once: bool, config_file: Optional[Path]
) -> None:
    import threading

    from backupagent.daemon.agent import Daemon
    from backupagent.jobs.runner import build_runner

    settings = app.settings()
    stop = threading.Event()
    api = None
    discover = None
    reload_api = None
    if config_file is None:
        if not settings.registered:
            fail(
                ExitCode.NOT_REGISTERED,
                "this host is not registered: run `backupagent register --token TOKEN`, "
                "or run standalone with `backupagent run --config-file FILE.yaml`",
            )
        try:
            api = make_api_client(settings, stop)
        except AgentError as exc:
            fail(ExitCode.CONFIG, str(exc))
        from backupagent.discovery import DiscoveryCache

        discover = DiscoveryCache().get

        def reload_api() -> Any:
            try:
                return make_api_client(app.settings(), stop)
            except AgentError as exc:
                log.error("cannot load the new API key: %s", exc)
                return None

    try:
        runner = build_runner(
            settings, api=api, standalone=config_file is not None, reload_api=reload_api
        )
        daemon = Daemon(
            settings,
            runner,
            api=api,
            config_file=config_file,
            discover=discover,
            heartbeat_interval=heartbeat_interval,
            reload_api=reload_api,
        )
    except AgentError as exc:
        fail(ExitCode.CONFIG, str(exc))

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()
        daemon.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    code = daemon.run_once() if once else daemon.run_forever()
    raise SystemExit(code)
