"""The long-lived agent: heartbeats, config sync and the backup schedule."""
