"""Schema drift: structural diff, severity, human description, canonical hash."""

from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional

from hypothesis import given, settings
from hypothesis import strategies as st

from backupagent.analysis.drift import (
    MAX_DESCRIPTION_CHARS,
    canonical_json,
    diff_schemas,
    schema_hash,
)


def col(name: str, type_: str, nullable: bool = True, default: Optional[str] = None) -> Dict:
    return {"name": name, "type": type_, "nullable": nullable, "default": default}


def table(
    name: str,
    columns: List[Dict[str, Any]],
    pk: Optional[List[str]] = None,
    indexes: Optional[List[Dict[str, Any]]] = None,
    schema: str = "public",
) -> Dict[str, Any]:
    return {
        "schema": schema,
        "name": name,
        "columns": columns,
        "primaryKey": pk or [],
        "indexes": indexes or [],
    }


def base() -> Dict[str, Any]:
    return {
        "tables": [
            table(
                "orders",
                [
                    col("id", "integer", False),
                    col("total", "integer", False, "0"),
                    col("note", "text"),
                ],
                ["id"],
                [{"name": "orders_pkey", "columns": ["id"], "unique": True}],
            ),
            table("users", [col("id", "bigint", False), col("email", "text", False)], ["id"]),
        ]
    }


def test_identical_snapshots_have_no_diff_and_same_hash() -> None:
    a, b = base(), base()
    diff = diff_schemas(a, b)
    assert diff.empty
    assert diff.describe()[0] == "Schema unchanged"
    assert schema_hash(a) == schema_hash(b)


def test_hash_ignores_table_and_index_order_but_not_column_order() -> None:
    a = base()
    b = base()
    b["tables"].reverse()
    assert schema_hash(a) == schema_hash(b)
    c = base()
    c["tables"][0]["columns"].reverse()
    assert schema_hash(a) != schema_hash(c)
    assert len(schema_hash(a)) == 64
    # canonical JSON is key-order independent
    assert canonical_json({"b": 1, "a": 2}) == canonical_json({"a": 2, "b": 1}) == '{"a":2,"b":1}'


def test_additions_are_info_and_named() -> None:
    new = base()
    new["tables"].append(table("invoices", [col("id", "integer", False), col("sum", "numeric")]))
    new["tables"][0]["columns"].append(col("shipped_at", "timestamp"))
    new["tables"][0]["indexes"].append(
        {"name": "orders_note", "columns": ["note"], "unique": False}
    )
    diff = diff_schemas(base(), new)
    assert diff.tables_added == ["invoices"]
    assert [(t, c) for t, c, _ in diff.columns_added] == [("orders", "shipped_at")]
    assert diff.severity == "info"
    title, desc = diff.describe()
    assert title == "Schema changed: 1 table added, 1 column added, 1 index added"
    assert "invoices: table added (2 columns)" in desc
    assert "orders.shipped_at: column added (timestamp, nullable)" in desc
    assert "orders: index orders_note added on (note)" in desc


def test_type_change_is_warning_with_old_and_new() -> None:
    new = base()
    new["tables"][0]["columns"][1]["type"] = "numeric(12,2)"
    new["tables"][1]["columns"][1]["nullable"] = True
    diff = diff_schemas(base(), new)
    assert diff.severity == "warning"
    title, desc = diff.describe()
    assert title == "Schema changed: 2 columns changed"
    assert "orders.total: type integer -> numeric(12,2)" in desc.splitlines()
    assert "users.email: not null -> nullable" in desc.splitlines()


def test_removals_pk_default_and_index_changes() -> None:
    new = base()
    del new["tables"][1]  # users removed
    orders = new["tables"][0]
    orders["columns"] = [c for c in orders["columns"] if c["name"] != "note"]
    orders["columns"][1]["default"] = "42"
    orders["primaryKey"] = ["id", "total"]
    orders["indexes"] = [{"name": "orders_pkey", "columns": ["id", "total"], "unique": True}]
    diff = diff_schemas(base(), new)
    assert diff.tables_removed == ["users"]
    assert diff.columns_removed == [("orders", "note")]
    assert diff.severity == "warning"
    title, desc = diff.describe()
    assert title == (
        "Schema changed: 1 table removed, 1 column removed, 1 column changed, "
        "1 primary key changed, 1 index changed"
    )
    lines = desc.splitlines()
    assert "users: table removed" in lines
    assert "orders.note: column removed" in lines
    assert "orders.total: default 0 -> 42" in lines
    assert "orders: primary key (id) -> (id, total)" in lines
    assert "orders: index orders_pkey (id) unique -> (id, total) unique" in lines


def test_default_change_alone_is_info() -> None:
    new = base()
    new["tables"][0]["columns"][1]["default"] = "1"
    assert diff_schemas(base(), new).severity == "info"


def test_dropped_index_is_warning() -> None:
    new = base()
    new["tables"][0]["indexes"] = []
    diff = diff_schemas(base(), new)
    assert diff.severity == "warning"
    assert "orders: index orders_pkey removed (was on (id) unique)" in diff.describe()[1]


def test_column_reorder_is_not_drift() -> None:
    new = base()
    new["tables"][0]["columns"].reverse()
    assert diff_schemas(base(), new).empty


def test_schema_is_named_only_when_tables_span_schemas() -> None:
    old = {"tables": [table("orders", [col("id", "int")], schema="sales")]}
    new = copy.deepcopy(old)
    new["tables"].append(table("orders", [col("id", "int")], schema="archive"))
    diff = diff_schemas(old, new)
    assert diff.tables_added == ["archive.orders"]


def test_none_and_empty_snapshots() -> None:
    assert diff_schemas(None, None).empty
    assert diff_schemas({"tables": []}, {"tables": []}).empty
    diff = diff_schemas({"tables": []}, base())
    assert diff.tables_added == ["orders", "users"]


def test_description_is_bounded() -> None:
    cols = [col(f"c{i}", "integer") for i in range(2000)]
    old = {"tables": [table("wide", cols)]}
    new = {"tables": [table("wide", [dict(c, type="bigint") for c in cols])]}
    title, desc = diff_schemas(old, new).describe()
    assert title == "Schema changed: 2000 columns changed"
    assert len(desc) <= MAX_DESCRIPTION_CHARS
    assert desc.splitlines()[-1] == "... and 1975 more changes"
    long_default = "x" * 5000
    new2 = {"tables": [table("wide", [col("c0", "integer", default=long_default)])]}
    _, desc2 = diff_schemas({"tables": [table("wide", [col("c0", "integer")])]}, new2).describe(
        max_chars=300
    )
    assert len(desc2) <= 300
    assert "..." in desc2


# -- properties ------------------------------------------------------------------------


_names = st.text(alphabet="abcxyz_", min_size=1, max_size=4)
_columns = st.lists(
    st.fixed_dictionaries(
        {
            "name": _names,
            "type": st.sampled_from(["integer", "text", "numeric(12,2)", "x" * 200]),
            "nullable": st.booleans(),
            "default": st.one_of(st.none(), st.text(max_size=300)),
        }
    ),
    max_size=6,
    unique_by=lambda c: c["name"],
)
_tables = st.lists(
    st.builds(
        lambda s, n, cols, pk, ix: table(n, cols, pk, ix, schema=s),
        st.sampled_from(["public", "sales"]),
        _names,
        _columns,
        st.lists(_names, max_size=2),
        st.lists(
            st.fixed_dictionaries(
                {"name": _names, "columns": st.lists(_names, max_size=3), "unique": st.booleans()}
            ),
            max_size=3,
            unique_by=lambda i: i["name"],
        ),
    ),
    max_size=8,
    unique_by=lambda t: (t["schema"], t["name"]),
)


@settings(max_examples=200, deadline=None)
@given(_tables, _tables)
def test_diff_properties(a: List[Dict[str, Any]], b: List[Dict[str, Any]]) -> None:
    old, new = {"tables": a}, {"tables": b}
    assert diff_schemas(old, old).empty
    diff = diff_schemas(old, new)
    if schema_hash(old) == schema_hash(new):
        assert diff.empty
    title, desc = diff.describe(max_lines=10, max_chars=1000)
    assert len(desc) <= 1000
    assert len(desc.splitlines()) <= 11
    assert diff.severity in ("info", "warning")
    back = diff_schemas(new, old)
    # what was added one way was removed the other
    assert sorted(back.tables_removed) == sorted(diff.tables_added)
    assert len(back.columns_removed) == len(diff.columns_added)
    if not diff.empty:
        assert title.startswith("Schema changed: ")
