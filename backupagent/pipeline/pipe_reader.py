"""Reading a dump tool's stdout pipe in few, large reads.

Why: dump tools write their output a few KiB at a time (pg_dump: one stdio
buffer per write), and a reader blocked in ``read()`` is woken for every one
of those writes, then goes back to sleep with a crumb. For a 1 GB dump that
is 100,000+ wake-ups, and on a busy two-core host the CPU they cost is taken
from the dump itself. Measured on a 1 GB ``pg_dump -Fc -Z0``: 0.7-1.2 s of
reader CPU with blocking reads, 0.2-0.4 s with this reader (bench/
backup_vs_native.py; docs/performance.md).

So the reader lets the pipe (enlarged to 1 MiB by ``grow_pipe``) fill to half
its capacity and then takes everything in it with one ``read()``. Between
looks it naps; a writer that closed its end (``POLLHUP``) or stopped writing
ends the wait at once, so the end of a dump and a slow dump are never held
back. Where the kernel cannot say how much a pipe holds (not Linux, not a
pipe) ``for_fd`` returns None and the caller keeps its plain blocking reads.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import os
import select
import termios
from typing import Optional

_F_GETPIPE_SZ = 1032  # Linux fcntl
MIN_NAP_S = 0.001
MAX_NAP_S = 0.05  # an idle writer (a dump waiting on a lock) costs 20 wake-ups/s


class PipeReader:
    """Coalescing reads from the read end of a pipe; see the module docstring."""

    def __init__(self, fd: int, capacity: int) -> None:
        self.fd = fd
        self.want = max(1, capacity // 2)
        self._count = array.array("i", [0])
        self._hup = select.poll()
        self._hup.register(fd, 0)  # no events asked: only POLLHUP/POLLERR wake us

    @classmethod
    def for_fd(cls, fd: int) -> Optional[PipeReader]:
        """A reader for ``fd``, or None when it is not a pipe we can measure."""
        with contextlib.suppress(OSError):
            capacity = fcntl.fcntl(fd, _F_GETPIPE_SZ)
            reader = cls(fd, capacity)
            reader.available()  # FIONREAD works here
            return reader
        return None

    def available(self) -> int:
        """Bytes waiting in the pipe."""
        fcntl.ioctl(self.fd, termios.FIONREAD, self._count, True)
        return int(self._count[0])

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; ``b""`` at end of output.

        Waits until the pipe holds ``min(n, capacity / 2)`` bytes, the writer
        closed its end, or it wrote nothing since the last look.
        """
        want = min(n, self.want)
        nap = MIN_NAP_S
        last = -1
        while True:
            avail = self.available()
            if avail >= want or (avail == last and avail > 0):
                break
            if last >= 0 and avail > last:
                # Sleep about as long as the writer needs to fill the rest, so
                # a fast dump costs one wake-up per read and a slow one few.
                rate = (avail - last) / nap
                nap = min(max((want - avail) / rate, MIN_NAP_S), MAX_NAP_S)
            else:
                nap = min(nap * 2, MAX_NAP_S)
            if self._hup.poll(nap * 1000):  # writer gone: read what is left
                break
            last = avail
        return os.read(self.fd, n)
