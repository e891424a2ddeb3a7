"""One heartbeat, and what to do when the control plane says no.

A rejected API key (401/403) is not retried every interval: the agent logs
once, clearly, and waits until the key file changes (a re-registration),
instead of hammering the server with a key it knows is bad.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, List, Optional

from backupagent import __version__
from backupagent.api.client import ApiClient
from backupagent.api.errors import ApiError, AuthRejected
from backupagent.api.models import DiscoveredDatabase, HeartbeatRequest
from backupagent.api.retry import RetryPolicy
from backupagent.daemon.state import AgentState

log = logging.getLogger(__name__)
# Within one interval: a couple of quick retries, then wait for the next beat.
HEARTBEAT_RETRY = RetryPolicy(base=1.0, cap=5.0, max_attempts=3)


class Heartbeater:
    def __init__(
        self,
        api: ApiClient,
        state: AgentState,
        key_file: os.PathLike[str],
        discover: Callable[[], List[DiscoveredDatabase]],
        reload_key: Callable[[], Optional[ApiClient]],
    ) -> None:
        self.api = api
        self.state = state
        self.key_file = key_file
        self.discover = discover
        self.reload_key = reload_key
        self.rejected_key_mtime: Optional[float] = None
        self.last_ok = False

    def _key_mtime(self) -> Optional[float]:
        try:
            return os.stat(self.key_file).st_mtime
        except OSError:
            return None

    @property
    def suspended(self) -> bool:
        """True while the key is known bad and the key file has not changed."""
        if self.rejected_key_mtime is None:
            return False
        if self._key_mtime() != self.rejected_key_mtime:
            new_api = self.reload_key()
            if new_api is not None:
                log.info("API key file changed: resuming heartbeats")
                self.api = new_api
                self.rejected_key_mtime = None
                return False
        return True

    def beat(self, config_hash: str) -> Optional[bool]:
        """Send one heartbeat. Returns configChanged, or None when it failed."""
        if self.suspended:
            return None
        try:
            databases = self.discover()
        except Exception as exc:  # discovery must never break a heartbeat
            log.warning("database discovery failed, reporting none: %s", exc)
            databases = []
        req = HeartbeatRequest(
            status="online",
            agentVersion=__version__,
            configHash=config_hash,
            discoveredDatabases=databases,
        )
        try:
            resp = self.api.heartbeat(req, retry=HEARTBEAT_RETRY)
        except AuthRejected as exc:
            self.rejected_key_mtime = self._key_mtime() or 0.0
            log.error(
                "API key rejected by the control plane (%s): re-register this host with "
                "`backupagent register --token TOKEN --force`; heartbeats are paused "
                "until the key changes",
                exc,
            )
            self.state.record_heartbeat(False, error=f"API key rejected: {exc}")
            self.last_ok = False
            return None
        except ApiError as exc:
            log.warning("heartbeat failed: %s", exc)
            self.state.record_heartbeat(False, error=str(exc))
            self.last_ok = False
            return None
        self.state.record_heartbeat(True, config_changed=resp.configChanged)
        self.last_ok = True
        log.debug(
            "heartbeat ok (configChanged=%s, %d databases)", resp.configChanged, len(databases)
        )
        return resp.configChanged
