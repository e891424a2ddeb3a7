"""The storage-target interface every backend implements.

A target is a dumb byte store rooted at one place (a directory, or an S3
bucket plus prefix). Keys are relative to that root and use ``/`` separators;
the same key means the same object on every backend, so the one contract test
suite can run against all of them. The writer is the only way to create an
object, and its ``commit`` is atomic: a reader sees the whole object or none
of it, which is what lets a killed dump never leave a "backup" behind.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from types import TracebackType
from typing import Iterator, NamedTuple, Optional, Protocol, Type, Union

from backupagent.errors import AgentError

Bytes = Union[bytes, bytearray, memoryview]

log = logging.getLogger(__name__)

MAX_KEY_BYTES = 1024  # S3's limit; local targets keep it too so keys stay portable


class TargetError(AgentError):
    """Storing, reading, listing or deleting an object failed.

    The message names the target URL and the cause, never a credential:
    backends build it from redacted text only.
    """

    code = "UPLOAD_FAIL"


class ObjectNotFound(TargetError):
    """The key does not exist (restore asked for a backup that is not there)."""


class ObjectInfo(NamedTuple):
    key: str  # relative to the target's root, as passed to open_writer
    size: int
    modified: dt.datetime  # timezone-aware UTC


class Reader(Protocol):
    """A streaming reader: the object is never loaded into memory whole."""

    def read(self, n: int = -1) -> bytes: ...

    def close(self) -> None: ...


class ObjectWriter(Protocol):
    bytes_written: int

    def write(self, data: Bytes) -> None: ...

    def commit(self) -> str: ...

    def abort(self) -> None: ...

    def __enter__(self) -> ObjectWriter: ...

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None: ...


class Target(Protocol):
    def open_writer(self, key: str) -> ObjectWriter: ...

    def open_reader(self, key: str) -> Reader: ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]: ...

    def delete(self, key: str) -> None: ...

    def exists(self, key: str) -> bool: ...

    def url_for(self, key: str) -> str: ...


def validate_key(key: str) -> str:
    """Refuse a key that could name something outside the target's root.

    Keys built by ``keys.object_key`` always pass; this guards keys that come
    from anywhere else (a CLI argument, a listing of a foreign bucket). Dot-led
    segments are refused as well, which reserves them for a backend's own
    temporary files, so those can never collide with, or be listed as, objects.
    """
    if not isinstance(key, str) or not key:
        raise TargetError(f"object key {key!r} is empty: pass a relative key like 'host/db/x.dump'")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise TargetError(f"object key is longer than {MAX_KEY_BYTES} bytes: use a shorter prefix")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key) or "\\" in key:
        raise TargetError(
            f"object key {key!r} contains a control character or backslash: "
            "build keys with backupagent.targets.keys.object_key"
        )
    for segment in key.split("/"):
        if segment == "" or segment.startswith("."):
            raise TargetError(
                f"object key {key!r} has an empty, '.', '..' or dot-led segment: "
                "keys are relative, '/'-separated names that stay inside the target"
            )
    return key


class WriterBase:
    """State machine shared by the backends' writers.

    open -> committed, or open -> aborted; a failed commit aborts. ``abort``
    is idempotent and also a no-op after a successful commit, so cleanup code
    can call it unconditionally. Used as a context manager it aborts on any
    exception (including KeyboardInterrupt and cancellation) unless the body
    already committed.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.bytes_written = 0
        self._state = "open"
        self._lock = threading.Lock()
        self.abort_failed = False

    # backend hooks -------------------------------------------------------
    def _write(self, data: memoryview) -> None:
        raise NotImplementedError

    def _commit(self) -> None:
        raise NotImplementedError

    def _abort(self) -> None:
        raise NotImplementedError

    # public API ----------------------------------------------------------
    @property
    def committed(self) -> bool:
        return self._state == "committed"

    @property
    def closed(self) -> bool:
        return self._state != "open"

    def write(self, data: Bytes) -> None:
        if self._state != "open":
            raise TargetError(f"write to {self.url} after it was {self._state}")
        view = memoryview(data).cast("B")
        if not len(view):
            return
        try:
            self._write(view)
        except BaseException:
            self.abort()
            raise
        self.bytes_written += len(view)

    def commit(self) -> str:
        """Make the object visible under its key, whole; returns its URL."""
        if self._state != "open":
            raise TargetError(f"commit of {self.url} after it was {self._state}")
        try:
            self._commit()
        except BaseException:
            self.abort()
            raise
        self._state = "committed"
        return self.url

    def abort(self) -> None:
        """Discard everything written; safe to call any number of times.

        Never raises: it runs while another exception is propagating, and
        must not replace it. A cleanup that fails is logged; the crash-recovery
        helpers (``cleanup_partials``, ``abort_incomplete_uploads``) sweep it.
        """
        with self._lock:
            if self._state in ("committed", "aborted"):
                return
            self._state = "aborted"
        try:
            self._abort()
        except Exception as exc:
            self.abort_failed = True  # the job keeps its journal entry for recovery
            log.warning("cleanup of aborted upload %s failed: %s", self.url, exc)

    def __enter__(self) -> WriterBase:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if exc_type is not None or self._state == "open":
            # leaving the block without commit is an abandoned upload, too
            self.abort()
