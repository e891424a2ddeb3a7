"""The S3 part-size schedule: unknown-size streams must fit S3's 10,000-part limit."""

from __future__ import annotations

import pytest

from backupagent.targets.s3 import (
    DEFAULT_PART_SIZE,
    GIB,
    MAX_PART_SIZE,
    MAX_PARTS,
    MIB,
    SPOOL_THRESHOLD,
    TIB,
    _PartBuffer,
    max_object_size,
    part_size_for,
)


def test_schedule_covers_five_tib_within_ten_thousand_parts() -> None:
    sizes = [part_size_for(n) for n in range(1, MAX_PARTS + 1)]
    assert sum(sizes) == max_object_size() >= 5 * TIB
    assert max(sizes) <= MAX_PART_SIZE  # 5 GiB
    assert max(sizes) == 4 * GIB
    assert sizes[0] == DEFAULT_PART_SIZE == 8 * MIB
    assert sizes == sorted(sizes)  # never shrinks


def test_doubling_points() -> None:
    assert part_size_for(1000) == 8 * MIB
    assert part_size_for(1001) == 16 * MIB
    assert part_size_for(2001) == 32 * MIB
    assert part_size_for(9001) == 4 * GIB
    with pytest.raises(ValueError):
        part_size_for(0)


def test_streams_that_break_a_fixed_part_size_fit() -> None:
    """A fixed 8 MiB part caps a stream at ~78 GiB; find how many parts 1 TiB needs."""
    assert 8 * MIB * MAX_PARTS < 80 * GIB
    total, n = 0, 0
    while total < 1 * TIB:
        n += 1
        total += part_size_for(n)
    assert n < MAX_PARTS
    # memory stays small where backups usually are: up to ~23 GiB, parts are <= 16 MiB
    assert sum(part_size_for(k) for k in range(1, 2001)) > 23 * GIB
    assert part_size_for(2000) == 16 * MIB


def test_cap_applies_to_large_bases() -> None:
    assert part_size_for(MAX_PARTS, base=1 * GIB) == MAX_PART_SIZE


def test_part_buffer_spools_big_parts_to_disk(tmp_path) -> None:
    small = _PartBuffer(8 * MIB, str(tmp_path))
    small.write(memoryview(b"abc"))
    assert small.in_memory and small.body().read() == b"abc" and small.room == 8 * MIB - 3
    big = _PartBuffer(SPOOL_THRESHOLD + 1, str(tmp_path))
    big.write(memoryview(b"xyz"))
    body = big.body()
    assert not big.in_memory and body.read() == b"xyz"
    big.close()
    small.close()
