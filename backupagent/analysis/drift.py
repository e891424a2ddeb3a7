"""Schema drift: what changed between two schema snapshots of one database.

Snapshots have protocol.md's shape: ``{"tables": [{schema, name, columns:
[{name, type, nullable, default}], primaryKey: [...], indexes: [{name,
columns, unique}]}]}``. The diff is structural (by table and column name), so
a column that moved position is not a change, while a type, nullability,
default, key or index change is. Descriptions are for people reading an alert:
a title with counts and one line per change, bounded so a migration that
touches a thousand columns still fits in an anomaly and a Slack message.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

MAX_LINES = 25
MAX_DESCRIPTION_CHARS = 4000
MAX_VALUE_CHARS = 80


def canonical_json(obj: Any) -> str:
    """The one JSON text of ``obj``: sorted keys, no whitespace, UTF-8 kept."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_snapshot(snapshot: Dict[str, Any]) -> Dict[str, Any]:
    """Tables by (schema, name) and indexes by name, so equal schemas hash equal.

    Column and key-column order is kept: it is part of the schema.
    """
    tables = []
    for t in snapshot.get("tables") or []:
        t = dict(t)
        t["indexes"] = sorted(t.get("indexes") or [], key=lambda i: str(i.get("name", "")))
        tables.append(t)
    tables.sort(key=lambda t: (str(t.get("schema") or ""), str(t.get("name", ""))))
    out = dict(snapshot)
    out["tables"] = tables
    return out


def schema_hash(snapshot: Dict[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of the snapshot."""
    data = canonical_json(canonical_snapshot(snapshot)).encode("utf-8")
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class ColumnChange:
    """One column whose definition changed; ``changes`` holds (attribute, old, new)."""

    table: str
    column: str
    changes: Tuple[Tuple[str, Any, Any], ...]

    @property
    def type_changed(self) -> bool:
        return any(attr == "type" for attr, _, _ in self.changes)


@dataclass(frozen=True)
class IndexChange:
    """An index added (``old`` None), removed (``new`` None) or redefined."""

    table: str
    name: str
    old: Optional[Dict[str, Any]]
    new: Optional[Dict[str, Any]]


@dataclass(frozen=True)
class SchemaDiff:
    """Everything that differs, each list in a stable (table, column) order."""

    tables_added: List[str] = field(default_factory=list)
    tables_removed: List[str] = field(default_factory=list)
    columns_added: List[Tuple[str, str, Dict[str, Any]]] = field(default_factory=list)
    columns_removed: List[Tuple[str, str]] = field(default_factory=list)
    columns_changed: List[ColumnChange] = field(default_factory=list)
    primary_keys_changed: List[Tuple[str, List[str], List[str]]] = field(default_factory=list)
    index_changes: List[IndexChange] = field(default_factory=list)
    table_columns: Dict[str, int] = field(default_factory=dict)  # columns of added tables

    @property
    def empty(self) -> bool:
        return not (
            self.tables_added
            or self.tables_removed
            or self.columns_added
            or self.columns_removed
            or self.columns_changed
            or self.primary_keys_changed
            or self.index_changes
        )

    @property
    def severity(self) -> str:
        """``info`` when the change only adds (or changes a default); ``warning`` otherwise.

        A removal, a type or nullability change, a new primary key or a changed
        or dropped index can break the applications and restores that relied
        on the old shape; an added table, column or index cannot.
        """
        if self.empty:
            return "info"
        breaking = (
            self.tables_removed
            or self.columns_removed
            or self.primary_keys_changed
            or any(c.old is not None for c in self.index_changes)
            or any(
                attr in ("type", "nullable")
                for c in self.columns_changed
                for attr, _, _ in c.changes
            )
        )
        return "warning" if breaking else "info"

    def counts(self) -> List[str]:
        parts: List[str] = []
        idx_added = sum(1 for c in self.index_changes if c.old is None)
        idx_removed = sum(1 for c in self.index_changes if c.new is None)
        idx_changed = len(self.index_changes) - idx_added - idx_removed
        for n, noun, verb in (
            (len(self.tables_added), "table", "added"),
            (len(self.tables_removed), "table", "removed"),
            (len(self.columns_added), "column", "added"),
            (len(self.columns_removed), "column", "removed"),
            (len(self.columns_changed), "column", "changed"),
            (len(self.primary_keys_changed), "primary key", "changed"),
            (idx_added, "index", "added"),
            (idx_removed, "index", "removed"),
            (idx_changed, "index", "changed"),
        ):
            if n:
                if n != 1:
                    noun = "indexes" if noun == "index" else noun + "s"
                parts.append(f"{n} {noun} {verb}")
        return parts

    def lines(self) -> List[str]:
        out: List[str] = []
        for t in self.tables_added:
            n = self.table_columns.get(t, 0)
            out.append(f"{t}: table added ({n} column{'s' if n != 1 else ''})")
        out.extend(f"{t}: table removed" for t in self.tables_removed)
        for t, c, col in self.columns_added:
            null = "nullable" if col.get("nullable", True) else "not null"
            out.append(f"{t}.{c}: column added ({_short(col.get('type'))}, {null})")
        out.extend(f"{t}.{c}: column removed" for t, c in self.columns_removed)
        for ch in self.columns_changed:
            parts = []
            for attr, old, new in ch.changes:
                if attr == "nullable":
                    parts.append(f"{_null(old)} -> {_null(new)}")
                else:
                    parts.append(f"{attr} {_short(old)} -> {_short(new)}")
            out.append(f"{ch.table}.{ch.column}: " + "; ".join(parts))
        for t, old, new in self.primary_keys_changed:
            out.append(f"{t}: primary key {_cols(old)} -> {_cols(new)}")
        for ic in self.index_changes:
            if ic.old is None:
                out.append(f"{ic.table}: index {ic.name} added on {_index(ic.new)}")
            elif ic.new is None:
                out.append(f"{ic.table}: index {ic.name} removed (was on {_index(ic.old)})")
            else:
                out.append(f"{ic.table}: index {ic.name} {_index(ic.old)} -> {_index(ic.new)}")
        return out

    def describe(
        self, *, max_lines: int = MAX_LINES, max_chars: int = MAX_DESCRIPTION_CHARS
    ) -> Tuple[str, str]:
        """(title, description) for an alert, the description at most ``max_chars``."""
        if self.empty:
            return "Schema unchanged", "No differences from the previous snapshot."
        title = "Schema changed: " + ", ".join(self.counts())
        lines = self.lines()
        shown: List[str] = []
        used = 0
        for i, line in enumerate(lines):
            rest = len(lines) - i
            tail = f"... and {rest} more change{'s' if rest != 1 else ''}"
            # Keep room for the "... and N more" line unless this is the last line.
            room = max_chars - used - (0 if rest == 1 else len(tail) + 1)
            if len(shown) >= max_lines or len(line) + 1 > room:
                shown.append(tail)
                break
            shown.append(line)
            used += len(line) + 1
        return title, "\n".join(shown)[:max_chars]


def _short(value: Any) -> str:
    text = "none" if value is None else str(value)
    text = " ".join(text.split())
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 3] + "..."


def _null(value: Any) -> str:
    return "nullable" if value else "not null"


def _cols(cols: Sequence[Any]) -> str:
    return "(" + ", ".join(str(c) for c in cols) + ")" if cols else "(none)"


def _index(ix: Optional[Dict[str, Any]]) -> str:
    ix = ix or {}
    text = _cols(ix.get("columns") or [])
    return text + (" unique" if ix.get("unique") else "")


def _table_key(t: Dict[str, Any]) -> Tuple[str, str]:
    return (str(t.get("schema") or ""), str(t.get("name", "")))


def _tables(snapshot: Optional[Dict[str, Any]]) -> Dict[Tuple[str, str], Dict[str, Any]]:
    return {_table_key(t): t for t in (snapshot or {}).get("tables") or [] if isinstance(t, dict)}


_COLUMN_ATTRS = ("type", "nullable", "default")


def diff_schemas(old: Optional[Dict[str, Any]], new: Optional[Dict[str, Any]]) -> SchemaDiff:
    """What changed from ``old`` to ``new`` (either may be None or have no tables)."""
    old_t, new_t = _tables(old), _tables(new)
    schemas = {k[0] for k in old_t} | {k[0] for k in new_t}
    single_schema = len(schemas) <= 1

    def label(key: Tuple[str, str]) -> str:
        # "orders" when every table lives in one schema, "sales.orders" otherwise.
        return key[1] if single_schema or not key[0] else f"{key[0]}.{key[1]}"

    diff = SchemaDiff()
    for key in sorted(new_t.keys() - old_t.keys()):
        diff.tables_added.append(label(key))
        diff.table_columns[label(key)] = len(new_t[key].get("columns") or [])
    diff.tables_removed.extend(label(k) for k in sorted(old_t.keys() - new_t.keys()))

    for key in sorted(old_t.keys() & new_t.keys()):
        name = label(key)
        a, b = old_t[key], new_t[key]
        a_cols = {str(c.get("name")): c for c in a.get("columns") or []}
        b_cols = {str(c.get("name")): c for c in b.get("columns") or []}
        for col in b.get("columns") or []:  # ordinal order: the order people read a table
            cname = str(col.get("name"))
            if cname not in a_cols:
                diff.columns_added.append((name, cname, col))
        for col in a.get("columns") or []:
            cname = str(col.get("name"))
            if cname not in b_cols:
                diff.columns_removed.append((name, cname))
        for col in b.get("columns") or []:
            cname = str(col.get("name"))
            if cname in a_cols:
                changes = tuple(
                    (attr, a_cols[cname].get(attr), col.get(attr))
                    for attr in _COLUMN_ATTRS
                    if a_cols[cname].get(attr) != col.get(attr)
                )
                if changes:
                    diff.columns_changed.append(ColumnChange(name, cname, changes))
        a_pk, b_pk = list(a.get("primaryKey") or []), list(b.get("primaryKey") or [])
        if a_pk != b_pk:
            diff.primary_keys_changed.append((name, a_pk, b_pk))
        a_ix = {str(i.get("name")): i for i in a.get("indexes") or []}
        b_ix = {str(i.get("name")): i for i in b.get("indexes") or []}
        for iname in sorted(a_ix.keys() | b_ix.keys()):
            ia, ib = a_ix.get(iname), b_ix.get(iname)
            if ia is None or ib is None or _index_def(ia) != _index_def(ib):
                diff.index_changes.append(IndexChange(name, iname, ia, ib))
    return diff


def _index_def(ix: Dict[str, Any]) -> Tuple[Tuple[str, ...], bool]:
    return tuple(str(c) for c in ix.get("columns") or []), bool(ix.get("unique"))
