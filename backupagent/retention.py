"""Which backups a retention policy keeps: pure, deterministic, no I/O.

The semantics are restic's ``forget --keep-last/--keep-daily/--keep-weekly/
--keep-monthly`` (restic >= 0.17, ``internal/restic/snapshot_policy.go``), so
users who know restic get no surprises, plus three rules of ours that exist
because a backup agent runs unattended:

* backups are sorted newest first (ties broken by key, so the result never
  depends on listing order);
* ``keep_last N`` keeps the N newest backups;
* ``keep_daily N`` keeps the newest backup of each of the N most recent UTC
  calendar days *that have a backup*; ``keep_weekly`` does the same per ISO
  8601 week (Monday to Sunday, UTC; ISO week-numbering year, so 2024-12-30
  belongs to 2025-W01) and ``keep_monthly`` per UTC calendar month;
* as in restic, when a rule still has counts left after the newest backup of
  every bucket it saw, the oldest backup is kept as well ("oldest daily"),
  which stretches the history while there is too little of it;
* a backup kept by any rule is kept; every reason is recorded;
* days are UTC days, never local ones: a daylight-saving change or a host
  moved to another time zone can never merge or split a day;
* ``None`` and ``0`` both switch a rule off; a policy with every rule off
  keeps everything (retention disabled), so a missing or empty config can
  never delete a backup;
* the newest *good* backup is always kept, whatever the policy says, because
  deleting the only restorable backup is the one mistake retention must
  never make.

``plan`` only decides; ``backupagent.jobs.prune`` lists a target and deletes.
See docs/retention.md for worked examples.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Tuple

from backupagent.errors import AgentError, ConfigInvalid

RULES: Tuple[Tuple[str, str], ...] = (
    # (attribute, the protocol's camelCase name used in error messages)
    ("keep_last", "keepLast"),
    ("keep_daily", "keepDaily"),
    ("keep_weekly", "keepWeekly"),
    ("keep_monthly", "keepMonthly"),
)

REASON_EMPTY = "policy keeps all"
REASON_NEWEST_GOOD = "newest good backup"


class RetentionError(AgentError):
    """Applying retention failed or would break one of its safety rules."""

    code = "RETENTION_FAIL"


@dataclass
class Backup:
    """One backup object together with its manifest.

    ``created_at`` is timezone-aware; ``good`` is False when the manifest
    could not be read or parsed (the backup still counts for retention, but
    is not what the "never delete the newest good backup" rule protects).
    ``database`` is the directory holding the backups of one database.
    """

    key: str
    manifest_key: str
    created_at: dt.datetime
    size: int = 0
    database: str = ""
    job_id: str = ""
    manifest_size: int = 0
    good: bool = True
    manifest: Optional[Dict[str, Any]] = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.created_at.tzinfo is None or self.created_at.utcoffset() is None:
            raise ValueError(
                f"backup {self.key!r}: created_at must be timezone-aware (UTC), "
                f"got naive {self.created_at.isoformat()}"
            )

    @property
    def created_utc(self) -> dt.datetime:
        return self.created_at.astimezone(dt.timezone.utc)


@dataclass(frozen=True)
class RetentionPolicy:
    """How many backups each rule keeps; None or 0 switches a rule off."""

    keep_last: Optional[int] = None
    keep_daily: Optional[int] = None
    keep_weekly: Optional[int] = None
    keep_monthly: Optional[int] = None

    def __post_init__(self) -> None:
        problems = []
        for attr, wire in RULES:
            value = getattr(self, attr)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                problems.append(
                    f"retention.{wire}: {value!r} is not a whole number; "
                    "give a count like 7, or 0/null to switch the rule off"
                )
            elif value < 0:
                problems.append(
                    f"retention.{wire}: {value} is negative; "
                    "give a count like 7, or 0/null to switch the rule off"
                )
        if problems:
            raise ConfigInvalid(problems, source="retention policy")

    @property
    def empty(self) -> bool:
        """Every rule off: retention is disabled and nothing is ever deleted."""
        return not any(getattr(self, attr) for attr, _ in RULES)

    def describe(self) -> str:
        parts = [
            f"{attr[len('keep_') :]} {getattr(self, attr)}"
            for attr, _ in RULES
            if getattr(self, attr)
        ]
        return "keep " + ", ".join(parts) if parts else "keep everything (no rule set)"

    @classmethod
    def from_any(cls, value: Any) -> RetentionPolicy:
        """Accept this class, the config model's ``Retention``, any object with
        the four attributes, or a mapping in snake_case or the protocol's
        camelCase; None means "no policy" (keep everything).
        """
        if isinstance(value, cls):
            return value
        if value is None:
            return cls()
        if isinstance(value, dict):
            kwargs = {}
            for attr, wire in RULES:
                kwargs[attr] = value.get(attr, value.get(wire))
            return cls(**kwargs)
        return cls(**{attr: getattr(value, attr, None) for attr, _ in RULES})


class Kept(NamedTuple):
    """A kept backup and why (a tuple, so ``for backup, reasons in plan.keep`` works)."""

    backup: Backup
    reasons: List[str]


class Orphan(NamedTuple):
    """An object retention will not touch, and why (reported, never deleted)."""

    key: str
    size: int
    reason: str


@dataclass
class RetentionPlan:
    """The decision for a set of backups, plus what applying it did.

    ``keep`` and ``remove`` are newest first. ``orphans`` and
    ``dangling_manifests`` are filled by the prune job (listing a target);
    ``deleted`` and ``errors`` by applying the plan.
    """

    policy: RetentionPolicy
    keep: List[Kept] = field(default_factory=list)
    remove: List[Backup] = field(default_factory=list)
    orphans: List[Orphan] = field(default_factory=list)
    dangling_manifests: List[str] = field(default_factory=list)
    dry_run: bool = False
    deleted: List[Backup] = field(default_factory=list)
    deleted_manifests: List[str] = field(default_factory=list)
    errors: List[str] = field(default_factory=list)

    @property
    def kept_backups(self) -> List[Backup]:
        return [k.backup for k in self.keep]

    @property
    def reclaimed_bytes(self) -> int:
        return sum(b.size + b.manifest_size for b in self.remove)

    def merge(self, other: RetentionPlan) -> RetentionPlan:
        """Plans of several databases as one (for the CLI's single report)."""
        return RetentionPlan(
            policy=self.policy,
            keep=self.keep + other.keep,
            remove=self.remove + other.remove,
            orphans=self.orphans + other.orphans,
            dangling_manifests=self.dangling_manifests + other.dangling_manifests,
            dry_run=self.dry_run or other.dry_run,
            deleted=self.deleted + other.deleted,
            deleted_manifests=self.deleted_manifests + other.deleted_manifests,
            errors=self.errors + other.errors,
        )


# bucket functions: a backup's bucket label for each rule ------------------------


def day_bucket(when: dt.datetime) -> str:
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%d")


def week_bucket(when: dt.datetime) -> str:
    year, week, _ = when.astimezone(dt.timezone.utc).isocalendar()
    return f"{year:04d}-W{week:02d}"


def month_bucket(when: dt.datetime) -> str:
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m")


_BUCKETS: Tuple[Tuple[str, str, Optional[Callable[[dt.datetime], str]]], ...] = (
    ("keep_last", "last", None),  # None: every backup is its own bucket
    ("keep_daily", "daily", day_bucket),
    ("keep_weekly", "weekly", week_bucket),
    ("keep_monthly", "monthly", month_bucket),
)


def sort_newest_first(backups: Iterable[Backup]) -> List[Backup]:
    """Newest first; equal times ordered by key so the plan never depends on listing order."""
    return sorted(backups, key=lambda b: (b.created_utc, b.key), reverse=True)


def newest_good(backups: Iterable[Backup]) -> Optional[Backup]:
    for backup in sort_newest_first(backups):
        if backup.good:
            return backup
    return None


def plan(backups: Iterable[Backup], policy: Any) -> RetentionPlan:
    """Decide which backups ``policy`` keeps; see the module docstring for the rules.

    ``policy`` may be a RetentionPolicy, the config model's Retention, a
    mapping, or None. Duplicate keys are refused: they would mean a listing
    bug, and deleting "the other copy" would delete the only one.
    """
    pol = RetentionPolicy.from_any(policy)
    ordered = sort_newest_first(backups)
    seen = set()
    for b in ordered:
        if b.key in seen:
            raise ValueError(f"backup {b.key!r} appears twice in the list given to retention")
        seen.add(b.key)
    result = RetentionPlan(policy=pol)
    if pol.empty:
        result.keep = [Kept(b, [REASON_EMPTY]) for b in ordered]
        return result

    reasons: List[List[str]] = [[] for _ in ordered]
    last_index = len(ordered) - 1
    for attr, label, bucket_of in _BUCKETS:
        remaining = getattr(pol, attr) or 0
        previous: Optional[str] = None
        for nr, backup in enumerate(ordered):
            if remaining <= 0:
                break
            bucket = str(nr) if bucket_of is None else bucket_of(backup.created_at)
            if bucket != previous:
                reasons[nr].append(label if bucket_of is None else f"{label} {bucket}")
            elif nr == last_index:
                # restic >= 0.17: counts left at the oldest backup keep it too
                reasons[nr].append(f"oldest {label} {bucket}")
            else:
                continue
            previous = bucket
            remaining -= 1

    protected = newest_good(ordered)
    for nr, backup in enumerate(ordered):
        if backup is protected and not reasons[nr]:
            reasons[nr].append(REASON_NEWEST_GOOD)
        if reasons[nr]:
            result.keep.append(Kept(backup, reasons[nr]))
        else:
            result.remove.append(backup)
    return result
