"""Stages of the backup stream with in-memory sinks."""

from __future__ import annotations

import hashlib
import io
import os

import pytest
import zstandard

from backupagent.pipeline.errors import PipelineError
from backupagent.pipeline.restore import ZstdFrameTracker
from backupagent.pipeline.stages import (
    FRAME_SIZE,
    Tap,
    ZstdCompressor,
    default_threads,
    host_cpus,
)
from backupagent.pipeline.zstd_framing import end_marker, is_skippable_magic, looks_zstd


class Sink:
    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.closed = 0

    def write(self, data: bytes) -> None:
        self.buf.write(bytes(data))

    def close(self) -> None:
        self.closed += 1


def _unzstd(data: bytes) -> bytes:
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True)
    return reader.read()


def _frames(data: bytes) -> int:
    """Data frames in a zstd stream (each checked to carry a content checksum),
    after checking that the stream is whole by the restore's own tracker."""
    tracker = ZstdFrameTracker()
    tracker.feed(data)
    assert tracker.complete, tracker.why_incomplete()
    n = 0
    while data:
        if is_skippable_magic(data[:4]):
            data = data[8 + int.from_bytes(data[4:8], "little") :]
            continue
        assert zstandard.get_frame_parameters(data).has_checksum
        obj = zstandard.ZstdDecompressor().decompressobj()
        obj.decompress(data)  # stops at the end of the first frame
        assert obj.eof
        data = obj.unused_data
        n += 1
    assert n == tracker.frames
    return n


def _data(n: int) -> bytes:
    # semi-compressible: text with random hex
    parts = []
    total = i = 0
    while total < n:
        line = f"row {i}\t{os.urandom(6).hex()}\tsome constant text\n".encode()
        parts.append(line)
        total += len(line)
        i += 1
    return b"".join(parts)[:n]


def test_tap_counts_hashes_and_passes_through() -> None:
    sink = Sink()
    tap = Tap(sink)
    tap.write(b"hello ")
    tap.write(b"")
    tap.write(memoryview(b"world"))
    tap.close()
    assert sink.buf.getvalue() == b"hello world"
    assert tap.bytes == 11
    assert tap.sha256 == hashlib.sha256(b"hello world").hexdigest()
    assert sink.closed == 1
    tap.close()  # idempotent
    assert sink.closed == 1


def test_tap_close_sink_false_leaves_sink_open_and_hash_optional() -> None:
    sink = Sink()
    tap = Tap(sink, hash=False, close_sink=False)
    tap.write(b"abc")
    tap.close()
    assert sink.closed == 0
    assert tap.sha256 is None
    assert tap.bytes == 3


@pytest.mark.parametrize("threads", [0, 1, 2])
def test_zstd_round_trip_with_checksum(threads: int) -> None:
    data = _data(5 * 1024 * 1024 + 123)
    sink = Sink()
    z = ZstdCompressor(sink, level=3, threads=threads)
    for i in range(0, len(data), 1 << 20):
        z.write(data[i : i + (1 << 20)])
    z.close()
    out = sink.buf.getvalue()
    assert sink.closed == 1
    assert z.bytes_in == len(data)
    assert z.bytes_out == len(out) < len(data)
    # One stream from worker threads; FRAME_SIZE frames in the calling thread.
    assert _frames(out) == (1 if threads > 1 else -(-len(data) // FRAME_SIZE))
    assert _unzstd(out) == data


@pytest.mark.parametrize(
    "size", [FRAME_SIZE - 1, FRAME_SIZE, FRAME_SIZE + 1, 2 * FRAME_SIZE, 9 * FRAME_SIZE + 17]
)
def test_frames_are_cut_at_frame_size_whatever_the_writes(size: int) -> None:
    data = _data(size)
    sink = Sink()
    z = ZstdCompressor(sink, level=1, threads=0)
    i = 0
    # Writes that straddle frames, fill one exactly, or hold several.
    for step in (1, 7, FRAME_SIZE - 8, FRAME_SIZE, 3 * FRAME_SIZE + 5, 1 << 20):
        z.write(memoryview(data)[i : i + step])
        i += step
    z.write(data[i:])
    z.close()
    out = sink.buf.getvalue()
    assert _frames(out) == -(-size // FRAME_SIZE)  # no empty frame at an exact multiple
    assert _unzstd(out) == data
    assert z.bytes_in == size and z.bytes_out == len(out)


def test_one_write_of_many_frames_goes_downstream_as_one_piece() -> None:
    """The upload thread is woken once per input chunk, not once per frame."""
    data = _data(8 * FRAME_SIZE + 100)
    sink = Sink()
    writes: list = []
    sink_write = sink.write
    sink.write = lambda d: (writes.append(len(d)), sink_write(d))  # type: ignore[method-assign]
    z = ZstdCompressor(sink, level=3, threads=0)
    z.write(data[:100])  # a tail only: nothing to send yet
    assert writes == []
    z.write(data[100:])  # tops up the tail, then 7 whole frames, 100 bytes left
    assert len(writes) == 1
    z.close()  # the last frame and the end marker together
    assert len(writes) == 2
    out = sink.buf.getvalue()
    assert _frames(out) == 9 and _unzstd(out) == data


def test_levels_above_three_stay_one_frame_in_one_thread() -> None:
    data = _data(FRAME_SIZE + 5000)
    sink = Sink()
    z = ZstdCompressor(sink, level=4, threads=0)
    z.write(data)
    z.close()
    out = sink.buf.getvalue()
    assert _frames(out) == 1 and _unzstd(out) == data


@pytest.mark.parametrize("level", [1, 3])
def test_fast_levels_compress_in_one_thread(level: int) -> None:
    """One thread outruns any single dump at these levels; more would only
    take CPU from the database serving the dump."""
    assert default_threads(level) == 1
    assert ZstdCompressor(Sink(), level=level).threads == 1


@pytest.mark.parametrize("level", [4, 9, 19])
def test_slow_levels_use_half_the_host(level: int) -> None:
    assert default_threads(level) == max(1, host_cpus() // 2)
    assert ZstdCompressor(Sink(), level=level).threads == default_threads(level)


def test_zstd_empty_input_is_a_valid_empty_frame() -> None:
    sink = Sink()
    z = ZstdCompressor(sink, threads=0)
    z.close()
    out = sink.buf.getvalue()
    assert looks_zstd(out[:4])
    assert _frames(out) == 1 and _unzstd(out) == b""


def test_zstd_corruption_is_detected_by_the_checksum() -> None:
    data = _data(200_000)
    sink = Sink()
    z = ZstdCompressor(sink, threads=0)
    z.write(data)
    z.close()
    out = bytearray(sink.buf.getvalue())
    out[-len(end_marker(0, 0)) - 2] ^= 0xFF  # inside the last frame's content checksum
    with pytest.raises(zstandard.ZstdError):
        _unzstd(bytes(out))


def test_zstd_write_after_close_and_bad_level() -> None:
    z = ZstdCompressor(Sink(), close_sink=False)
    z.close()
    z.close()
    with pytest.raises(PipelineError):
        z.write(b"x")
    with pytest.raises(PipelineError) as info:
        ZstdCompressor(Sink(), level=0)
    assert info.value.code == "CONFIG_INVALID"
    assert "level" in str(info.value)
