"""Push-style stages of the backup stream: ``write(bytes)`` then ``close()``.

Every stage writes its output into a ``sink`` (anything with ``write``).

Close semantics, decided once for all stages: ``close()`` flushes what the
stage still holds (the zstd frame's end and checksum) into its sink and then
closes the sink too if ``close_sink`` is true (the default), so closing the
head of a chain finishes the whole chain. The stage that writes into the
target's writer must be built with ``close_sink=False``: a writer is finished
by ``commit()`` or ``abort()``, and that decision belongs to the job, after
the dump's exit status was checked, never to a ``close()``. ``close()`` is
idempotent. After an error, simply drop the chain: nothing here owns a
resource that needs releasing besides memory.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Dict, List, Optional

import zstandard

from backupagent.pipeline.errors import COMPRESS_FAIL, PipelineError
from backupagent.pipeline.zstd_framing import START_MARKER, end_marker

# Multi-threaded zstd compresses in jobs; its default job for level 3 is 8 MiB,
# and it keeps several jobs' input and output in flight (~50 MB RSS with two
# workers). 4 MiB jobs measured as fast, with the same ratio and ~30 MB less
# memory; 2 MiB saved 15 MB more but was slower in some runs.
JOB_SIZE = 4 << 20


def _close(sink: Any) -> None:
    close = getattr(sink, "close", None)
    if close is not None:
        close()


# Up to this level one zstd thread (~300 MB/s at level 3 here) outruns any
# single dump process (pg_dump: ~150-250 MB/s), so more threads buy no speed.
SINGLE_THREAD_MAX_LEVEL = 3


def host_cpus() -> int:
    """CPUs this process may run on (its affinity mask, else the CPU count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_threads(level: int = 3) -> int:
    """zstd threads for a backup at ``level`` on a database host.

    The dump is the critical path, and on the database's own host every
    extra runnable compression thread takes CPU from the database backend
    serving that dump: on a two-core host, two zstd workers made a 1 GB
    backup ~10 % slower than one (docs/performance.md). Up to level 3 one
    thread keeps up with the dump; higher levels are CPU-bound on
    compression, so they get half the host's CPUs and leave the rest to the
    database.
    """
    if level <= SINGLE_THREAD_MAX_LEVEL:
        return 1
    return max(1, host_cpus() // 2)


class Tap:
    """Passes bytes through unchanged, counting them and (optionally) hashing.

    ``sha256`` is the lowercase hex digest, available after ``close()``
    (or at any time via ``hexdigest()`` for the bytes so far).
    """

    def __init__(self, sink: Any, *, hash: bool = True, close_sink: bool = True) -> None:
        self.sink = sink
        self.close_sink = close_sink
        self.bytes = 0
        self._hash = hashlib.sha256() if hash else None
        self.sha256: Optional[str] = None
        self._closed = False

    def write(self, data: Any) -> None:
        n = len(data)
        if not n:
            return
        self.bytes += n
        if self._hash is not None:
            self._hash.update(data)
        self.sink.write(data)

    def hexdigest(self) -> Optional[str]:
        return self._hash.hexdigest() if self._hash is not None else None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.sha256 = self.hexdigest()
        if self.close_sink:
            _close(self.sink)


# In the calling thread, up to level 3, the stream is cut into independent
# frames of this size, each compressed in one call. Why: a streaming context
# copies its input into a ring buffer, and once that wraps every block is
# matched against the old half as an "external dictionary", zstd's slower
# match finder. A one-shot frame knows its size, and for an input of at most
# 128 KiB (one zstd block) level 3 picks a 128 KiB window and match tables
# that stay in the CPU's cache. On a 1 GB pg_dump, four alternating rounds:
# 2.2-2.5 s of CPU against 3.0-3.6 s for 4 MiB frames and 3.5-4.6 s for one
# streaming frame, and a smaller output (166.4 MB vs 168.9 MB at 4 MiB; rows
# rarely repeat across 128 KiB). Decompression costs the same (0.95-0.99 s vs
# 1.03-1.10 s). Concatenated frames are standard zstd: ``zstd -d`` and every
# decoder read them as one stream. Skippable frames before and after them
# let a restore tell a stream cut between two frames from a whole one
# (``zstd_framing``).
FRAME_SIZE = 128 << 10
FRAMED_MAX_LEVEL = 3


class ZstdCompressor:
    """Standard zstd (``zstd -d`` reads it), every frame with a content checksum.

    ``threads`` > 1 uses zstd's own worker threads (the compression runs in C
    without the GIL, overlapping with our reading and encrypting); ``-1``
    means ``default_threads(level)``, and ``0`` or ``1`` compresses in the
    calling thread (which releases the GIL while it does): up to level 3 as
    a series of ``FRAME_SIZE`` frames between start and end markers (see
    there), above it as one frame.
    Output comes in bursts (a frame, or a multi-threaded job, at a time);
    downstream must not assume a chunk per input chunk. ``job_size`` sets
    the size of the worker threads' jobs (memory vs. per-job overhead).
    """

    def __init__(
        self,
        sink: Any,
        level: int = 3,
        threads: int = -1,
        *,
        job_size: Optional[int] = None,
        close_sink: bool = True,
    ) -> None:
        if not isinstance(level, int) or not (1 <= level <= 22):
            raise PipelineError(
                f"compression level {level!r} is out of range: use 1 (fast) to 22 (small); "
                "3 is the default",
                code="CONFIG_INVALID",
            )
        if threads is None or threads < 0:
            threads = default_threads(level)
        self.sink = sink
        self.level = level
        self.threads = threads
        self.close_sink = close_sink
        self.bytes_in = 0
        self.bytes_out = 0
        self._closed = False
        self._frame: Optional[memoryview] = None
        self._filled = 0
        self._frames = 0
        try:
            if threads <= 1 and level <= FRAMED_MAX_LEVEL:
                self._cctx = zstandard.ZstdCompressor(level=level, write_checksum=True)
                self._frame = memoryview(bytearray(FRAME_SIZE))
                return
            params: Dict[str, Any] = {"write_checksum": True, "write_content_size": False}
            if threads > 1:
                params.update(threads=threads, job_size=job_size or JOB_SIZE)
            cctx = zstandard.ZstdCompressor(
                compression_params=zstandard.ZstdCompressionParameters.from_level(level, **params)
            )
            self._cobj = cctx.compressobj()
        except zstandard.ZstdError as exc:
            raise PipelineError(f"zstd setup failed: {exc}", code=COMPRESS_FAIL) from None

    def write(self, data: Any) -> None:
        if self._closed:
            raise PipelineError("zstd compressor: write after close()", code=COMPRESS_FAIL)
        n = len(data)
        if not n:
            return
        self.bytes_in += n
        if self._frame is None:
            self._emit(self._cobj.compress, data)
            return
        # Whole frames are compressed straight from the input; only a tail
        # shorter than a frame is copied aside. The frames of one write go
        # downstream as one piece: one queue hand-off per input chunk, not
        # one per 128 KiB.
        view = memoryview(data).cast("B")
        out: List[bytes] = []
        if self._filled:
            take = min(len(view), FRAME_SIZE - self._filled)
            self._frame[self._filled : self._filled + take] = view[:take]
            self._filled += take
            view = view[take:]
            if self._filled == FRAME_SIZE:
                out.append(self._compress_frame(self._frame))
                self._filled = 0
        while len(view) >= FRAME_SIZE:
            out.append(self._compress_frame(view[:FRAME_SIZE]))
            view = view[FRAME_SIZE:]
        if len(view):
            self._frame[: len(view)] = view
            self._filled = len(view)
        if out:
            self._put(b"".join(out) if len(out) > 1 else out[0])

    def _compress_frame(self, data: Any) -> bytes:
        out = self._compress(self._cctx.compress, data)
        if not self._frames:
            out = START_MARKER + out
        self._frames += 1
        return out

    def _emit(self, compress: Any, data: Any) -> None:
        out = self._compress(compress, data)
        if out:
            self._put(out)

    @staticmethod
    def _compress(compress: Any, data: Any) -> bytes:
        try:
            return compress(data)
        except zstandard.ZstdError as exc:
            raise PipelineError(f"zstd compression failed: {exc}", code=COMPRESS_FAIL) from None

    def _put(self, out: bytes) -> None:
        self.bytes_out += len(out)
        self.sink.write(out)

    def close(self) -> None:
        """End the last frame (flush every worker, write the checksum), then close the sink."""
        if self._closed:
            return
        self._closed = True
        if self._frame is None:
            self._emit(self._cobj.flush, zstandard.COMPRESSOBJ_FLUSH_FINISH)
        else:
            tail = b""
            if self._filled or not self._frames:  # an empty input is still one (empty) frame
                tail = self._compress_frame(self._frame[: self._filled])
            self._put(tail + end_marker(self.bytes_in, self._frames))
        self._frame = None
        if self.close_sink:
            _close(self.sink)
