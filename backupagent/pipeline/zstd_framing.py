"""Start and end markers around the agent's multi-frame zstd streams.

Why: the agent writes a backup as a series of independent zstd frames
(``stages.FRAME_SIZE``). Each frame is checked on its own, so a stream cut
exactly between two frames would decode "cleanly" and short. Two zstd
*skippable* frames close that gap: one first, saying "an end marker
follows", and one last, carrying the content's length and the number of
data frames. Skippable frames are part of the zstd format; ``zstd -d`` and
every other decoder pass over them, so the file stays plain zstd. The
restore stream (``restore.ZstdFrameTracker``) refuses a marked stream that
ends without its end marker or whose totals do not match; older backups,
written as one frame without markers, are checked as before.
"""

from __future__ import annotations

from typing import Optional, Tuple

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
MARKER_MAGIC = (0x184D2A5E).to_bytes(4, "little")  # one of the 16 skippable magics
START_PAYLOAD = b"BAF1"
END_TAG = b"BAE1"
END_PAYLOAD_SIZE = len(END_TAG) + 16
MAX_MARKER_PAYLOAD = 64


def _skippable(payload: bytes) -> bytes:
    return MARKER_MAGIC + len(payload).to_bytes(4, "little") + payload


START_MARKER = _skippable(START_PAYLOAD)


def end_marker(content_bytes: int, frames: int) -> bytes:
    """The last bytes of a marked stream: its plaintext length and data frame count."""
    return _skippable(END_TAG + content_bytes.to_bytes(8, "little") + frames.to_bytes(8, "little"))


def parse_end(payload: bytes) -> Optional[Tuple[int, int]]:
    """(content bytes, data frames) from an end marker's payload, else None."""
    if len(payload) != END_PAYLOAD_SIZE or not payload.startswith(END_TAG):
        return None
    body = payload[len(END_TAG) :]
    return int.from_bytes(body[:8], "little"), int.from_bytes(body[8:], "little")


def is_skippable_magic(head: bytes) -> bool:
    return len(head) >= 4 and head[1:4] == b"\x2a\x4d\x18" and 0x50 <= head[0] <= 0x5F


def looks_zstd(head: bytes) -> bool:
    """True when ``head`` (at least 4 bytes) starts a zstd stream: a frame or a skippable one."""
    return head[:4] == ZSTD_MAGIC or is_skippable_magic(head)
