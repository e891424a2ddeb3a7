"""Engines by ``dbType``: the one place that knows which module serves which name.

Modules are imported on first use, so the daemon does not pay for engines a
host never backs up.
"""

from __future__ import annotations

import importlib
from typing import Dict, Optional, Tuple

from backupagent.engines.base import UNSUPPORTED, Engine, EngineError

# dbType -> (module, class, constructor argument or None)
_ENGINES: Dict[str, Tuple[str, str, object]] = {
    "postgresql": ("backupagent.engines.postgresql", "PostgresEngine", None),
    "mysql": ("backupagent.engines.mysql", "MySQLEngine", "mysql"),
    "mariadb": ("backupagent.engines.mysql", "MySQLEngine", "mariadb"),
    "redis": ("backupagent.engines.redis", "RedisEngine", None),
    "sqlite": ("backupagent.engines.sqlite", "SQLiteEngine", None),
}
_ALIASES = {"postgres": "postgresql", "pg": "postgresql", "sqlite3": "sqlite"}


def supported_db_types() -> Tuple[str, ...]:
    return tuple(sorted(_ENGINES))


def _entry(db_type: str) -> Optional[Tuple[str, str, object]]:
    key = (db_type or "").strip().lower()
    return _ENGINES.get(_ALIASES.get(key, key))


def module_for(db_type: str) -> Optional[str]:
    """The module implementing ``db_type``, or None if it is not supported."""
    entry = _entry(db_type)
    return entry[0] if entry else None


def get_engine(db_type: str) -> Engine:
    """The engine for ``db_type`` (case-insensitive; ``postgres`` is ``postgresql``)."""
    entry = _entry(db_type)
    if entry is None:
        raise EngineError(
            f"dbType {db_type!r} is not supported; use one of {', '.join(supported_db_types())}",
            code=UNSUPPORTED,
        )
    module_name, class_name, arg = entry
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(arg) if arg is not None else cls()
