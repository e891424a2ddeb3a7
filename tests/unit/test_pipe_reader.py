"""PipeReader: few large reads from a pipe, and never a late end or a stall.

Real kernel pipes (``os.pipe``), a writer thread playing the dump tool.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
import time
from typing import Iterator, List, Tuple

import pytest

from backupagent.pipeline.pipe_reader import PipeReader

F_SETPIPE_SZ = 1031


@pytest.fixture
def pipe() -> Iterator[Tuple[int, int]]:
    """A pipe; the test hands the write end to a writer (which closes it) or
    closes it itself, so no fd number is ever closed twice."""
    r, w = os.pipe()
    yield r, w
    os.close(r)


def _drain(reader: PipeReader, n: int = 1 << 20) -> Tuple[bytes, List[int]]:
    out, sizes = bytearray(), []
    while True:
        data = reader.read(n)
        if not data:
            return bytes(out), sizes
        sizes.append(len(data))
        out += data


def _writer(w: int, pieces: List[bytes], pause: float = 0.0) -> threading.Thread:
    def run() -> None:
        for piece in pieces:
            view = memoryview(piece)
            while view:
                view = view[os.write(w, view) :]
            if pause:
                time.sleep(pause)
        os.close(w)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_small_writes_arrive_in_few_large_reads(pipe) -> None:
    r, w = pipe
    fcntl.fcntl(w, F_SETPIPE_SZ, 1 << 20)
    reader = PipeReader.for_fd(r)
    assert reader is not None and reader.want >= 256 << 10
    pieces = [os.urandom(64) * 64 for _ in range(4000)]  # 4000 writes of 4 KiB
    t = _writer(w, pieces)
    data, sizes = _drain(reader)
    t.join(timeout=10)
    expected = b"".join(pieces)
    assert hashlib.sha256(data).digest() == hashlib.sha256(expected).digest()
    # A blocked reader would wake for (nearly) every 4 KiB write.
    assert len(sizes) < len(pieces) / 20, len(sizes)
    assert max(sizes) >= reader.want


def test_the_end_of_output_is_not_held_back(pipe) -> None:
    r, w = pipe
    reader = PipeReader.for_fd(r)
    assert reader is not None
    _writer(w, [b"last words"])
    t0 = time.monotonic()
    assert reader.read(1 << 20) == b"last words"
    assert reader.read(1 << 20) == b""
    assert time.monotonic() - t0 < 1.0


def test_a_stalled_writer_is_read_without_waiting_for_more(pipe) -> None:
    r, w = pipe
    reader = PipeReader.for_fd(r)
    assert reader is not None
    os.write(w, b"x" * 100)  # and then nothing, with the pipe still open
    t0 = time.monotonic()
    try:
        assert reader.read(1 << 20) == b"x" * 100
        assert time.monotonic() - t0 < 1.0
    finally:
        os.close(w)


def test_a_slow_writer_still_gets_every_byte_in_order(pipe) -> None:
    r, w = pipe
    reader = PipeReader.for_fd(r)
    assert reader is not None
    pieces = [bytes([i]) * 1000 for i in range(60)]
    t = _writer(w, pieces, pause=0.003)
    data, _ = _drain(reader)
    t.join(timeout=10)
    assert data == b"".join(pieces)


def test_a_small_pipe_never_deadlocks(pipe) -> None:
    """The wait target follows the pipe's real capacity: a writer blocked on a
    full 4 KiB pipe is read, not waited for forever."""
    r, w = pipe
    fcntl.fcntl(r, F_SETPIPE_SZ, 4096)
    reader = PipeReader.for_fd(r)
    assert reader is not None and reader.want <= 4096
    pieces = [os.urandom(65536) for _ in range(8)]
    t = _writer(w, pieces)
    data, _ = _drain(reader, 1 << 16)
    t.join(timeout=10)
    assert data == b"".join(pieces)


def test_not_a_pipe_means_no_reader(tmp_path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"data")
    with open(path, "rb") as f:
        assert PipeReader.for_fd(f.fileno()) is None


def test_an_unused_write_end_is_closed_by_the_test(pipe) -> None:
    r, w = pipe
    os.close(w)
    reader = PipeReader.for_fd(r)
    assert reader is not None and reader.read(10) == b""


def test_a_slow_steady_writer_costs_few_wake_ups(pipe) -> None:
    """~200 KiB/s in 4 KiB writes for ~1 s: the reader paces its looks by the
    fill rate instead of polling every millisecond."""
    r, w = pipe
    fcntl.fcntl(w, F_SETPIPE_SZ, 1 << 20)

    class Counting(PipeReader):
        looks = 0

        def available(self) -> int:
            Counting.looks += 1
            return super().available()

    reader = Counting(r, fcntl.fcntl(r, 1032))
    pieces = [bytes([i % 251]) * 4096 for i in range(50)]
    t = _writer(w, pieces, pause=0.02)
    data, _ = _drain(reader)
    t.join(timeout=10)
    assert data == b"".join(pieces)
    assert Counting.looks < 150, Counting.looks  # fixed 1 ms naps: ~1000
