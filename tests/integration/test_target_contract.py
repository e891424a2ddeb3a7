"""One contract, every backend: LocalTarget on a temp dir, S3Target on real SeaweedFS.

Whatever a backup job relies on (atomic commit, abort leaves nothing, streaming
reads, list/delete for retention) is asserted here once and must hold for each
backend; backend-specific promises live in test_target_local.py / test_target_s3.py.
"""

from __future__ import annotations

import hashlib
import os
import random
from typing import Any, Callable, Iterator, List

import pytest

from backupagent.targets.base import ObjectNotFound, TargetError
from backupagent.targets.local import LocalTarget
from backupagent.targets.s3 import MIN_PART_SIZE, S3Target

pytestmark = pytest.mark.integration

PART = MIN_PART_SIZE  # the smallest part S3 (and SeaweedFS) accepts, to keep tests quick


class Backend:
    """A target plus a way to see everything it left behind, visible or not."""

    def __init__(self, target: Any, leftovers: Callable[[], List[str]]) -> None:
        self.target = target
        self.leftovers = leftovers


def _local(tmp_path: Any) -> Backend:
    root = tmp_path / "root"
    target = LocalTarget(str(root))

    def leftovers() -> List[str]:
        found = []
        for dirpath, _dirs, files in os.walk(root):
            found += [os.path.join(dirpath, f) for f in files]
        return found

    return Backend(target, leftovers)


def _s3(s3_server: Any) -> Backend:
    bucket = s3_server.make_bucket()
    target = S3Target(
        bucket,
        "backups/prod",
        region=s3_server.region,
        endpoint_url=s3_server.endpoint_url,
        credentials={
            "access_key_id": s3_server.access_key,
            "secret_access_key": s3_server.secret_key,
        },
        part_size=PART,
    )
    client = s3_server.client()

    def leftovers() -> List[str]:
        objs = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
        uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        return objs + [f"upload:{u['Key']}" for u in uploads]

    return Backend(target, leftovers)


@pytest.fixture(params=["local", "s3"])
def backend(request: Any, tmp_path: Any) -> Backend:
    if request.param == "local":
        return _local(tmp_path)
    return _s3(request.getfixturevalue("s3_server"))


def _data(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def _chunks(data: bytes, sizes: Iterator[int]) -> Iterator[memoryview]:
    view = memoryview(data)
    pos = 0
    while pos < len(view):
        n = next(sizes)
        yield view[pos : pos + n]
        pos += n


def _read_all(target: Any, key: str, chunk: int = 65536) -> bytes:
    reader = target.open_reader(key)
    out = bytearray()
    try:
        while True:
            block = reader.read(chunk)
            if not block:
                break
            assert len(block) <= chunk
            out += block
    finally:
        reader.close()
    return bytes(out)


def _store(target: Any, key: str, data: bytes, chunk: int = 1 << 20) -> str:
    with target.open_writer(key) as writer:
        for i in range(0, len(data), chunk):
            writer.write(data[i : i + chunk])
        return writer.commit()


@pytest.mark.parametrize(
    "size", [0, 1, PART, 3 * PART + 12345], ids=["empty", "one-byte", "one-part", "several-parts"]
)
def test_write_commit_read_back_identical(backend: Backend, size: int) -> None:
    target = backend.target
    data = _data(size, seed=size)
    key = f"host/postgresql/app/obj-{size}.dump"
    with target.open_writer(key) as writer:
        for block in _chunks(data, iter(lambda: 1_000_003, None)):
            writer.write(block)
        assert writer.bytes_written == size
        url = writer.commit()
    assert url == target.url_for(key)
    assert target.exists(key)
    back = _read_all(target, key)
    assert hashlib.sha256(back).hexdigest() == hashlib.sha256(data).hexdigest()
    [info] = [i for i in target.list("host/") if i.key == key]
    assert info.size == size
    assert info.modified.tzinfo is not None


def test_unknown_size_stream_crossing_part_boundaries(backend: Backend) -> None:
    rng = random.Random(7)
    data = _data(2 * PART + 777_777, seed=3)
    sizes = iter(lambda: rng.choice([1, 17, 4096, 65536, 999_999, PART - 1, PART + 1]), None)
    key = "h/redis/0/stream.rdb"
    with backend.target.open_writer(key) as writer:
        for block in _chunks(data, sizes):
            writer.write(block)
        writer.commit()
    assert _read_all(backend.target, key, chunk=1 << 20) == data


def test_abort_leaves_nothing_and_is_idempotent(backend: Backend) -> None:
    target = backend.target
    writer = target.open_writer("h/db/x/aborted.dump")
    writer.write(_data(2 * PART + 100))  # several parts already uploaded on S3
    writer.abort()
    writer.abort()
    assert backend.leftovers() == []
    assert not target.exists("h/db/x/aborted.dump")
    with pytest.raises(TargetError):
        writer.write(b"more")
    with pytest.raises(TargetError):
        writer.commit()
    writer.abort()


def test_exception_inside_with_block_aborts(backend: Backend) -> None:
    target = backend.target
    with (
        pytest.raises(RuntimeError, match="dump died"),
        target.open_writer("h/db/x/failed.dump") as writer,
    ):
        writer.write(_data(PART + 5))
        raise RuntimeError("dump died")
    assert backend.leftovers() == []
    with pytest.raises(ObjectNotFound):
        target.open_reader("h/db/x/failed.dump")


def test_leaving_with_block_without_commit_aborts(backend: Backend) -> None:
    with backend.target.open_writer("h/db/x/forgotten.dump") as writer:
        writer.write(b"half a backup")
    assert backend.leftovers() == []


def test_abort_after_commit_keeps_the_object(backend: Backend) -> None:
    writer = backend.target.open_writer("h/db/x/kept.dump")
    writer.write(b"payload")
    writer.commit()
    writer.abort()
    assert _read_all(backend.target, "h/db/x/kept.dump") == b"payload"


def test_commit_is_atomic(backend: Backend) -> None:
    """Until commit returns, readers see no object (or the previous one), never a part."""
    target = backend.target
    key = "h/pg/app/atomic.dump"
    _store(target, key, b"old version")
    new = _data(2 * PART + 3)
    writer = target.open_writer(key)
    writer.write(new[: PART + 1])
    writer.write(new[PART + 1 :])
    # mid-upload: the old object is intact, nothing partial is listed
    assert _read_all(target, key) == b"old version"
    assert [i.key for i in target.list("")] == [key]
    writer.commit()
    assert _read_all(target, key) == new
    assert [i.key for i in target.list("")] == [key]

    fresh = target.open_writer("h/pg/app/fresh.dump")
    fresh.write(_data(PART + 9))
    assert not target.exists("h/pg/app/fresh.dump")
    with pytest.raises(ObjectNotFound):
        target.open_reader("h/pg/app/fresh.dump")
    assert "h/pg/app/fresh.dump" not in [i.key for i in target.list("")]
    fresh.commit()
    assert target.exists("h/pg/app/fresh.dump")


def test_list_delete_exists(backend: Backend) -> None:
    target = backend.target
    keys = ["a/x/1.dump", "a/x/1.dump.manifest.json", "a/y/2.dump", "b/3.dump"]
    for i, key in enumerate(keys):
        _store(target, key, b"z" * (i + 1))
    listed = list(target.list())
    assert [i.key for i in listed] == sorted(keys)
    assert [i.size for i in listed] == [keys.index(i.key) + 1 for i in listed]
    assert [i.key for i in target.list("a/")] == keys[:3]
    assert [i.key for i in target.list("a/x/1.dump")] == keys[:2]
    assert [i.key for i in target.list("a/x/")] == keys[:2]
    assert list(target.list("nothing/here/")) == []
    assert target.exists("b/3.dump")
    target.delete("b/3.dump")
    assert not target.exists("b/3.dump")
    target.delete("b/3.dump")  # deleting a missing object is not an error
    assert [i.key for i in target.list()] == keys[:3]
    assert not target.exists("b")  # a "directory" is not an object


@pytest.mark.parametrize(
    "key", ["../escape", "a/../../b", "/abs", "a//b", "a/./b", "a\\b", "a/\x00b", "", "a/.hidden"]
)
def test_keys_that_could_escape_are_refused(backend: Backend, key: str) -> None:
    with pytest.raises(TargetError):
        backend.target.open_writer(key)
    assert backend.leftovers() == []


def test_memoryview_and_bytearray_input(backend: Backend) -> None:
    with backend.target.open_writer("m/v.bin") as writer:
        writer.write(memoryview(b"abc"))
        writer.write(bytearray(b"def"))
        writer.write(memoryview(bytearray(b"0123456789"))[2:5])
        writer.commit()
    assert _read_all(backend.target, "m/v.bin") == b"abcdef234"


def test_reader_streams_in_bounded_reads(backend: Backend) -> None:
    data = _data(PART + 10)
    _store(backend.target, "r/big.bin", data)
    reader = backend.target.open_reader("r/big.bin")
    try:
        first = reader.read(10)
        assert first == data[:10]
        rest = reader.read()
    finally:
        reader.close()
    assert first + rest == data
