"""The backup stream: source -> zstd -> age -> target writer, overlapped in threads.

Shape (each arrow a bounded queue, so memory stays flat and a slow stage
slows the ones before it instead of buffering)::

    reader thread     calling thread           upload thread
    source.read() --> tap(dump) -> zstd --> tap(comp) -> age -> tap(stored) -> writer

zstd compresses in its own C worker threads without the GIL; reading the
pipe, hashing and ChaCha20 also release it, so the three Python threads
overlap the way ``pg_dump | zstd -T0 | age > file`` overlaps processes,
without the pipe copies between them.

What the caller gets and must do:

- ``on_stage(name)`` is called once per stage, in the protocol's order,
  ``dumping``, ``compressing``, ``encrypting`` (only with recipients),
  ``uploading``, each when that stage begins: ``dumping`` when the dump
  process is started, the others as the first bytes reach them. All stages
  run concurrently afterwards (it is one stream), so "begins" is the only
  meaningful moment. Calls may come from any of the pipeline's threads but
  never concurrently and never out of order; an exception from the callback
  is logged and ignored (a backup never fails because of reporting).
- ``progress(Progress)`` (optional) is called about twice a second and once
  at the end, from the upload thread; keep it cheap.
- ``source.finish()`` is called *before* returning, so a failed, killed, cut
  short or cancelled dump raises :class:`PipelineError` here. The writer is
  never committed nor aborted by this function: on success the caller
  commits it, on any exception the caller aborts it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

from backupagent.errors import AgentError
from backupagent.pipeline.errors import (
    COMPRESS_FAIL,
    ENCRYPT_FAIL,
    UPLOAD_FAIL,
    PipelineError,
)
from backupagent.pipeline.queues import Aborted as _Aborted
from backupagent.pipeline.queues import ByteQueue as _ByteQueue
from backupagent.pipeline.source import CHUNK_SIZE
from backupagent.pipeline.stages import Tap, ZstdCompressor

log = logging.getLogger(__name__)

# Back-pressure budgets. The dump queue holds a few full chunks, the
# compressed queue a few MiB of zstd output (multi-threaded zstd emits whole
# jobs, several MiB at once, so it is bounded by bytes, not items).
DUMP_QUEUE_BYTES = 6 * CHUNK_SIZE
STORED_QUEUE_BYTES = 8 * CHUNK_SIZE
PROGRESS_INTERVAL = 0.5


@dataclass
class Progress:
    """A snapshot for a progress display (bytes so far at each point)."""

    stage: str
    dump_bytes: int
    compressed_bytes: int
    stored_bytes: int
    elapsed_s: float


@dataclass
class PipelineResult:
    """Sizes, digests and timings of one backup stream.

    ``sha256`` is of the stored object (what a restore re-checks);
    ``dump_sha256`` only when asked for (``hash_dump=True``). ``durations_ms``:
    ``total`` (wall), ``dump`` (until the dump process exited), and the busy
    time spent inside ``compress``, ``encrypt`` and ``upload`` (writer.write):
    the stages overlap, so the largest busy time names the bottleneck.
    """

    dump_size: int
    compressed_size: int
    stored_size: int
    sha256: str
    encrypted: bool
    compression_level: int
    dump_sha256: Optional[str] = None
    durations_ms: Dict[str, int] = field(default_factory=dict)


class _QueueSink:
    """The compressor's sink: hands its output to the upload thread.

    ``wait_s`` is the time spent blocked on a full queue (back-pressure from
    the upload side), so it can be taken out of the compressor's busy time.
    """

    def __init__(self, queue: _ByteQueue) -> None:
        self._queue = queue
        self.wait_s = 0.0

    def write(self, data: Any) -> None:
        t = time.perf_counter()
        self._queue.put(bytes(data))
        self.wait_s += time.perf_counter() - t

    def close(self) -> None:
        self._queue.put(None)


class _Stages:
    """Calls ``on_stage`` once per stage, in order, whichever thread arrives first."""

    def __init__(self, names: List[str], callback: Optional[Callable[[str], None]]) -> None:
        self._names = names
        self._callback = callback
        self._done = 0
        self._lock = threading.Lock()
        self.current = names[0]

    def reach(self, name: str) -> None:
        idx = self._names.index(name)
        if idx < self._done:
            return
        with self._lock:
            while self._done <= idx:
                stage = self._names[self._done]
                self._done += 1
                self.current = stage
                if self._callback is not None:
                    try:
                        self._callback(stage)
                    except Exception as exc:
                        log.warning("stage callback for %r failed (ignored): %s", stage, exc)

    def finish(self) -> None:
        self.reach(self._names[-1])


class _Busy:
    """Accumulates the time spent inside a stage's calls."""

    def __init__(self) -> None:
        self.seconds = 0.0


class _TimedSink:
    """Adds the time spent in ``sink.write`` to ``busy``; calls ``first`` once.

    The time includes what the sink passes downstream in the same thread;
    ``run_backup_pipeline`` subtracts the nested stages' share.
    """

    def __init__(self, sink: Any, busy: _Busy, first: Optional[Callable[[], None]] = None):
        self._sink = sink
        self._busy = busy
        self._first = first

    def write(self, data: Any) -> None:
        if self._first is not None:
            first, self._first = self._first, None
            first()
        t = time.perf_counter()
        try:
            self._sink.write(data)
        finally:
            self._busy.seconds += time.perf_counter() - t

    def close(self) -> None:
        close = getattr(self._sink, "close", None)
        if close is not None:
            t = time.perf_counter()
            try:
                close()
            finally:
                self._busy.seconds += time.perf_counter() - t


class _WriterAdapter:
    """Terminal sink: ``writer.write`` with target errors coded UPLOAD_FAIL."""

    def __init__(self, writer: Any) -> None:
        self._writer = writer

    def write(self, data: Any) -> None:
        try:
            self._writer.write(data)
        except AgentError:
            raise
        except OSError as exc:
            raise PipelineError(
                f"writing the backup object failed: {exc}", code=UPLOAD_FAIL
            ) from exc


def _check_cancel(cancel: Any) -> None:
    if cancel is not None and cancel.cancelled:
        reason = getattr(cancel, "reason", "CANCELLED") or "CANCELLED"
        word = "timed out" if reason == "TIMEOUT" else "was cancelled"
        raise PipelineError(f"backup {word}", code=reason)


def _as_pipeline_error(exc: BaseException, code: str, what: str) -> BaseException:
    if isinstance(exc, (AgentError, _Aborted)) or not isinstance(exc, Exception):
        return exc
    err = PipelineError(f"{what} failed: {type(exc).__name__}: {exc}", code=code)
    err.__cause__ = exc
    return err


def run_backup_pipeline(
    source: Any,
    writer: Any,
    *,
    level: int = 3,
    recipients: Sequence[Any] = (),
    on_stage: Optional[Callable[[str], None]] = None,
    cancel: Any = None,
    progress: Optional[Callable[[Progress], None]] = None,
    threads: int = -1,
    spool: Any = None,
    hash_dump: bool = False,
    chunk_size: int = CHUNK_SIZE,
) -> PipelineResult:
    """Stream ``source`` through zstd (and age, if ``recipients``) into ``writer``.

    ``source``: a :class:`~backupagent.pipeline.source.ProcessSource` or
    ``FileSource`` (anything with ``read(n)``, ``finish()``, ``close()``).
    ``writer``: a target's ``ObjectWriter``; only ``write`` is called.
    ``recipients``: age recipients (``age1...`` strings); empty stores the
    compressed dump unencrypted. ``threads``: zstd workers (-1: one per CPU).
    ``spool``: an optional file-like that also receives the compressed,
    unencrypted stream (a local copy for verifying on a host that holds no
    age identity); the caller owns it.
    Raises :class:`PipelineError` (or the target's/engine's AgentError) on any
    failure, after stopping every thread and killing the dump process.
    """
    recipients = list(recipients or [])
    encrypted = bool(recipients)
    if encrypted:
        # Only the recipients' syntax is checked before the dump starts; the
        # cryptography library loads in the upload thread, while pg_dump runs.
        from backupagent.crypto.recipient import parse_recipient

        try:
            parsed = [parse_recipient(r) if isinstance(r, str) else r for r in recipients]
        except AgentError as exc:
            raise PipelineError(f"encryption recipients: {exc}", code="CONFIG_INVALID") from None
    names = ["dumping", "compressing"] + (["encrypting"] if encrypted else []) + ["uploading"]
    stages = _Stages(names, on_stage)
    t0 = time.perf_counter()
    dump_q = _ByteQueue(DUMP_QUEUE_BYTES)
    stored_q = _ByteQueue(STORED_QUEUE_BYTES)
    errors: List[BaseException] = []
    err_lock = threading.Lock()
    timings = {"dump_end": 0.0}
    busy = {"compress": _Busy(), "encrypt": _Busy(), "upload": _Busy()}

    def fail(exc: BaseException) -> None:
        with err_lock:
            if not isinstance(exc, _Aborted):
                errors.append(exc)
        dump_q.abort()
        stored_q.abort()

    # -- stage objects -------------------------------------------------------
    handoff = _QueueSink(stored_q)
    compressed_counter = Tap(handoff, hash=False)
    zstd = ZstdCompressor(compressed_counter, level=level, threads=threads)
    dump_tap = Tap(_TimedSink(zstd, busy["compress"]), hash=hash_dump, close_sink=False)
    upload = _TimedSink(_WriterAdapter(writer), busy["upload"], lambda: stages.reach("uploading"))
    stored_tap = Tap(upload, hash=True, close_sink=False)

    # -- reader thread: source -> dump queue ---------------------------------
    def reader() -> None:
        try:
            while True:
                chunk = source.read(chunk_size)
                if not chunk:
                    break
                dump_q.put(chunk)
            timings["dump_end"] = time.perf_counter()
            dump_q.put(None)
        except BaseException as exc:
            fail(exc)

    # -- upload thread: compressed queue -> [age] -> writer -----------------
    def uploader() -> None:
        try:
            if encrypted:
                from backupagent.crypto.age import Encryptor
            head: Any = stored_tap
            encryptor: Any = None
            last_progress = time.perf_counter()
            while True:
                chunk = stored_q.get()
                _check_cancel(cancel)
                if chunk is None:
                    break
                if spool is not None:
                    try:
                        spool.write(chunk)
                    except OSError as exc:  # not an encryption or upload problem
                        raise PipelineError(
                            f"writing the local verification copy "
                            f"{getattr(spool, 'name', 'spool')} failed: {exc}; free space in the "
                            "state dir's spool or set verification.identityFile in agent.yaml",
                            code="IO_ERROR",
                        ) from None
                if encrypted and encryptor is None:
                    stages.reach("encrypting")
                    try:
                        encryptor = Encryptor(parsed, stored_tap)
                    except AgentError as exc:
                        raise PipelineError(
                            f"age encryption setup failed: {exc}", code=ENCRYPT_FAIL
                        ) from None
                    head = _TimedSink(encryptor, busy["encrypt"])
                head.write(chunk)
                if progress is not None:
                    now = time.perf_counter()
                    if now - last_progress >= PROGRESS_INTERVAL:
                        last_progress = now
                        _progress(now)
            if encrypted:
                if encryptor is None:  # cannot happen: zstd always emits a frame
                    encryptor = Encryptor(parsed, stored_tap)
                t = time.perf_counter()
                encryptor.close()
                busy["encrypt"].seconds += time.perf_counter() - t
            stored_tap.close()
        except BaseException as exc:
            fail(
                _as_pipeline_error(
                    exc, ENCRYPT_FAIL if encrypted else UPLOAD_FAIL, "encrypting/uploading"
                )
            )

    def _progress(now: float) -> None:
        try:
            progress(  # type: ignore[misc]
                Progress(
                    stage=stages.current,
                    dump_bytes=dump_tap.bytes,
                    compressed_bytes=compressed_counter.bytes,
                    stored_bytes=stored_tap.bytes,
                    elapsed_s=now - t0,
                )
            )
        except Exception as exc:
            log.warning("progress callback failed (ignored): %s", exc)

    stages.reach("dumping")
    if hasattr(source, "start"):
        source.start()
    threads_ = [
        threading.Thread(target=reader, name="pipeline-read", daemon=True),
        threading.Thread(target=uploader, name="pipeline-upload", daemon=True),
    ]
    for t in threads_:
        t.start()

    # -- calling thread: dump queue -> zstd -> compressed queue -------------
    try:
        first = True
        while True:
            chunk = dump_q.get()
            _check_cancel(cancel)
            if chunk is None:
                break
            if first:
                first = False
                stages.reach("compressing")
            dump_tap.write(chunk)
        threads_[0].join()
        # The dump's verdict before the stream is finished: a failed dump
        # must not even produce a complete-looking compressed frame.
        source.finish()
        stages.reach("compressing")
        t = time.perf_counter()
        dump_tap.close()
        zstd.close()
        busy["compress"].seconds += time.perf_counter() - t
    except BaseException as exc:
        fail(_as_pipeline_error(exc, COMPRESS_FAIL, "compressing"))
    finally:
        if errors:
            _stop_source(source)
        for t in threads_:
            t.join()
    if errors:
        _stop_source(source)
        raise errors[0]
    _check_cancel(cancel)
    stages.finish()
    end = time.perf_counter()
    if progress is not None:
        _progress(end)
    # Busy times: the compressor's minus its waits on the upload queue; the
    # encryptor's minus the writer calls it makes (it keeps the hashing).
    encrypt_s = max(0.0, busy["encrypt"].seconds - busy["upload"].seconds) if encrypted else 0.0
    durations = {
        "total": int((end - t0) * 1000),
        "dump": int(((timings["dump_end"] or end) - t0) * 1000),
        "compress": int(max(0.0, busy["compress"].seconds - handoff.wait_s) * 1000),
        "encrypt": int(encrypt_s * 1000),
        "upload": int(busy["upload"].seconds * 1000),
    }
    dump_tap.close()
    return PipelineResult(
        dump_size=dump_tap.bytes,
        compressed_size=compressed_counter.bytes,
        stored_size=stored_tap.bytes,
        sha256=stored_tap.sha256 or "",
        encrypted=encrypted,
        compression_level=level,
        dump_sha256=dump_tap.sha256 if hash_dump else None,
        durations_ms=durations,
    )


def _stop_source(source: Any) -> None:
    """Kill the dump (it may be blocked writing into a queue nobody drains)."""
    try:
        source.close()
    except Exception as exc:
        log.warning("stopping the dump process failed: %s", exc)
