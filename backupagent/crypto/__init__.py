"""age v1 encryption (age-encryption.org/v1) built on the ``cryptography`` package.

Backups must stay readable with the stock ``age`` CLI when the agent is gone, so
this package speaks the reference format exactly instead of an own scheme.
The public entry point is :mod:`backupagent.crypto.age`.
"""
