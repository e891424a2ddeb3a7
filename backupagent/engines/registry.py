"""Engines by ``dbType``: the one place that knows which module serves which name.

Modules are imported on first use, so the daemon does not pay for engines a
host never backs up.
"""

from __future__ import annotations

import importlib
from typing import Dict, Tuple

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


def get_engine(db_type: str) -> Engine:
    """The engine for ``db_type`` (case-insensitive; ``postgres`` is ``postgresql``)."""
    key = (db_type or "").strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _ENGINES:
        raise EngineError(
            f"dbType {db_type!r} is not supported; use one of {', '.join(supported_db_types())}",
            code=UNSUPPORTED,
        )
    module_name, class_name, arg = _ENGINES[key]
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(arg) if arg is not None else cls()
