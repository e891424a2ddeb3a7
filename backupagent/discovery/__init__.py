"""Discover the database servers running on this host (for heartbeats).

Public interface: :func:`discover_databases` (one run, never raises) and
:class:`DiscoveryCache` (what the daemon calls every heartbeat).
"""

from __future__ import annotations

from backupagent.discovery.cache import DiscoveryCache
from backupagent.discovery.discover import discover_databases
from backupagent.discovery.probe import Login

__all__ = ["DiscoveryCache", "Login", "discover_databases"]
