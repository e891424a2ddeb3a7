"""Database engines: dump, restore, counts and schema, one module per engine.

Callers use :func:`get_engine` and the :class:`Engine` interface only.
"""

from __future__ import annotations

from backupagent.engines.base import (
    ConnectionSpec,
    DumpPlan,
    Engine,
    EngineError,
    parse_database_url,
)
from backupagent.engines.registry import get_engine, supported_db_types

__all__ = [
    "ConnectionSpec",
    "DumpPlan",
    "Engine",
    "EngineError",
    "get_engine",
    "parse_database_url",
    "supported_db_types",
]
