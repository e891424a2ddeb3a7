"""What a finished backup says about its database: schema drift and anomalies.

Everything here works from the agent's local history (``history.db`` in the
state directory), so a standalone agent detects the same anomalies as a
registered one; the job layer reports them through the reporter and alerts.
"""

from __future__ import annotations

from backupagent.analysis.anomalies import (
    AnomalyThresholds,
    analyze_backup,
    restore_failure,
)
from backupagent.analysis.drift import SchemaDiff, diff_schemas, schema_hash
from backupagent.analysis.history import BackupSample, History, SchemaRecord

__all__ = [
    "AnomalyThresholds",
    "BackupSample",
    "History",
    "SchemaDiff",
    "SchemaRecord",
    "analyze_backup",
    "diff_schemas",
    "restore_failure",
    "schema_hash",
]
