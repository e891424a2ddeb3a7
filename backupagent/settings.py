"""The host's own settings: where the agent is registered and how it runs.

These are not the backup config (that comes from the control plane or a
standalone YAML file); they are what ``register`` writes and what an operator
may tune on one host. ``<config-dir>/agent.yaml`` holds the non-secret part;
the API key lives alone in ``<config-dir>/api-key`` with mode 0600 so that
agent.yaml can be shown, diffed and backed up without leaking it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from backupagent.errors import SettingsError
from backupagent.fsutil import atomic_write, loose_permissions

log = logging.getLogger(__name__)

DEFAULT_CONFIG_DIR = "/etc/backupagent"
DEFAULT_STATE_DIR = "/var/lib/backupagent"
DEFAULT_SERVER_URL = "https://backupagent.ai"
SETTINGS_FILE = "agent.yaml"
API_KEY_FILE = "api-key"
DEFAULT_HEARTBEAT_INTERVAL = 60.0
DEFAULT_MAX_CONCURRENT_JOBS = 1
DEFAULT_SHUTDOWN_GRACE = 300.0
DEFAULT_JOB_TIMEOUT = 6 * 3600.0  # a backup still running after 6 h is stuck, not slow


@dataclass
class Settings:
    """Everything host-specific the daemon and the commands need."""

    config_dir: Path
    state_dir: Path
    server_url: Optional[str] = None
    agent_id: Optional[str] = None
    hostname: Optional[str] = None
    ca_bundle: Optional[str] = None
    insecure_http: bool = False
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    max_concurrent_jobs: int = DEFAULT_MAX_CONCURRENT_JOBS
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE
    job_timeout: float = DEFAULT_JOB_TIMEOUT
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def settings_file(self) -> Path:
        return self.config_dir / SETTINGS_FILE

    @property
    def api_key_file(self) -> Path:
        return self.config_dir / API_KEY_FILE

    @property
    def credentials_file(self) -> Path:
        return self.config_dir / "credentials.yaml"

    @property
    def registered(self) -> bool:
        return bool(self.agent_id and self.server_url and self.api_key_file.exists())

    def read_api_key(self) -> str:
        """The API key; refuses a key file that others could read."""
        path = self.api_key_file
        try:
            if loose_permissions(path):
                raise SettingsError(
                    f"{path} is readable by other users; fix it with: chmod 600 {path}"
                )
            key = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise SettingsError(
                f"no API key at {path}: register this host with "
                "`backupagent register --token TOKEN`"
            ) from None
        except PermissionError:
            raise SettingsError(f"cannot read {path}: permission denied") from None
        if not key:
            raise SettingsError(f"{path} is empty: re-register with `backupagent register --force`")
        return key


def _as_float(raw: Dict[str, Any], key: str, default: float, path: Path) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise SettingsError(f"{path}: {key}: {value!r} is not a positive number of seconds")
    return float(value)


def load_settings(config_dir: os.PathLike | str, state_dir: os.PathLike | str) -> Settings:
    """Read agent.yaml when present; a missing file means "not registered"."""
    cdir, sdir = Path(config_dir), Path(state_dir)
    path = cdir / SETTINGS_FILE
    raw: Dict[str, Any] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    except PermissionError:
        raise SettingsError(f"cannot read {path}: permission denied") from None
    if text.strip():
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SettingsError(f"{path} is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise SettingsError(
                f"{path} must be a mapping of settings, got {type(loaded).__name__}"
            )
        raw = loaded
    max_jobs = raw.get("maxConcurrentJobs", DEFAULT_MAX_CONCURRENT_JOBS)
    if isinstance(max_jobs, bool) or not isinstance(max_jobs, int) or not 1 <= max_jobs <= 16:
        raise SettingsError(f"{path}: maxConcurrentJobs: {max_jobs!r} must be an integer 1-16")
    known = {
        "serverUrl",
        "agentId",
        "hostname",
        "caBundle",
        "insecureHttp",
        "heartbeatInterval",
        "maxConcurrentJobs",
        "shutdownGrace",
    }
    return Settings(
        config_dir=cdir,
        state_dir=sdir,
        server_url=raw.get("serverUrl"),
        agent_id=raw.get("agentId"),
        hostname=raw.get("hostname"),
        ca_bundle=raw.get("caBundle"),
        insecure_http=bool(raw.get("insecureHttp", False)),
        heartbeat_interval=_as_float(raw, "heartbeatInterval", DEFAULT_HEARTBEAT_INTERVAL, path),
        max_concurrent_jobs=max_jobs,
        shutdown_grace=_as_float(raw, "shutdownGrace", DEFAULT_SHUTDOWN_GRACE, path),
        job_timeout=_as_float(raw, "jobTimeout", DEFAULT_JOB_TIMEOUT, path),
        extra={k: v for k, v in raw.items() if k not in known},
    )


def save_registration(
    settings: Settings, *, server_url: str, agent_id: str, api_key: str, hostname: str
) -> None:
    """Persist a registration: key file first, so agent.yaml never names a key
    that is not on disk."""
    settings.config_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
    new_files = [p for p in (settings.api_key_file, settings.settings_file) if not p.exists()]
    atomic_write(settings.api_key_file, (api_key + "\n").encode("utf-8"), mode=0o600)
    path = settings.settings_file
    existing: Dict[str, Any] = {}
    if path.exists():
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if isinstance(loaded, dict):
            existing = loaded
    existing.update({"serverUrl": server_url, "agentId": agent_id, "hostname": hostname})
    body = "# Written by `backupagent register`. The API key is in api-key (mode 0600).\n"
    body += yaml.safe_dump(existing, sort_keys=True)
    atomic_write(path, body.encode("utf-8"), mode=0o640)
    _give_to_service_account(settings, new_files)
    settings.server_url, settings.agent_id, settings.hostname = server_url, agent_id, hostname


def _give_to_service_account(settings: Settings, new_files: List[Path]) -> None:
    """Hand files root just created to the account the daemon runs as.

    Why: ``sudo backupagent register`` run by hand, before the service first
    starts, would otherwise leave a root-owned 0600 ``api-key`` that the
    daemon (``User=backupagent``) cannot read. The installer makes the config
    directory ``root:<service group>``; when that group names a user, the key
    becomes that user's (0600) and agent.yaml ``root:<group>`` (0640), as
    install.sh arranges them. Files that already existed keep their owner
    (``atomic_write``); anything else, or no root, leaves ownership alone.
    """
    if not new_files or not hasattr(os, "geteuid") or os.geteuid() != 0:
        return
    import grp
    import pwd

    gid = settings.config_dir.stat().st_gid
    if gid == 0:
        return
    try:
        user = pwd.getpwnam(grp.getgrgid(gid).gr_name)
    except KeyError:
        return
    for path in new_files:
        uid = user.pw_uid if path == settings.api_key_file else 0
        os.chown(path, uid, gid)
        log.info("gave %s to %s:%s", path, "root" if uid == 0 else user.pw_name, user.pw_name)
