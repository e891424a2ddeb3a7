"""Which process owns a job: a pid plus its start time, so a reused pid is not mistaken.

The outbox records the owner of every job it queues and the job journal does
the same; crash recovery reports a job ``INTERRUPTED`` only once its owner is
gone. A bare pid is not enough: after a reboot or a long uptime the pid may
belong to an unrelated process, so the kernel's start time goes with it.
"""

from __future__ import annotations

import os
from typing import Optional


def process_token(pid: Optional[int] = None) -> str:
    """``pid:starttime``: names a process uniquely even after its pid is reused."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}:{_start_ticks(pid) or 0}"


def _start_ticks(pid: int) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after it.
    fields = stat.rsplit(")", 1)[-1].split()
    try:
        return int(fields[19])  # field 22 overall: start time in clock ticks
    except (IndexError, ValueError):
        return None


def owner_alive(token: Optional[str]) -> bool:
    """True while the process named by ``token`` still runs (and is not this one's
    predecessor under a reused pid)."""
    if not token:
        return False
    try:
        pid_text, ticks_text = token.split(":", 1)
        pid, ticks = int(pid_text), int(ticks_text)
    except ValueError:
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    current = _start_ticks(pid)
    if current is None:  # no /proc: trust the pid
        return True
    return ticks == 0 or current == ticks
