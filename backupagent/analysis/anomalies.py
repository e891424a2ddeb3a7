"""Anomalies a successful backup can reveal: odd sizes, emptied tables, schema drift.

A backup that "succeeded" can still be a bad backup: a dump of a database
someone truncated, or of the wrong (empty) database, completes happily. These
checks compare each backup with the database's own recent history (kept
locally, see :mod:`backupagent.analysis.history`) and turn surprises into the
protocol's anomaly reports, with titles and descriptions for people.

The reference knows three anomaly types only (``size_anomaly``,
``schema_drift``, ``restore_failure``); a table whose row count collapsed is
reported as a ``size_anomaly`` whose title names the table (docs/anomalies.md).
"""

from __future__ import annotations

import datetime as dt
import logging
import statistics
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from backupagent.analysis.drift import diff_schemas, schema_hash
from backupagent.analysis.history import BackupSample, History
from backupagent.analysis.humanize import human_bytes, human_count, percent
from backupagent.api.models import AnomalyReport
from backupagent.logs import redact

log = logging.getLogger(__name__)

MAX_DESCRIPTION_CHARS = 4000


@dataclass(frozen=True)
class AnomalyThresholds:
    """How surprising a backup must be before people are told.

    ``min_relative_sigma`` floors sigma at that fraction of the mean: a database
    whose dumps were byte-identical (sigma = 0) would otherwise raise an anomaly
    for one extra row. ``row_drop_min_rows`` / ``row_zero_min_rows`` keep
    tiny tables (a queue that drains, a 3-row lookup table) from crying wolf.
    """

    window_days: int = 30
    min_samples: int = 5
    max_samples: int = 200
    sigmas: float = 2.0
    critical_fraction: float = 0.5
    min_relative_sigma: float = 0.01
    row_drop_fraction: float = 0.5
    row_drop_min_rows: int = 100
    row_zero_min_rows: int = 10
    max_table_anomalies: int = 5

    def __post_init__(self) -> None:
        if self.window_days < 1 or self.min_samples < 2:
            raise ValueError("window_days must be >= 1 and min_samples >= 2")
        if self.max_samples < self.min_samples:
            raise ValueError("max_samples must be >= min_samples")
        if not 0 < self.row_drop_fraction < 1 or not 0 < self.critical_fraction < 1:
            raise ValueError("row_drop_fraction and critical_fraction must be between 0 and 1")


DEFAULT_THRESHOLDS = AnomalyThresholds()


def _utc(when: Optional[dt.datetime]) -> dt.datetime:
    when = when or dt.datetime.now(dt.timezone.utc)
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


def _with_label(description: str, database_label: Optional[str]) -> str:
    # The reference's anomaly has no databaseId: name the database in the text.
    if database_label:
        description = f"{description}\nDatabase: {database_label}"
    return description[:MAX_DESCRIPTION_CHARS]


# -- size ---------------------------------------------------------------------


@dataclass(frozen=True)
class _SizeFinding:
    metric: str  # "dump" or "compressed"
    value: int
    mean: float
    sigma: float
    low: float
    high: float
    count: int


def _size_finding(
    metric: str, value: Optional[int], history: Sequence[Optional[int]], t: AnomalyThresholds
) -> Optional[_SizeFinding]:
    samples = [float(v) for v in history if v is not None]
    if value is None or len(samples) < t.min_samples:
        return None
    mean = statistics.fmean(samples)
    if mean <= 0:
        return None
    # Sample standard deviation (n - 1): with few samples it is the honest,
    # wider estimate, so steady growth does not look like an anomaly.
    sigma = max(statistics.stdev(samples), t.min_relative_sigma * mean)
    low, high = mean - t.sigmas * sigma, mean + t.sigmas * sigma
    if low <= value <= high:
        return None
    return _SizeFinding(metric, int(value), mean, sigma, low, high, len(samples))


def _size_title(f: _SizeFinding) -> str:
    what = "Backup size" if f.metric == "dump" else "Compressed backup size"
    change = (f.value - f.mean) / f.mean
    if change < 0:
        return f"{what} {percent(change)} smaller than average"
    if change <= 1.0:
        return f"{what} {percent(change)} larger than average"
    return f"{what} {f.value / f.mean:.1f} times the average"


def size_anomaly(
    dump_size: Optional[int],
    compressed_size: Optional[int],
    samples: Sequence[BackupSample],
    thresholds: AnomalyThresholds = DEFAULT_THRESHOLDS,
    *,
    database_label: Optional[str] = None,
) -> Optional[AnomalyReport]:
    """One report when the dump or compressed size leaves mean +/- k sigma of ``samples``.

    ``samples`` are the window's earlier successful backups (not this one).
    One report, not two: the two sizes usually move together. The dump size
    (what the database holds) leads when it is unusual; the compressed size
    leads only when it alone moved (data that suddenly compresses worse).
    """
    t = thresholds
    findings = [
        f
        for f in (
            _size_finding("dump", dump_size, [s.dump_size for s in samples], t),
            _size_finding("compressed", compressed_size, [s.compressed_size for s in samples], t),
        )
        if f is not None
    ]
    if not findings:
        return None
    findings.sort(key=lambda f: f.metric != "dump")
    lead = findings[0]
    critical = any(f.value < t.critical_fraction * f.mean for f in findings)
    lines = [f"Expected ~{human_bytes(lead.mean)}, got {human_bytes(lead.value)}."]
    detail = (
        f"{'Dump' if lead.metric == 'dump' else 'Compressed'} size compared with the average of "
        f"{lead.count} {'latest ' if lead.count >= t.max_samples else ''}successful backups "
        f"in the last {t.window_days} days; normal range "
        f"{human_bytes(max(lead.low, 0))} to {human_bytes(lead.high)}."
    )
    lines.append(detail)
    for other in findings[1:]:
        name = "Dump" if other.metric == "dump" else "Compressed"
        lines.append(
            f"{name} size also unusual: expected ~{human_bytes(other.mean)}, "
            f"got {human_bytes(other.value)}."
        )
    if critical:
        lines.append(
            f"Below {percent(t.critical_fraction)} of the average: check that the right "
            "database was backed up and that no data was lost."
        )
    return AnomalyReport(
        type="size_anomaly",
        severity="critical" if critical else "warning",
        title=_size_title(lead),
        description=_with_label("\n".join(lines), database_label),
    )


# -- per-table row counts -------------------------------------------------------


def _table_drops(
    previous: Dict[str, int],
    current: Dict[str, int],
    t: AnomalyThresholds,
    missing_is_zero: bool,
) -> List[Tuple[str, int, int]]:
    drops: List[Tuple[str, int, int]] = []
    for table, before in previous.items():
        if table in current:
            after = current[table]
        elif missing_is_zero:
            after = 0
        else:
            continue  # the table itself is gone: schema drift says so
        emptied = after == 0 and before >= t.row_zero_min_rows
        fell = before >= t.row_drop_min_rows and after < before * (1 - t.row_drop_fraction)
        if emptied or fell:
            drops.append((table, before, after))
    # Emptied tables first, then by rows lost: the worst leads.
    drops.sort(key=lambda d: (d[2] != 0, -(d[1] - d[2]), d[0]))
    return drops


def _drop_line(table: str, before: int, after: int) -> str:
    return f"{table}: {human_count(before)} -> {human_count(after)} rows"


def row_count_anomalies(
    row_counts: Optional[Dict[str, int]],
    previous: Optional[BackupSample],
    thresholds: AnomalyThresholds = DEFAULT_THRESHOLDS,
    *,
    missing_is_zero: bool = False,
    size_normal: bool = True,
    database_label: Optional[str] = None,
) -> List[AnomalyReport]:
    """Tables whose row count collapsed since the previous successful backup.

    Reported even (especially) when the total size looks normal: one emptied
    table hides easily inside a dump dominated by others. ``missing_is_zero``
    is for engines whose counts omit empty containers (Redis drops an empty
    db from ``INFO keyspace``); for SQL engines a vanished table is drift.
    """
    if not row_counts or previous is None or not previous.row_counts:
        return []
    t = thresholds
    drops = _table_drops(previous.row_counts, row_counts, t, missing_is_zero)
    if not drops:
        return []
    since = previous.timestamp.strftime("%Y-%m-%d %H:%M UTC")
    context = (
        " The total backup size looked normal, so the loss would otherwise go unnoticed."
        if size_normal
        else ""
    )
    if len(drops) <= t.max_table_anomalies:
        out = []
        for table, before, after in drops:
            if after == 0:
                body = f"Row count fell to zero since the previous successful backup ({since})."
            else:
                fall = (after - before) / before
                body = (
                    f"Row count fell {percent(fall)} since the previous successful backup "
                    f"({since})."
                )
            out.append(
                AnomalyReport(
                    type="size_anomaly",
                    severity="critical" if after == 0 else "warning",
                    title=(
                        f"Table {table} dropped from {human_count(before)} "
                        f"to {human_count(after)} rows"
                    ),
                    description=_with_label(
                        f"Expected ~{human_count(before)} rows, got {human_count(after)}. "
                        + body
                        + context,
                        database_label,
                    ),
                )
            )
        return out
    # Many tables at once (a wrong database, a bulk purge): one report, not a flood.
    emptied = sum(1 for _, _, after in drops if after == 0)
    lines = [_drop_line(*d) for d in drops[:20]]
    if len(drops) > 20:
        lines.append(f"... and {len(drops) - 20} more tables")
    return [
        AnomalyReport(
            type="size_anomaly",
            severity="critical" if emptied else "warning",
            title=f"Row counts fell sharply in {len(drops)} tables"
            + (f" ({emptied} now empty)" if emptied else ""),
            description=_with_label(
                f"Compared with the previous successful backup ({since}):\n" + "\n".join(lines),
                database_label,
            ),
        )
    ]


# -- schema drift -----------------------------------------------------------------


def schema_drift(
    old: Optional[Dict[str, Any]],
    new: Optional[Dict[str, Any]],
    *,
    database_label: Optional[str] = None,
) -> Optional[AnomalyReport]:
    """A ``schema_drift`` report when ``new`` differs from ``old``; None for the first snapshot."""
    if old is None or new is None:
        return None
    diff = diff_schemas(old, new)
    if diff.empty:
        return None
    title, description = diff.describe()
    return AnomalyReport(
        type="schema_drift",
        severity=diff.severity,
        title=title,
        description=_with_label(description, database_label),
    )


# -- restore failure -------------------------------------------------------------


def restore_failure(
    message: str, *, database_label: Optional[str] = None, backup: Optional[str] = None
) -> AnomalyReport:
    """A critical ``restore_failure`` from a verification error (redacted, bounded)."""
    # Cut before redacting (redaction regexes are slow on megabytes of stderr),
    # with a margin so a secret cut at the edge is cut off again afterwards.
    text = " ".join(str(message or "no error message")[:8000].split())
    text = redact(text[:4000])[:2000]
    lines = [f"The backup could not be restored for verification: {text}"]
    if backup:
        lines.append(f"Backup: {redact(backup)}")
    lines.append("Until a backup of this database restores, it may not be recoverable.")
    return AnomalyReport(
        type="restore_failure",
        severity="critical",
        title="Backup restore verification failed",
        description=_with_label("\n".join(lines), database_label),
    )


# -- the entry point ----------------------------------------------------------------


def analyze_backup(
    history: History,
    database_id: str,
    dump_size: Optional[int],
    compressed_size: Optional[int],
    row_counts: Optional[Dict[str, int]],
    schema_snapshot: Optional[Dict[str, Any]],
    now: Optional[dt.datetime] = None,
    *,
    thresholds: AnomalyThresholds = DEFAULT_THRESHOLDS,
    database_label: Optional[str] = None,
) -> List[AnomalyReport]:
    """Anomalies of one successful backup, then remember it for the next ones.

    The sample is recorded after evaluating, so a backup is never compared
    with itself. History trouble (a full disk, a locked file) is logged and
    yields fewer anomalies, never an exception: analysis must not fail the
    backup it is analysing.
    """
    now = _utc(now)
    t = thresholds
    reports: List[AnomalyReport] = []

    size_report: Optional[AnomalyReport] = None
    try:
        window = history.backups(
            database_id,
            since=now - dt.timedelta(days=t.window_days),
            until=now,
            row_counts=False,
            latest=t.max_samples,
        )
        size_report = size_anomaly(
            dump_size, compressed_size, window, t, database_label=database_label
        )
        if size_report is not None:
            reports.append(size_report)
    except Exception:
        log.warning("size anomaly check for database %s failed", database_id, exc_info=True)

    has_tables = bool(schema_snapshot and schema_snapshot.get("tables"))
    try:
        previous = history.last_backup(database_id, before=now)
        reports.extend(
            row_count_anomalies(
                row_counts,
                previous,
                t,
                missing_is_zero=not has_tables,
                size_normal=size_report is None,
                database_label=database_label,
            )
        )
    except Exception:
        log.warning("row count anomaly check for database %s failed", database_id, exc_info=True)

    if schema_snapshot is not None:
        try:
            old = history.latest_schema(database_id)
            if old is not None and old.hash != schema_hash(schema_snapshot):
                drift = schema_drift(old.snapshot, schema_snapshot, database_label=database_label)
                if drift is not None:
                    reports.append(drift)
        except Exception:
            log.warning("schema drift check for database %s failed", database_id, exc_info=True)

    try:
        history.record_backup(
            database_id,
            when=now,
            dump_size=dump_size,
            compressed_size=compressed_size,
            row_counts=row_counts,
        )
        if schema_snapshot is not None:
            history.save_schema(database_id, schema_snapshot, when=now)
    except Exception:
        log.warning("could not record backup history for database %s", database_id, exc_info=True)
    return reports
