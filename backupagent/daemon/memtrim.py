"""Give the memory a finished backup freed back to the kernel (glibc only).

Measured in the soak (docs/performance.md, "Soak"): the daemon's Python
objects, SQLite's caches and glibc's in-use bytes stay flat from job to job,
yet RSS crept up by about 0.3 MB a minute at 200 backups a minute. The
difference was memory glibc had been given back by ``free()`` and kept: a
backup's large transient buffers (pipe reads, zstd and age chunks) are
allocated and freed in the pipeline's and the pool's threads, each of which
has its own malloc arena, and glibc returns free space to the kernel only
from the top of an arena. Fragments in the middle stay resident, and their
high-water mark rose a little with each minute's burst of jobs.

``malloc_trim(0)`` walks every arena and releases (``MADV_DONTNEED``) each
whole free page, wherever it lies. Called once after each backup it costs
about a millisecond and keeps RSS near what is in use.

The second half: the number of arenas. glibc gives a thread that finds every
arena busy a new one, up to 8 per CPU, and keeps each for the life of the
process with its own partly used pages. Every backup starts fresh threads
(the pipeline's reader and uploader, zstd's worker), so the count climbed
with each minute's burst of concurrent jobs and RSS with it. The daemon caps
it (``M_ARENA_MAX``, 2 arenas) at start: its threads mostly wait on pipes,
sockets and C code that does not allocate per byte, so arena contention is
not measurable here, and the footprint stops depending on thread history.

On a libc without these calls (musl, macOS) both are no-ops.
"""

from __future__ import annotations

import ctypes
import logging
from typing import Any, Optional

log = logging.getLogger(__name__)

_UNSET: Any = object()
_trim: Any = _UNSET


M_ARENA_MAX = -8  # glibc's mallopt parameter number
DAEMON_ARENAS = 2


def limit_arenas(count: int = DAEMON_ARENAS) -> bool:
    """Cap glibc's malloc arenas (call before the daemon starts its threads)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    try:
        return bool(mallopt(M_ARENA_MAX, count))
    except Exception:
        log.debug("mallopt(M_ARENA_MAX) failed", exc_info=True)
        return False


def _load() -> Optional[Any]:
    try:
        libc = ctypes.CDLL(None)
        fn = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


def release_freed_memory() -> bool:
    """True when memory was returned to the kernel; never raises."""
    global _trim
    if _trim is _UNSET:
        _trim = _load()
    if _trim is None:
        return False
    try:
        return bool(_trim(0))
    except Exception:  # a failed trim must never fail a backup
        log.debug("malloc_trim failed", exc_info=True)
        return False
