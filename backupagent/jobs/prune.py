"""Apply a retention policy to the backups stored in a target.

Listing: every object under the prefix is paired with its manifest
(``<backup key>.manifest.json``, beside it). Only a backup *with* a manifest
counts for retention; what is left over is reported, and handled so that no
crash can lose a backup or leak one forever:

* an object without a manifest is an **orphan**: possibly a backup still being
  uploaded (the backup job commits the object first and the manifest after
  it), possibly a foreign file. Retention never deletes it; it is reported.
* a manifest whose backup object is missing is **dangling**. The backup job
  never writes one (the manifest comes after the object's commit), so it is
  what an interrupted deletion leaves behind, and it describes nothing
  restorable: retention deletes it.

Deletion order follows from that: the **backup object first, then its
manifest**. A crash in between leaves a dangling manifest, which the next
run removes. The other order would leave a manifest-less object, which looks
exactly like an upload in progress and could never be cleaned up safely.

Time: a backup's time is the manifest's ``createdAt`` when the manifest is
readable and has one, else the UTC timestamp in the key name. A backup whose
manifest cannot be read or parsed still counts, but is not "good", so the
"newest good backup is never deleted" rule protects an older, readable one.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Tuple

from backupagent.retention import (
    Backup,
    Orphan,
    RetentionError,
    RetentionPlan,
    RetentionPolicy,
    newest_good,
    plan,
)
from backupagent.targets.base import ObjectInfo, ObjectNotFound, Target, TargetError
from backupagent.targets.keys import MANIFEST_SUFFIX, is_manifest_key, parse_backup_name

log = logging.getLogger(__name__)

# A manifest holds per-table row counts, so it can be large for a big schema;
# past this it is not read whole into memory and the backup counts as not good.
MAX_MANIFEST_BYTES = 16 * 1024 * 1024

_ISO_RE = re.compile(
    r"^(?P<base>\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2})"
    r"(?:\.(?P<frac>\d+))?"
    r"(?P<tz>Z|z|[+-]\d{2}:?\d{2})?$"
)


@dataclass
class Inventory:
    """What a listing found: backups with manifests, and everything else."""

    backups: List[Backup] = field(default_factory=list)
    orphans: List[Orphan] = field(default_factory=list)
    dangling_manifests: List[str] = field(default_factory=list)

    def databases(self) -> List[str]:
        """Database directories that hold anything, sorted."""
        dirs = {b.database for b in self.backups}
        dirs.update(_parent(o.key) for o in self.orphans)
        dirs.update(_parent(m) for m in self.dangling_manifests)
        return sorted(dirs)

    def only(self, database: str) -> Inventory:
        return Inventory(
            backups=[b for b in self.backups if b.database == database],
            orphans=[o for o in self.orphans if _parent(o.key) == database],
            dangling_manifests=[m for m in self.dangling_manifests if _parent(m) == database],
        )


def _parent(key: str) -> str:
    return key.rsplit("/", 1)[0] if "/" in key else ""


def _dir_prefix(prefix: str) -> str:
    """``a/b`` -> ``a/b/``: a listing prefix that cannot match ``a/bc/...``."""
    prefix = (prefix or "").strip("/")
    return prefix + "/" if prefix else ""


def parse_created_at(value: Any) -> Optional[dt.datetime]:
    """An RFC 3339 / ISO 8601 timestamp as aware UTC; None if absent or unparsable.

    Written out by hand because Python 3.9's ``fromisoformat`` accepts neither
    ``Z`` nor fractions other than 3 or 6 digits. A time without a zone is
    taken as UTC (the protocol's timestamps are always UTC).
    """
    if not isinstance(value, str):
        return None
    match = _ISO_RE.match(value.strip())
    if not match:
        return None
    frac = (match["frac"] or "0")[:6].ljust(6, "0")
    tz = match["tz"] or "+00:00"
    if tz in ("Z", "z"):
        tz = "+00:00"
    elif ":" not in tz:
        tz = tz[:3] + ":" + tz[3:]
    try:
        parsed = dt.datetime.fromisoformat(f"{match['base'].replace(' ', 'T')}.{frac}{tz}")
    except ValueError:
        return None
    return parsed.astimezone(dt.timezone.utc)


def read_manifest(target: Target, key: str) -> Tuple[Optional[Dict[str, Any]], str]:
    """The manifest as a dict, or None and why it could not be used.

    ObjectNotFound propagates: the caller decides what a vanished manifest means.
    """
    reader = target.open_reader(key)
    try:
        raw = reader.read(MAX_MANIFEST_BYTES + 1)
    finally:
        reader.close()
    if len(raw) > MAX_MANIFEST_BYTES:
        return None, f"larger than {MAX_MANIFEST_BYTES} bytes"
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return None, f"not valid JSON ({exc})"
    if not isinstance(data, dict):
        return None, "not a JSON object"
    return data, ""


def scan(target: Target, prefix: str = "", *, direct_only: bool = False) -> Inventory:
    """List ``prefix`` on ``target`` and pair backups with their manifests.

    ``direct_only`` keeps only objects directly in the ``prefix`` directory
    (one database's backups), not in directories below it.
    """
    base = _dir_prefix(prefix)
    objects: Dict[str, ObjectInfo] = OrderedDict()
    for info in target.list(base):
        if direct_only and _parent(info.key) != base.rstrip("/"):
            continue
        objects[info.key] = info

    inventory = Inventory()
    paired = set()
    for key, info in objects.items():
        if not is_manifest_key(key):
            continue
        backup_key = key[: -len(MANIFEST_SUFFIX)]
        backup_info = objects.get(backup_key)
        if backup_info is None:
            inventory.dangling_manifests.append(key)
            continue
        backup = _load_backup(target, backup_info, info)
        if isinstance(backup, Orphan):
            inventory.orphans.append(backup)
            continue
        paired.add(backup_key)
        inventory.backups.append(backup)

    orphaned = {o.key for o in inventory.orphans}
    for key, info in objects.items():
        if is_manifest_key(key) or key in paired or key in orphaned:
            continue
        inventory.orphans.append(
            Orphan(key, info.size, "no manifest (an upload in progress, or not a backup)")
        )
    inventory.orphans.sort(key=lambda o: o.key)
    return inventory


def _load_backup(target: Target, info: ObjectInfo, manifest_info: ObjectInfo) -> Any:
    """A Backup for an object with a manifest, or an Orphan when it has no usable time."""
    name = parse_backup_name(info.key)
    manifest: Optional[Dict[str, Any]] = None
    try:
        manifest, problem = read_manifest(target, manifest_info.key)
    except ObjectNotFound:
        return Orphan(info.key, info.size, "its manifest vanished while listing")
    except TargetError as exc:
        # A transient read error must not change what is deleted: stop the run.
        raise RetentionError(
            f"retention: cannot read manifest {manifest_info.key} ({exc}); "
            "nothing was deleted, the next run retries"
        ) from None
    if problem:
        log.warning("retention: manifest %s is unusable: %s", manifest_info.key, problem)

    created = parse_created_at(manifest.get("createdAt")) if manifest else None
    if created is None and name is not None:
        created = name.timestamp
    if created is None:
        return Orphan(
            info.key,
            info.size,
            "no createdAt in its manifest and no timestamp in its name: time unknown",
        )
    if name is not None:
        job_id = name.job_id
    elif manifest is not None:
        job_id = str(manifest.get("jobId") or "")
    else:
        job_id = ""
    return Backup(
        key=info.key,
        manifest_key=manifest_info.key,
        created_at=created,
        size=info.size,
        database=_parent(info.key),
        job_id=job_id,
        manifest_size=manifest_info.size,
        good=manifest is not None,
        manifest=manifest,
    )


def list_backups(target: Target, prefix: str = "") -> List[Backup]:
    """Every backup (with a manifest) under ``prefix``, newest first.

    Each carries ``database``, its directory
    (``<prefix>/<hostname>/<dbType>/<databaseName>``), which is what
    retention groups by.
    """
    from backupagent.retention import sort_newest_first

    return sort_newest_first(scan(target, prefix).backups)


def _apply(
    target: Target, inventory: Inventory, policy: Any, dry_run: bool, database: str
) -> RetentionPlan:
    """Plan one database's backups and (unless dry-run) delete what goes."""
    result = plan(inventory.backups, policy)
    result.orphans = list(inventory.orphans)
    result.dangling_manifests = list(inventory.dangling_manifests)
    result.dry_run = dry_run

    protected = newest_good(inventory.backups)
    if protected is not None and any(b.key == protected.key for b in result.remove):
        # plan() guarantees this never happens; refuse rather than trust it blindly
        raise RetentionError(
            f"retention for {database or '/'} would delete the newest good backup "
            f"{protected.key}; nothing was deleted (this is a bug, please report it)"
        )
    if result.remove and not result.keep:
        raise RetentionError(
            f"retention for {database or '/'} would delete every backup; nothing was deleted"
        )

    for orphan in result.orphans:
        log.info("retention: not touching %s: %s", orphan.key, orphan.reason)

    for backup in reversed(result.remove):  # oldest first
        if dry_run:
            log.info(
                "retention (dry run): would delete %s and its manifest (created %s, %d bytes)",
                backup.key,
                backup.created_utc.strftime("%Y-%m-%d %H:%M:%SZ"),
                backup.size,
            )
            continue
        try:
            target.delete(backup.key)
        except TargetError as exc:
            result.errors.append(f"deleting {backup.key}: {exc}")
            log.error("retention: could not delete %s: %s (its manifest is kept)", backup.key, exc)
            continue
        try:
            target.delete(backup.manifest_key)
        except TargetError as exc:
            # a dangling manifest: the next run deletes it
            result.errors.append(f"deleting {backup.manifest_key}: {exc}")
            log.error("retention: could not delete manifest %s: %s", backup.manifest_key, exc)
        else:
            result.deleted_manifests.append(backup.manifest_key)
        result.deleted.append(backup)
        log.info(
            "retention: deleted %s and its manifest (created %s, %d bytes; policy: %s)",
            backup.key,
            backup.created_utc.strftime("%Y-%m-%d %H:%M:%SZ"),
            backup.size,
            result.policy.describe(),
        )

    for key in result.dangling_manifests:
        if dry_run:
            log.info("retention (dry run): would delete %s (its backup is gone)", key)
            continue
        try:
            target.delete(key)
        except TargetError as exc:
            result.errors.append(f"deleting {key}: {exc}")
            log.error("retention: could not delete dangling manifest %s: %s", key, exc)
            continue
        result.deleted_manifests.append(key)
        log.info("retention: deleted %s (its backup was already gone)", key)
    return result


def apply_retention(
    target: Target, database_prefix: str, policy: Any, dry_run: bool = False
) -> RetentionPlan:
    """Apply ``policy`` to the backups of one database (the job calls this after a backup).

    ``database_prefix`` is the directory from ``keys.database_prefix``; only
    objects directly in it are considered. Deletion failures do not stop the
    run: they are logged and listed in ``plan.errors``, and the next run
    retries them.
    """
    database = (database_prefix or "").strip("/")
    inventory = scan(target, database, direct_only=True)
    return _apply(target, inventory, policy, dry_run, database)


def prune_command_impl(
    target: Target, prefix: str, policy: Any, dry_run: bool = False
) -> RetentionPlan:
    """``backupagent prune``: apply ``policy`` to every database directory under ``prefix``.

    The policy is applied to each database on its own (as restic groups
    snapshots by host and path), and the per-database plans are merged.
    """
    pol = RetentionPolicy.from_any(policy)
    inventory = scan(target, prefix)
    merged = RetentionPlan(policy=pol, dry_run=dry_run)
    for database in inventory.databases():
        merged = merged.merge(_apply(target, inventory.only(database), pol, dry_run, database))
    return merged


# human output -------------------------------------------------------------------


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def _table(rows: Iterable[Tuple[str, ...]], header: Tuple[str, ...]) -> List[str]:
    rows = [header, *rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def format_plan(plan_: RetentionPlan) -> str:
    """A table per database, newest first, for ``backupagent prune``."""
    dry = plan_.dry_run
    lines = [f"Policy: {plan_.policy.describe()}" + ("  (dry run: nothing deleted)" if dry else "")]
    by_db: Dict[str, List[Tuple[Backup, str, str]]] = OrderedDict()
    for kept in plan_.keep:
        by_db.setdefault(kept.backup.database, []).append(
            (kept.backup, "keep", ", ".join(kept.reasons))
        )
    deleted_keys = {b.key for b in plan_.deleted}
    for backup in plan_.remove:
        if dry:
            action = "would remove"
        elif backup.key in deleted_keys:
            action = "removed"
        else:
            action = "remove FAILED"
        by_db.setdefault(backup.database, []).append((backup, action, ""))
    for database in sorted(by_db):
        entries = sorted(by_db[database], key=lambda e: (e[0].created_utc, e[0].key), reverse=True)
        n_keep = sum(1 for e in entries if e[1] == "keep")
        n_remove = len(entries) - n_keep
        lines.append("")
        lines.append(f"{database or '/'}: keep {n_keep}, remove {n_remove}")
        rows = [
            (
                action,
                b.created_utc.strftime("%Y-%m-%d %H:%M:%S"),
                _size(b.size),
                b.key.rsplit("/", 1)[-1] + ("" if b.good else " (manifest unreadable)"),
                reasons,
            )
            for b, action, reasons in entries
        ]
        lines += _table(rows, ("ACTION", "CREATED (UTC)", "SIZE", "BACKUP", "REASONS"))
    if not by_db:
        lines.append("")
        lines.append("No backups found.")
    if plan_.orphans:
        lines.append("")
        lines.append(f"Not touched ({len(plan_.orphans)} without a usable manifest):")
        lines += [f"  {o.key}  {_size(o.size)}  {o.reason}" for o in plan_.orphans]
    if plan_.dangling_manifests:
        verb = "would delete" if dry else "deleted"
        lines.append("")
        lines.append(f"Manifests whose backup is gone ({verb}):")
        lines += [f"  {key}" for key in plan_.dangling_manifests]
    lines.append("")
    gone = plan_.remove if dry else plan_.deleted
    total = sum(b.size + b.manifest_size for b in gone)
    verb = "Would remove" if dry else "Removed"
    count = len(gone)
    lines.append(f"{verb} {count} backup(s), {_size(total)}; kept {len(plan_.keep)}.")
    if plan_.errors:
        lines.append(f"{len(plan_.errors)} error(s):")
        lines += [f"  {e}" for e in plan_.errors]
    return "\n".join(lines)
