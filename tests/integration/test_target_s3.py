"""S3-only promises, against a real SeaweedFS: request options, errors, crash cleanup."""

from __future__ import annotations

import random
from typing import Any, Dict, List

import pytest

from backupagent.targets.base import TargetError
from backupagent.targets.registry import open_target_url
from backupagent.targets.s3 import MIN_PART_SIZE, S3Target

pytestmark = pytest.mark.integration

PART = MIN_PART_SIZE


def _target(s3_server: Any, bucket: str, **kw: Any) -> S3Target:
    kw.setdefault("part_size", PART)
    kw.setdefault(
        "credentials",
        {"accessKeyId": s3_server.access_key, "secretAccessKey": s3_server.secret_key},
    )
    return S3Target(bucket, kw.pop("prefix", "p"), endpoint_url=s3_server.endpoint_url, **kw)


def _capture(target: S3Target) -> List[Dict[str, Any]]:
    """Record every request the client really sends (URL and headers)."""
    seen: List[Dict[str, Any]] = []

    def hook(request: Any, **_: Any) -> None:
        seen.append({"url": request.url, "headers": dict(request.headers)})

    target._client.meta.events.register("before-send.s3", hook)
    return seen


def _data(n: int) -> bytes:
    return random.Random(n).randbytes(n)


def test_multipart_really_used_and_parts_have_the_scheduled_size(s3_server: Any) -> None:
    bucket = s3_server.make_bucket()
    target = _target(s3_server, bucket)
    with target.open_writer("big.bin") as w:
        w.write(_data(2 * PART + 10))
        w.commit()
    client = s3_server.client()
    head = client.head_object(Bucket=bucket, Key="p/big.bin", PartNumber=1)
    assert head["ContentLength"] == PART
    assert head.get("PartsCount", 3) == 3


@pytest.mark.parametrize("size", [10, 2 * PART + 1], ids=["single-put", "multipart"])
def test_storage_class_and_sse_are_sent(s3_server: Any, size: int) -> None:
    bucket = s3_server.make_bucket()
    target = _target(s3_server, bucket, storage_class="STANDARD_IA", sse="AES256")
    seen = _capture(target)
    with target.open_writer("sc.bin") as w:
        w.write(_data(size))
        w.commit()
    starts = [
        r["headers"]
        for r in seen
        if "uploadId" not in r["url"] and r["headers"].get("x-amz-storage-class")
    ]
    assert starts, "no request carried the storage class"
    assert starts[0]["x-amz-server-side-encryption"] in (b"AES256", "AES256")
    head = s3_server.client().head_object(Bucket=bucket, Key="p/sc.bin")
    assert head.get("StorageClass") == "STANDARD_IA"
    assert head.get("ServerSideEncryption") == "AES256"


def test_path_style_addressing(s3_server: Any) -> None:
    bucket = s3_server.make_bucket()
    target = _target(s3_server, bucket, path_style=True)
    seen = _capture(target)
    with target.open_writer("ps.bin") as w:
        w.write(b"x")
        w.commit()
    assert seen and all(r["url"].startswith(f"{s3_server.endpoint_url}/{bucket}/") for r in seen)


def test_url_registry_reaches_seaweedfs(s3_server: Any) -> None:
    bucket = s3_server.make_bucket()
    url = f"s3://{bucket}/via/url?endpoint={s3_server.endpoint_url}&region=us-east-1"
    target = open_target_url(
        url,
        credentials={
            "access_key_id": s3_server.access_key,
            "secret_access_key": s3_server.secret_key,
        },
    )
    with target.open_writer("k.bin") as w:
        w.write(b"hello")
        assert w.commit() == f"s3://{bucket}/via/url/k.bin"
    body = s3_server.client().get_object(Bucket=bucket, Key="via/url/k.bin")["Body"].read()
    assert body == b"hello"


@pytest.mark.parametrize("size", [10, 2 * PART + 1], ids=["single-put", "multipart"])
def test_bad_credentials_fail_without_leaking_the_secret(s3_server: Any, size: int) -> None:
    bucket = s3_server.make_bucket()
    secret = "TopSecretValue-" + "q" * 24
    target = _target(
        s3_server,
        bucket,
        credentials={"access_key_id": s3_server.access_key, "secret_access_key": secret},
    )
    with pytest.raises(TargetError) as info, target.open_writer("denied.bin") as w:
        w.write(_data(size))
        w.commit()
    err = info.value
    assert err.code == "UPLOAD_FAIL"
    assert secret not in str(err) and s3_server.secret_key not in str(err)
    assert "credentials" in str(err)
    assert bucket in str(err)
    assert s3_server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_missing_bucket_is_named(s3_server: Any) -> None:
    # a non-admin identity: SeaweedFS would create the bucket for an admin
    creds = {
        "accessKeyId": s3_server.limited_access_key,
        "secretAccessKey": s3_server.limited_secret_key,
    }
    target = _target(s3_server, "no-such-bucket-here", credentials=creds)
    with pytest.raises(TargetError) as info, target.open_writer("x.bin") as w:
        w.write(b"x")
        w.commit()
    assert "no-such-bucket-here" in str(info.value)
    assert s3_server.secret_key not in str(info.value)


def test_abort_incomplete_uploads_sweeps_crash_leftovers(s3_server: Any) -> None:
    bucket = s3_server.make_bucket()
    target = _target(s3_server, bucket)
    crashed = target.open_writer("crash/a.bin")
    crashed.write(_data(PART + 1))  # a multipart upload now exists; then the "crash"
    crashed._drain()
    client = s3_server.client()
    assert len(client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])) == 1
    import datetime as dt

    assert target.abort_incomplete_uploads(older_than=dt.timedelta(hours=1)) == 0
    assert target.abort_incomplete_uploads("crash/") == 1
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    crashed.abort()  # the upload is already gone: still no error


def test_failed_part_upload_aborts_and_commit_fails(s3_server: Any) -> None:
    """An upload that dies mid-stream (here: aborted behind our back) leaves nothing."""
    bucket = s3_server.make_bucket()
    target = _target(s3_server, bucket)
    writer = target.open_writer("mid/fail.bin")
    writer.write(_data(PART + 1))
    writer._drain()
    client = s3_server.client()
    [upload] = client.list_multipart_uploads(Bucket=bucket)["Uploads"]
    client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    with pytest.raises(TargetError):
        writer.write(_data(2 * PART))
        writer.commit()
    assert writer.closed and not writer.committed
    assert client.list_objects_v2(Bucket=bucket).get("Contents", []) == []
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_synchronous_mode_round_trip(s3_server: Any) -> None:
    bucket = s3_server.make_bucket()
    target = _target(s3_server, bucket, max_inflight=0)
    data = _data(2 * PART + 5)
    with target.open_writer("sync.bin") as w:
        w.write(data)
        w.commit()
    reader = target.open_reader("sync.bin")
    assert reader.read() == data
    reader.close()
