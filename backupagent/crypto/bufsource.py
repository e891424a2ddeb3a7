"""A read-ahead wrapper over any ``.read(n)`` object (pipe, socket file, S3 body).

The header is line-oriented and the payload is chunked; both need to look at
bytes before consuming them (armor detection, "is this the last chunk?"),
which plain pipes cannot do. Buffered bytes are handed out first, then reads
go straight to the underlying object so the bulk payload is not copied twice.
"""

from __future__ import annotations

from typing import Any

_READ_SIZE = 64 * 1024


class LineTooLong(ValueError):
    """A line exceeded the caller's limit: the input is not what it claims to be."""


class BufferedSource:
    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self._buf = bytearray()
        self._eof = False

    def _fill(self, n: int) -> None:
        while len(self._buf) < n and not self._eof:
            data = self._raw.read(max(n - len(self._buf), _READ_SIZE))
            if not data:
                self._eof = True
            else:
                self._buf += data

    def peek(self, n: int) -> bytes:
        """Up to ``n`` bytes without consuming them (fewer only at end of input)."""
        self._fill(n)
        return bytes(self._buf[:n])

    def readline(self, limit: int) -> bytes:
        """One line including its LF, or what is left at end of input ("" at EOF).

        Raises LineTooLong past ``limit`` bytes so hostile input cannot make
        us buffer without bound while looking for a newline.
        """
        start = 0
        while True:
            idx = self._buf.find(b"\n", start)
            if idx >= 0:
                if idx + 1 > limit:
                    raise LineTooLong(f"line longer than {limit} bytes")
                line = bytes(self._buf[: idx + 1])
                del self._buf[: idx + 1]
                return line
            if len(self._buf) > limit:
                raise LineTooLong(f"line longer than {limit} bytes")
            if self._eof:
                line = bytes(self._buf)
                self._buf.clear()
                return line
            start = len(self._buf)
            self._fill(len(self._buf) + 1)

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes (fewer at EOF or when the source gives a short read)."""
        if self._buf:
            if len(self._buf) <= n:
                out = bytes(self._buf)
                self._buf.clear()
            else:
                out = bytes(self._buf[:n])
                del self._buf[:n]
            return out
        if self._eof:
            return b""
        data = self._raw.read(n)
        if not data:
            self._eof = True
            return b""
        return bytes(data)
