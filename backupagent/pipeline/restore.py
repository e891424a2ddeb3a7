"""The restore stream: stored object -> age decrypt -> zstd decompress -> restore tool.

Every layer checks what it can, because a restore that "succeeds" on a
damaged backup is worse than one that fails:

- SHA-256 of the stored bytes, counted as they flow, compared with the
  manifest's at the end of the stream;
- age authenticates every 64 KiB chunk and the end of the stream;
- zstd verifies each frame's content checksum, and a frame tracker checks
  that the stream ends on a frame boundary (``zstandard``'s reader returns a
  truncated frame's output silently, without the checksum check).

The end-of-stream checks run when ``read`` reaches the end, so a consumer
that reads until ``b""`` gets an exception instead of a clean end; the
restore pipeline therefore verifies *before* the restore tool sees the end of
its input, and kills it on a mismatch, so it can never report success.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple

import zstandard

from backupagent.errors import AgentError
from backupagent.pipeline.errors import (
    CHECKSUM_MISMATCH,
    DECOMPRESS_FAIL,
    RESTORE_FAIL,
    PipelineError,
)
from backupagent.pipeline.proc import (
    StderrTail,
    describe_exit,
    kill_group,
    secret_env_values,
    spawn,
    tail_text,
    watch_process,
)
from backupagent.pipeline.queues import Aborted, ByteQueue
from backupagent.pipeline.zstd_framing import (
    MARKER_MAGIC,
    MAX_MARKER_PAYLOAD,
    START_PAYLOAD,
    ZSTD_MAGIC,
    is_skippable_magic,
    looks_zstd,
    parse_end,
)

log = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20
PROGRESS_INTERVAL = 0.5  # seconds between progress callbacks
AGE_MAGIC = b"age-encryption.org/v1"
AGE_ARMOR = b"-----BEGIN AGE ENCRYPTED FILE-----"
_QUEUE_BYTES = 8 * CHUNK_SIZE


class _HashingReader:
    """Counts and hashes every byte read from the stored object."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self._hash = hashlib.sha256()
        self.bytes = 0
        self.eof = False

    def read(self, n: int = -1) -> bytes:
        if self.eof:
            return b""
        data = self._raw.read(n if n is not None and n >= 0 else CHUNK_SIZE)
        if not data:
            self.eof = True
            return b""
        self.bytes += len(data)
        self._hash.update(data)
        return bytes(data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


class _Peekable:
    """Lets format detection look at the first bytes without consuming them."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self._head = b""

    def peek(self, n: int) -> bytes:
        while len(self._head) < n:
            data = self._raw.read(n - len(self._head))
            if not data:
                break
            self._head += data
        return self._head[:n]

    def read(self, n: int = -1) -> bytes:
        if self._head:
            if n is None or n < 0 or n >= len(self._head):
                out, self._head = self._head, b""
                return out
            out, self._head = self._head[:n], self._head[n:]
            return out
        return self._raw.read(n)


class ZstdFrameTracker:
    """Follows zstd frame and block headers in a byte stream, without decoding.

    Only headers are parsed; block contents are skipped by size, so this
    costs a few Python steps per 128 KiB block. ``complete`` tells whether
    the bytes so far end exactly on a frame boundary after at least one frame
    and, for a stream that opened with the agent's start marker, with its
    end marker last and naming as many data frames as were seen
    (``zstd_framing``; ``end`` then holds the plaintext length to compare).
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._skip = 0
        self._state = "magic"
        self._need = 4
        self._checksum = False
        self._ours = False
        self.frames = 0
        self.marked = False
        self.end: Optional[Tuple[int, int]] = None
        self._after_end = False

    @property
    def complete(self) -> bool:
        if not (self._state == "magic" and not self._buf and not self._skip and self.frames):
            return False
        if not self.marked:
            return True
        return self.end is not None and not self._after_end and self.end[1] == self.frames

    def why_incomplete(self) -> str:
        if self._state != "magic" or self._buf or self._skip:
            return "it ends inside a frame"
        if not self.frames:
            return "it holds no complete zstd frame"
        if self.end is None:
            return f"it ends after {self.frames} frames without the end marker the agent writes"
        if self._after_end:
            return "frames follow its end marker"
        return f"its end marker counts {self.end[1]} frames, the stream holds {self.frames}"

    def feed(self, data: Any) -> None:
        view = memoryview(data).cast("B")
        pos, n = 0, len(view)
        while pos < n:
            if self._skip:
                k = min(self._skip, n - pos)
                self._skip -= k
                pos += k
                continue
            take = min(self._need - len(self._buf), n - pos)
            self._buf += view[pos : pos + take]
            pos += take
            if len(self._buf) == self._need:
                head = bytes(self._buf)
                self._buf.clear()
                self._advance(head)

    def _advance(self, head: bytes) -> None:
        state = self._state
        if state == "magic":
            if head == ZSTD_MAGIC:
                self._after_end = self._after_end or self.end is not None
                self._state, self._need = "descriptor", 1
            elif is_skippable_magic(head):
                self._ours = head == MARKER_MAGIC
                self._state, self._need = "skippable", 4
            else:
                raise PipelineError(
                    "not a zstd stream: unknown frame magic " + head.hex(), code=DECOMPRESS_FAIL
                )
        elif state == "skippable":
            size = int.from_bytes(head, "little")
            if self._ours and 0 < size <= MAX_MARKER_PAYLOAD:
                self._state, self._need = "marker", size
            else:
                self._skip = size
                self._state, self._need = "magic", 4
        elif state == "marker":
            if head == START_PAYLOAD and not self.frames and self.end is None:
                self.marked = True
            elif parse_end(head) is not None:
                self._after_end = self._after_end or self.end is not None
                self.end = parse_end(head)
            self._state, self._need = "magic", 4
        elif state == "descriptor":
            fhd = head[0]
            fcs_flag, single, did_flag = fhd >> 6, (fhd >> 5) & 1, fhd & 3
            self._checksum = bool((fhd >> 2) & 1)
            fcs = (1 if single else 0) if fcs_flag == 0 else (2, 4, 8)[fcs_flag - 1]
            rest = (0 if single else 1) + (0, 1, 2, 4)[did_flag] + fcs
            self.frames += 1
            if rest:
                self._state, self._need = "header", rest
            else:
                self._state, self._need = "block", 3
        elif state == "header":
            self._state, self._need = "block", 3
        elif state == "block":
            value = int.from_bytes(head, "little")
            last, btype, size = value & 1, (value >> 1) & 3, value >> 3
            if btype == 3:
                raise PipelineError(
                    "corrupt zstd stream: reserved block type", code=DECOMPRESS_FAIL
                )
            self._skip = 1 if btype == 1 else size
            if not last:
                self._state, self._need = "block", 3
            elif self._checksum:
                self._state, self._need = "checksum", 4
            else:
                self._state, self._need = "magic", 4
        elif state == "checksum":
            self._state, self._need = "magic", 4


class _TrackingReader:
    """Feeds everything read into a :class:`ZstdFrameTracker`."""

    def __init__(self, raw: Any, tracker: ZstdFrameTracker) -> None:
        self._raw = raw
        self._tracker = tracker
        self.eof = False

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        if data:
            self._tracker.feed(data)
        else:
            self.eof = True
        return data


class RestoreStream:
    """A readable over the plaintext dump of a stored backup.

    ``read(n)`` returns up to ``n`` plaintext bytes and ``b""`` at the end,
    *after* every end-of-stream check passed; a failed check raises
    :class:`PipelineError` (CHECKSUM_MISMATCH, DECOMPRESS_FAIL) or the age
    error (DECRYPT_FAIL, KEY_INVALID) instead. ``stored_size``/``sha256``
    describe the stored bytes, ``dump_size`` the plaintext.
    """

    def __init__(
        self,
        reader: Any,
        identities: Sequence[Any] = (),
        *,
        encrypted: bool,
        compressed: Optional[bool],
        expected_sha256: Optional[str] = None,
    ) -> None:
        self._hashing = _HashingReader(reader)
        self.encrypted = encrypted
        self.expected_sha256 = expected_sha256.lower() if expected_sha256 else None
        self.dump_size = 0
        self.sha256: Optional[str] = None
        self._done = False
        self._tracker: Optional[ZstdFrameTracker] = None
        src: Any = self._hashing
        if encrypted:
            from backupagent.crypto.age import open_decrypting_reader

            src = open_decrypting_reader(src, list(identities))
        if compressed is None:  # look at the (decrypted) plaintext's first bytes
            src = _Peekable(src)
            compressed = looks_zstd(src.peek(4))
        self.compressed = compressed
        if compressed:
            self._tracker = ZstdFrameTracker()
            self._tracking = _TrackingReader(src, self._tracker)
            dctx = zstandard.ZstdDecompressor()
            src = dctx.stream_reader(
                self._tracking, read_size=256 * 1024, read_across_frames=True, closefd=False
            )
        self._top = src

    @property
    def stored_size(self) -> int:
        return self._hashing.bytes

    def read(self, n: int = -1) -> bytes:
        if self._done:
            return b""
        size = CHUNK_SIZE if n is None or n < 0 else n
        try:
            data = self._top.read(size)
        except zstandard.ZstdError as exc:
            raise PipelineError(
                f"the backup does not decompress: {exc}; it is corrupt or not a zstd stream",
                code=DECOMPRESS_FAIL,
            ) from None
        if data:
            self.dump_size += len(data)
            return data
        self._finish()
        return b""

    def _finish(self) -> None:
        self._done = True
        if self._tracker is not None:
            # The zstd reader stops at the end of its input; anything left
            # over would be bytes it never decoded.
            rest = self._tracking.read(CHUNK_SIZE)
            if rest:
                raise PipelineError(
                    "the backup has data after the end of its last zstd frame",
                    code=DECOMPRESS_FAIL,
                )
            if not self._tracker.complete:
                raise PipelineError(
                    f"the backup's zstd stream is truncated: {self._tracker.why_incomplete()} "
                    f"(after {self._hashing.bytes} stored bytes)",
                    code=DECOMPRESS_FAIL,
                )
            end = self._tracker.end
            if self._tracker.marked and end is not None and end[0] != self.dump_size:
                raise PipelineError(
                    f"the backup decompresses to {self.dump_size} bytes, but its end marker "
                    f"says {end[0]}: it is corrupt",
                    code=DECOMPRESS_FAIL,
                )
        # Whatever the layers above did not need still counts for the digest.
        while self._hashing.read(CHUNK_SIZE):
            pass
        self.sha256 = self._hashing.hexdigest()
        if self.expected_sha256 and self.sha256 != self.expected_sha256:
            raise PipelineError(
                f"SHA-256 of the stored backup is {self.sha256}, but its manifest says "
                f"{self.expected_sha256}: the object is corrupt or was replaced; do not "
                "trust this restore",
                code=CHECKSUM_MISMATCH,
            )

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        close = getattr(self._top, "close", None)
        if close is not None and self._top is not self._hashing:
            close()


def detect_format(reader: Any) -> tuple:
    """(reader, encrypted, compressed) from the object's first bytes.

    For an encrypted object the compression can only be seen after
    decryption, so the third item is then None (the stream detects it).
    """
    peek = _Peekable(reader)
    head = peek.peek(len(AGE_ARMOR))
    if head.startswith(AGE_MAGIC) or head.startswith(AGE_ARMOR):
        return peek, True, None
    return peek, False, looks_zstd(head)


def open_restore_stream(
    reader: Any,
    identities: Sequence[Any] = (),
    encrypted: Optional[bool] = None,
    compressed: Optional[bool] = None,
    *,
    expected_sha256: Optional[str] = None,
) -> RestoreStream:
    """A readable yielding the plaintext dump of a stored backup, checked on the way.

    ``encrypted``/``compressed`` come from the manifest; ``None`` detects
    them from the first bytes (age header, zstd magic). With
    ``expected_sha256`` the stored bytes must match it at the end.
    """
    if encrypted is None:
        reader, encrypted, detected = detect_format(reader)
        if compressed is None:
            compressed = detected
    return RestoreStream(
        reader,
        identities,
        encrypted=encrypted,
        compressed=compressed,
        expected_sha256=expected_sha256,
    )


@dataclass
class RestoreResult:
    """What a restore moved and how long it took; ``sha256`` of the stored bytes."""

    stored_size: int
    dump_size: int
    sha256: str
    encrypted: bool
    compressed: bool
    duration_ms: int
    returncode: int


def run_restore_pipeline(
    stored_reader: Any,
    argv: List[str],
    env: Optional[dict],
    *,
    identities: Sequence[Any] = (),
    expected_sha256: Optional[str] = None,
    cancel: Any = None,
    encrypted: Optional[bool] = None,
    compressed: Optional[bool] = None,
    cwd: Optional[str] = None,
    progress: Optional[Callable[[int, int], None]] = None,
) -> RestoreResult:
    """Stream a stored backup into a native restore process's stdin; check everything.

    ``progress(stored_bytes_read, dump_bytes_fed)`` is called about twice a
    second and once at the end, from the calling thread; a failing callback
    is logged and ignored (a display must never break a restore).

    A thread reads, decrypts and decompresses (bounded queue) while the
    calling thread feeds the restore tool. The stream's end-of-input checks
    (SHA-256, age, zstd framing) pass *before* the tool's stdin is closed; on
    any failure the tool is killed, so it never exits 0 on bad input. The
    tool's non-zero exit raises RESTORE_FAIL with its (redacted) stderr.
    """
    start = time.perf_counter()
    secrets = secret_env_values(env)
    stream = open_restore_stream(
        stored_reader, identities, encrypted, compressed, expected_sha256=expected_sha256
    )
    name = argv[0].rsplit("/", 1)[-1] if argv else "restore"
    proc = spawn(
        argv,
        env,
        cwd=cwd,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        what=f"restore ({name})",
    )
    assert proc.stdin is not None and proc.stderr is not None
    stderr = StderrTail(proc.stderr)
    stderr.start()
    watcher = watch_process(proc, cancel) if cancel is not None else None
    if watcher is not None:
        watcher.start()
    queue = ByteQueue(_QUEUE_BYTES)
    errors: List[BaseException] = []

    def producer() -> None:
        try:
            while True:
                if cancel is not None and cancel.cancelled:
                    raise _cancelled(cancel)
                chunk = stream.read(CHUNK_SIZE)
                if not chunk:
                    break
                queue.put(chunk)
            queue.put(None)
        except Aborted:
            pass
        except BaseException as exc:
            errors.append(exc)
            queue.abort()

    thread = threading.Thread(target=producer, name="restore-read", daemon=True)
    thread.start()
    broken = False
    fed = 0
    shown = time.perf_counter()

    def report() -> None:
        try:
            progress(stream.stored_size, fed)  # type: ignore[misc]
        except Exception as exc:
            log.warning("progress callback failed (ignored): %s", exc)

    try:
        while True:
            try:
                chunk = queue.get()
            except Aborted:
                break
            if chunk is None:
                break
            try:
                proc.stdin.write(chunk)
            except BrokenPipeError:
                broken = True  # the tool died; its exit status says why
                break
            fed += len(chunk)
            if progress is not None and time.perf_counter() - shown >= PROGRESS_INTERVAL:
                shown = time.perf_counter()
                report()
    except BaseException:
        queue.abort()
        kill_group(proc)
        raise
    finally:
        if errors or broken:
            queue.abort()
        thread.join()
    if errors or (cancel is not None and cancel.cancelled):
        kill_group(proc)  # before closing stdin: it must not see a clean end
    try:
        proc.stdin.close()
    except BrokenPipeError:
        broken = True
    rc = proc.wait()
    if watcher is not None:
        watcher.stop()
    if cancel is not None and cancel.cancelled:
        raise _cancelled(cancel)
    if errors:
        raise errors[0]
    if progress is not None and rc == 0 and not broken:
        report()
    if rc != 0 or broken:
        tail = tail_text(stderr.tail(), secrets)
        raise PipelineError(
            f"{describe_exit(name, rc)} while restoring "
            f"(after {stream.dump_size} bytes of dump)" + (f"; stderr: {tail}" if tail else ""),
            code=RESTORE_FAIL,
            returncode=rc,
            stderr_tail=tail,
        )
    return RestoreResult(
        stored_size=stream.stored_size,
        dump_size=stream.dump_size,
        sha256=stream.sha256 or "",
        encrypted=stream.encrypted,
        compressed=stream.compressed,
        duration_ms=int((time.perf_counter() - start) * 1000),
        returncode=rc,
    )


def _cancelled(cancel: Any) -> AgentError:
    reason = getattr(cancel, "reason", "CANCELLED") or "CANCELLED"
    word = "timed out" if reason == "TIMEOUT" else "was cancelled"
    return PipelineError(f"restore {word}; the restore process was killed", code=reason)
