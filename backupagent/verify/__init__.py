"""Restore verification: prove a stored backup restores, in a throwaway container.

The daemon imports this package without importing the Docker SDK: only
:mod:`.container` touches ``docker``, and only inside functions, so an idle
agent pays nothing for verification it may never run.

- :mod:`.images`: which image verifies which engine/version, and pulling it.
- :mod:`.container`: the labelled, limited, always-removed container.
- :mod:`.engines`: per-engine container contract (env, readiness, restore, queries).
- :mod:`.restore`: the stored object -> decrypt -> decompress -> restore tool stream.
- :mod:`.checks`: row counts, schema match and custom queries -> report checks.
- :mod:`.run`: :func:`verify_backup`, the one entry point.
"""

from __future__ import annotations

from backupagent.verify.errors import VerifyError

__all__ = ["VerifyError"]
