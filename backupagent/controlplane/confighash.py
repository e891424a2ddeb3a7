"""The per-agent config document and its hash (protocol.md, "configHash").

The agent hashes the config it applied and the server hashes the config it
stores; ``configChanged`` is their inequality, so both sides must produce the
same bytes for the same document. That is why the canonical form is spelled out
once here and pinned by tests.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Dict, List

CONFIG_KEYS = ("schedules", "targets", "alertChannels")


def empty_config() -> Dict[str, List[Any]]:
    """The config an agent has before an admin sets one: nothing to do, but still a hash."""
    return {"schedules": [], "targets": [], "alertChannels": []}


def canonical_json(obj: Any) -> bytes:
    """Keys sorted, no insignificant whitespace, UTF-8 (not ASCII-escaped)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


def config_hash(doc: Any) -> str:
    """Lowercase hex SHA-256 of the canonical JSON of ``doc``."""
    return hashlib.sha256(canonical_json(doc)).hexdigest()


def config_problems(doc: Any, *, check_items: bool = True) -> list[str]:
    """Every reason ``doc`` is not a storable config document (empty when it is).

    The server checks only the outer shape and, with ``check_items``, that each
    entry is an object with a unique string ``id``; the agent validates the
    contents (cron, targets, ...), so a test may still push a config the agent
    must reject by passing ``check_items=False``.
    """
    if not isinstance(doc, dict):
        return [f"document: expected an object with {', '.join(CONFIG_KEYS)}, got {_kind(doc)}"]
    problems = []
    for key in CONFIG_KEYS:
        if key not in doc:
            problems.append(f"{key}: required list is missing")
        elif not isinstance(doc[key], list):
            problems.append(f"{key}: expected a list, got {_kind(doc[key])}")
    problems.extend(
        f"{key}: unknown top-level key (allowed: {', '.join(CONFIG_KEYS)})"
        for key in sorted(set(doc) - set(CONFIG_KEYS))
    )
    if problems or not check_items:
        return problems
    for key in CONFIG_KEYS:
        seen: set[str] = set()
        for i, item in enumerate(doc[key]):
            where = f"{key}[{i}]"
            if not isinstance(item, dict):
                problems.append(f"{where}: expected an object, got {_kind(item)}")
                continue
            ident = item.get("id")
            if not isinstance(ident, str) or not ident:
                problems.append(f"{where}.id: required non-empty string")
            elif ident in seen:
                problems.append(f"{where}.id: duplicate id {ident!r}")
            else:
                seen.add(ident)
    return problems


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__
    )
