"""Turning what the restored database shows into the report's checks.

Pure functions (no Docker, no I/O) so every rule is unit-tested:

- ``row_count``: one check per table recorded at dump time. PostgreSQL's
  counts come from the dump's own snapshot, so they must match exactly;
  other engines count just before the dump, so a ``tolerancePct`` (default
  5 %) absorbs writes in between. ``deltaPct`` is always reported.
- ``schema_match``: the restored schema against the dump-time snapshot
  (structural diff naming what differs) or, without one, against the
  manifest's ``schemaHash``.
- ``custom_query``: the schedule's read-only query, compared with its
  ``expectedValue`` (numerically, with ``tolerancePct``, when both are numbers).
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence

from backupagent.api.models import VerificationCheck

DEFAULT_TOLERANCE_PCT = 5.0
PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"
MAX_VALUE_CHARS = 500


def delta_pct(expected: float, actual: float) -> float:
    """Signed change from ``expected`` to ``actual`` in percent (0 -> n is +100)."""
    if expected == actual:
        return 0.0
    if expected == 0:
        return 100.0 if actual > 0 else -100.0
    return round((actual - expected) / abs(expected) * 100.0, 4)


def _spec_attr(spec: Any, name: str) -> Any:
    return getattr(spec, name, None)


def _matches(table: str, name: str) -> bool:
    """``users``, ``users table`` and ``public.users`` all name ``public.users``."""
    name = name.strip()
    if name.lower().endswith(" table"):
        name = name[: -len(" table")].strip()
    return table == name or table.rsplit(".", 1)[-1] == name


def row_count_checks(
    expected: Mapping[str, int],
    actual: Mapping[str, int],
    *,
    exact: bool,
    specs: Sequence[Any] = (),
) -> List[VerificationCheck]:
    """One check per table in ``expected`` (and per schedule-named table).

    ``specs`` are the schedule's ``row_count`` entries: one with a
    ``check_name`` sets the tolerance of the table(s) it names; one without
    sets it for every table. An explicit ``tolerance_pct`` wins even for
    exact counts (a user may knowingly accept drift).
    """
    general: Optional[float] = None
    named: List[Any] = []
    for spec in specs:
        if _spec_attr(spec, "check_name"):
            named.append(spec)
        elif _spec_attr(spec, "tolerance_pct") is not None:
            general = float(spec.tolerance_pct)
    default_tol = 0.0 if exact else DEFAULT_TOLERANCE_PCT
    checks: List[VerificationCheck] = []
    for table in sorted(expected):
        tol = general if general is not None else default_tol
        for spec in named:
            if _matches(table, spec.check_name) and spec.tolerance_pct is not None:
                tol = float(spec.tolerance_pct)
        want = int(expected[table])
        if table not in actual:
            checks.append(
                VerificationCheck(
                    checkType="row_count",
                    checkName=table,
                    status=FAILED,
                    expectedValue=str(want),
                    actualValue="table missing",
                    deltaPct=-100.0,
                )
            )
            continue
        got = int(actual[table])
        delta = delta_pct(want, got)
        ok = got == want if tol == 0 else abs(delta) <= tol + 1e-9
        checks.append(
            VerificationCheck(
                checkType="row_count",
                checkName=table,
                status=PASSED if ok else FAILED,
                expectedValue=str(want),
                actualValue=str(got),
                deltaPct=delta,
            )
        )
    for spec in named:
        if not any(_matches(t, spec.check_name) for t in expected):
            checks.append(
                VerificationCheck(
                    checkType="row_count",
                    checkName=str(spec.check_name),
                    status=FAILED,
                    expectedValue="table in the backup",
                    actualValue="not in the backup's row counts",
                )
            )
    return checks


def _shape(snapshot: Optional[Mapping[str, Any]]) -> str:
    tables = list((snapshot or {}).get("tables") or [])
    cols = sum(len(t.get("columns") or []) for t in tables)
    return f"{len(tables)} tables, {cols} columns"


def snapshot_hash_like(reference: str, snapshot: Mapping[str, Any]) -> str:
    """Hash ``snapshot`` the way ``reference`` was made (manifest or history form)."""
    if reference.startswith("sha256:"):
        from backupagent.pipeline.manifest import schema_hash

        return str(schema_hash(snapshot))
    from backupagent.analysis.drift import schema_hash as drift_hash

    return drift_hash(dict(snapshot))


def schema_check(
    actual: Optional[Mapping[str, Any]],
    *,
    expected_snapshot: Optional[Mapping[str, Any]] = None,
    expected_hash: Optional[str] = None,
    name: str = "schema",
) -> tuple[VerificationCheck, List[str]]:
    """The ``schema_match`` check and the human lines describing any difference."""
    if actual is None:
        return (
            VerificationCheck(
                checkType="schema_match",
                checkName=name,
                status=SKIPPED,
                expectedValue=None,
                actualValue="engine has no schema",
            ),
            [],
        )
    if expected_snapshot is not None:
        from backupagent.analysis.drift import diff_schemas

        diff = diff_schemas(dict(expected_snapshot), dict(actual))
        lines = [] if diff.empty else diff.lines()
        got = _shape(actual)
        if not diff.empty:
            got += "; differs: " + ", ".join(diff.counts())
        return (
            VerificationCheck(
                checkType="schema_match",
                checkName=name,
                status=PASSED if diff.empty else FAILED,
                expectedValue=_shape(expected_snapshot),
                actualValue=_cut(got),
                deltaPct=0.0 if diff.empty else None,
            ),
            lines,
        )
    if expected_hash:
        got_hash = snapshot_hash_like(expected_hash, actual)
        ok = got_hash == expected_hash
        return (
            VerificationCheck(
                checkType="schema_match",
                checkName=name,
                status=PASSED if ok else FAILED,
                expectedValue=expected_hash,
                actualValue=got_hash,
                deltaPct=0.0 if ok else None,
            ),
            [] if ok else [f"schema hash differs ({_shape(actual)} restored)"],
        )
    return (
        VerificationCheck(
            checkType="schema_match",
            checkName=name,
            status=SKIPPED,
            expectedValue=None,
            actualValue=f"{_shape(actual)}; no dump-time snapshot or schemaHash to compare",
        ),
        [],
    )


def _number(text: Optional[str]) -> Optional[float]:
    if text is None:
        return None
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _cut(text: str) -> str:
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 3] + "..."


def custom_query_check(
    spec: Any,
    *,
    actual: Optional[str] = None,
    error: Optional[str] = None,
    index: int = 1,
) -> VerificationCheck:
    """Compare one custom query's output with the schedule's ``expectedValue``."""
    name = _spec_attr(spec, "check_name") or f"custom query {index}"
    expected = _spec_attr(spec, "expected_value")
    expected_text = None if expected is None else str(expected).strip()
    if error is not None:
        return VerificationCheck(
            checkType="custom_query",
            checkName=name,
            status=FAILED,
            expectedValue=expected_text,
            actualValue=_cut(f"error: {error}"),
        )
    got = (actual or "").strip()
    if expected_text is None:
        return VerificationCheck(
            checkType="custom_query",
            checkName=name,
            status=SKIPPED,
            expectedValue=None,
            actualValue=_cut(got),
        )
    want_n, got_n = _number(expected_text), _number(got)
    if want_n is not None and got_n is not None:
        delta = delta_pct(want_n, got_n)
        tol = _spec_attr(spec, "tolerance_pct")
        ok = want_n == got_n if not tol else abs(delta) <= float(tol) + 1e-9
    else:
        ok = got == expected_text
        delta = 0.0 if ok else None
    return VerificationCheck(
        checkType="custom_query",
        checkName=name,
        status=PASSED if ok else FAILED,
        expectedValue=expected_text,
        actualValue=_cut(got),
        deltaPct=delta,
    )


def overall_status(checks: Sequence[VerificationCheck]) -> str:
    """``failed`` if any check failed, else ``passed`` (skipped checks do not fail)."""
    return FAILED if any(c.status == FAILED for c in checks) else PASSED


def summary(checks: Sequence[VerificationCheck]) -> Dict[str, int]:
    out = {PASSED: 0, FAILED: 0, SKIPPED: 0}
    for c in checks:
        out[c.status] = out.get(c.status, 0) + 1
    return out
