"""backupagent: backs up the databases on its host and proves every backup restores."""

__version__ = "0.1.0"
