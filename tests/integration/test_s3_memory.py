"""S3 uploads in bounded, reused memory, byte-exact, against a real SeaweedFS.

The agent's peak RSS for an S3 backup must not grow with the backup: these
pin the mechanism (a fixed pool of ``1 + max_inflight`` part buffers, each
part sent from its buffer without a copy) rather than time or RSS figures,
which bench/s3_upload.py and bench/backup_vs_native.py measure.
"""

from __future__ import annotations

import random
from typing import Any, List

import pytest

from backupagent.targets.s3 import MIN_PART_SIZE, S3Target, _MemoryBody

pytestmark = pytest.mark.integration

PART = MIN_PART_SIZE


@pytest.fixture(scope="module")
def bucket(s3_server: Any) -> str:
    """One bucket for the module: SeaweedFS runs out of volumes after ~38 buckets a session."""
    return s3_server.make_bucket()


def _target(s3_server: Any, bucket: str, **kw: Any) -> S3Target:
    return S3Target(
        bucket,
        "mem",
        endpoint_url=s3_server.endpoint_url,
        credentials={"accessKeyId": s3_server.access_key, "secretAccessKey": s3_server.secret_key},
        part_size=PART,
        **kw,
    )


def _capture_bodies(target: S3Target) -> List[Any]:
    """Every Body handed to UploadPart, as botocore receives it."""
    bodies: List[Any] = []

    def hook(params: Any, **_: Any) -> None:
        bodies.append(params["Body"])

    target._client.meta.events.register("provide-client-params.s3.UploadPart", hook)
    return bodies


def _write(target: S3Target, key: str, data: bytes, chunk: int) -> Any:
    writer = target.open_writer(key)
    with writer:
        for i in range(0, len(data), chunk):
            writer.write(data[i : i + chunk])
        writer.commit()
    return writer


@pytest.mark.parametrize(
    "size",
    [0, 1, PART - 1, PART, PART + 1, 2 * PART, 3 * PART + 7],
    ids=["empty", "1B", "part-1", "part", "part+1", "2parts", "3parts+7"],
)
def test_bytes_stored_equal_bytes_written_at_part_boundaries(
    s3_server: Any, bucket: str, size: int
) -> None:
    target = _target(s3_server, bucket)
    bodies = _capture_bodies(target)
    data = random.Random(size).randbytes(size)
    key = f"b-{size}.bin"
    writer = _write(target, key, data, chunk=(1 << 20) + 13)  # chunks straddle parts
    assert writer.bytes_written == size
    client = s3_server.client()
    head = client.head_object(Bucket=bucket, Key=f"mem/{key}")
    assert head["ContentLength"] == size
    assert client.get_object(Bucket=bucket, Key=f"mem/{key}")["Body"].read() == data
    # less than a part: one PutObject; a part is sent as soon as it is full
    expected = [] if size < PART else [PART] * (size // PART) + [size % PART] * bool(size % PART)
    assert [len(b) for b in bodies] == expected
    if expected:
        first = client.head_object(Bucket=bucket, Key=f"mem/{key}", PartNumber=1)
        assert first["ContentLength"] == PART
    assert writer._pool.live == 0  # every buffer freed once committed


@pytest.mark.parametrize("inflight", [0, 1, 2])
def test_parts_are_sent_from_a_fixed_pool_without_copies(
    s3_server: Any, bucket: str, inflight: int
) -> None:
    target = _target(s3_server, bucket, max_inflight=inflight)
    bodies = _capture_bodies(target)
    n_parts = 7
    data = random.Random(inflight).randbytes(n_parts * PART - 3)
    writer = _write(target, f"pool-{inflight}.bin", data, chunk=256 * 1024)
    assert len(bodies) == n_parts
    # each part went out as a view of its buffer (no bytes copy), of the part's length
    assert all(isinstance(b, _MemoryBody) for b in bodies)
    assert [len(b) for b in bodies] == [PART] * (n_parts - 1) + [PART - 3]
    # and the buffers were reused: never more than the filling one plus those in flight
    distinct = {id(b._mem) for b in bodies}
    assert len(distinct) <= 1 + inflight
    assert writer._pool.allocated == 1 + inflight
    assert writer._pool.peak_live <= 1 + inflight
    got = (
        s3_server.client().get_object(Bucket=bucket, Key=f"mem/pool-{inflight}.bin")["Body"].read()
    )
    assert got == data


def test_pool_stays_at_its_size_however_long_the_stream(s3_server: Any, bucket: str) -> None:
    """Twice the parts, the same buffers: memory does not grow with the backup."""
    allocated = []
    for n_parts in (3, 12):
        target = _target(s3_server, bucket, max_inflight=1)
        writer = _write(target, f"grow-{n_parts}.bin", b"\x5a" * (n_parts * PART), chunk=1 << 20)
        allocated.append(writer._pool.allocated)
    assert allocated == [2, 2]


def test_aborted_upload_frees_its_buffers(s3_server: Any, bucket: str) -> None:
    target = _target(s3_server, bucket, max_inflight=1)
    writer = target.open_writer("gone.bin")
    writer.write(b"\x01" * (2 * PART + 5))
    assert writer._pool.live >= 1
    writer.abort()
    assert writer._pool.live == 0
    client = s3_server.client()
    uploads = client.list_multipart_uploads(Bucket=bucket, Prefix="mem/gone")
    assert uploads.get("Uploads", []) == []
    assert client.list_objects_v2(Bucket=bucket, Prefix="mem/gone").get("Contents", []) == []
