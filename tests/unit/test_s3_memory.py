"""The S3 writer's memory: fixed part buffers, reused, read in place (no copies)."""

from __future__ import annotations

import io
import mmap
import os

import pytest

from backupagent.targets.s3 import (
    MIB,
    SPOOL_THRESHOLD,
    _MemoryBody,
    _PartBuffer,
    _PartPool,
)


def _filled(data: bytes, size: int = 1 * MIB) -> _PartBuffer:
    buf = _PartBuffer(size, None)
    buf.write(memoryview(data))
    return buf


def test_body_is_exactly_the_written_bytes_read_in_place() -> None:
    buf = _filled(b"hello world")
    body = buf.body()
    assert len(body) == 11  # botocore's Content-Length, not the buffer's 1 MiB
    assert body.read(5) == b"hello" and body.tell() == 5
    assert body.read() == b" world" and body.read(3) == b""
    body.seek(0)
    assert body.read(-1) == b"hello world"
    # no copy was taken when the body was made: it reads the buffer itself
    body.seek(0)
    assert buf._mem is not None
    buf._mem[0:5] = b"HELLO"
    assert body.read(5) == b"HELLO"
    buf.close()


def test_body_seeks_like_a_file_for_retries_and_checksums() -> None:
    buf = _filled(bytes(range(100)))
    body = buf.body()
    assert body.seek(0, io.SEEK_END) == 100
    assert body.seek(-10, io.SEEK_CUR) == 90
    assert body.read(100) == bytes(range(90, 100))
    assert body.seek(500) == 100 and body.read() == b""
    body.seek(3)
    target = bytearray(4)
    assert body.readinto(target) == 4 and bytes(target) == bytes([3, 4, 5, 6])
    assert body.seekable() and body.readable()
    buf.close()


def test_a_part_buffer_refuses_more_than_its_size() -> None:
    buf = _PartBuffer(8, None)
    buf.write(memoryview(b"12345678"))
    assert buf.room == 0
    with pytest.raises(ValueError):
        buf.write(memoryview(b"9"))
    buf.close()


def test_empty_body_is_falsy_so_botocore_sends_content_length_zero() -> None:
    buf = _PartBuffer(1 * MIB, None)
    assert len(buf.body()) == 0 and not buf.body()
    buf.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_part_memory_is_a_private_mapping() -> None:
    """Python's mmap(-1, n) default is MAP_SHARED (shmem); parts must be private memory.

    A child's write to a private mapping is copy-on-write: the parent never sees it.
    """
    buf = _filled(b"parent")
    pid = os.fork()
    if pid == 0:  # the child
        try:
            assert buf._mem is not None
            buf._mem[0:6] = b"child!"
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert buf.body().read() == b"parent"
    buf.close()


def test_pool_reuses_its_buffers_and_never_exceeds_its_limit() -> None:
    pool = _PartPool(2, None)
    a = pool.acquire(1 * MIB)
    b = pool.acquire(1 * MIB)
    assert a is not b and pool.live == 2
    with pytest.raises(RuntimeError):
        pool.acquire(1 * MIB)  # the writer must recycle before asking again
    a.write(memoryview(b"part one"))
    pool.release(a)
    pool.release(a)  # twice is harmless
    again = pool.acquire(1 * MIB)
    assert again is a and again.length == 0  # the same memory, emptied
    for _ in range(50):  # a long stream: still the same two buffers
        pool.release(b)
        b = pool.acquire(1 * MIB)
    assert pool.allocated == 2 and pool.peak_live == 2
    pool.close()
    assert pool.live == 0


def test_pool_replaces_buffers_when_the_part_size_doubles() -> None:
    pool = _PartPool(2, None)
    small = pool.acquire(1 * MIB)
    pool.release(small)
    big = pool.acquire(2 * MIB)
    assert big.size == 2 * MIB and small._mem is None  # the old size was freed
    assert pool.live == 1 and pool.allocated == 2
    pool.close()


def test_spooled_parts_are_files_outside_the_pool(tmp_path) -> None:
    pool = _PartPool(1, str(tmp_path))
    huge = pool.acquire(SPOOL_THRESHOLD + 1)
    assert not huge.in_memory and pool.live == 0
    huge.write(memoryview(b"spooled"))
    assert huge.body().read() == b"spooled"
    pool.release(huge)  # closes the temp file
    assert huge._file is None
    ram = pool.acquire(1 * MIB)  # the limit still allows the RAM buffer
    assert ram.in_memory
    pool.close()


def test_memory_body_is_a_raw_file_for_botocore() -> None:
    """botocore accepts a body that has read(); bytes-likes would be copied or re-wrapped."""
    mem = mmap.mmap(-1, 16)
    mem[:4] = b"abcd"
    body = _MemoryBody(mem, 4)
    assert hasattr(body, "read") and not isinstance(body, (bytes, bytearray))
    assert body.readall() == b"abcd"
    body.close()
    mem.close()
