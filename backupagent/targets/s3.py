"""A target in an S3 bucket or an S3-compatible store (``s3://bucket/prefix``).

Uploads stream: the writer fills one part at a time and hands it to one
background upload thread (``max_inflight``), so memory holds at most
``1 + max_inflight`` parts whatever the backup's size, and dumping overlaps
with uploading. A backup smaller than one part is sent with one PutObject.
Those part buffers are allocated once per upload and reused, and a part is
uploaded from its buffer in place, never copied (``_PartBuffer``,
``_PartPool``): memory stays flat as the backup grows.

Part sizes (``part_size_for``): the stream's size is unknown up front, and S3
allows at most 10,000 parts of at most 5 GiB, so a fixed 8 MiB part would cap
a backup at ~78 GiB. Instead the size doubles every 1,000 parts::

    parts     1-1000: 8 MiB   (covers   7.8 GiB)
    parts  1001-2000: 16 MiB  (covers  23.4 GiB)
    parts  2001-3000: 32 MiB  (covers  54.7 GiB)
    ...
    parts 9001-10000: 4 GiB   (covers 7.8 TiB in total)

so 10,000 parts cover 8 MiB x 1000 x (2^10 - 1) = 7.8 TiB, more than S3's
5 TiB object limit, and no part exceeds 4 GiB (< 5 GiB). Parts larger than
``SPOOL_THRESHOLD`` (from ~23 GiB into a stream) are staged in an unlinked
temporary file instead of RAM, which keeps the agent's memory flat.

Atomicity: an object exists only after CompleteMultipartUpload (or the single
PutObject) succeeds. Abort, on any failure, cancellation or exception inside
the ``with`` block, calls AbortMultipartUpload so no invisible, billed parts
stay behind; ``abort_incomplete_uploads`` sweeps what a crash left.

botocore is imported only when an S3 target is created: the idle daemon never
pays for it, and the client is built lean (``s3_client``: no boto3 resource
layer, only S3's endpoint data, no model documentation).
"""

from __future__ import annotations

import collections
import concurrent.futures
import datetime as dt
import io
import logging
import mmap
import tempfile
import threading
from typing import IO, Any, Deque, Dict, Iterator, List, Mapping, Optional

from backupagent.targets.base import (
    ObjectInfo,
    ObjectNotFound,
    TargetError,
    WriterBase,
    validate_key,
)
from backupagent.targets.keys import sanitize_prefix

log = logging.getLogger(__name__)

MIB = 1 << 20
GIB = 1 << 30
TIB = 1 << 40
MIN_PART_SIZE = 5 * MIB  # S3 rejects smaller parts (except the last) at completion
MAX_PART_SIZE = 5 * GIB
MAX_PARTS = 10_000
DEFAULT_PART_SIZE = 8 * MIB
PARTS_PER_DOUBLING = 1_000
SPOOL_THRESHOLD = 32 * MIB
SSE_VALUES = ("AES256", "aws:kms")

CONNECT_TIMEOUT = 10
READ_TIMEOUT = 120  # CompleteMultipartUpload of a large object can take a while
MAX_ATTEMPTS = 5

_AUTH_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "AuthorizationHeaderMalformed",
}


def part_size_for(part_number: int, base: int = DEFAULT_PART_SIZE) -> int:
    """Size of the 1-based ``part_number``: ``base`` doubled every 1,000 parts."""
    if part_number < 1:
        raise ValueError("part numbers start at 1")
    return min(base << ((part_number - 1) // PARTS_PER_DOUBLING), MAX_PART_SIZE)


def max_object_size(base: int = DEFAULT_PART_SIZE) -> int:
    """Largest stream that fits in MAX_PARTS parts with this schedule."""
    return sum(part_size_for(n, base) for n in range(1, MAX_PARTS + 1, PARTS_PER_DOUBLING)) * (
        PARTS_PER_DOUBLING
    )


def _credential(creds: Any, *names: str) -> Optional[str]:
    """Read a credential field from a mapping or an object, in any spelling."""
    for name in names:
        value = creds.get(name) if isinstance(creds, Mapping) else getattr(creds, name, None)
        if value:
            return str(value)
    return None


def _anonymous_map(size: int) -> mmap.mmap:
    """Private anonymous memory: a page exists once written, and is the process's own.

    (Python's default for ``mmap(-1, n)`` on Unix is a *shared* mapping, whose
    pages live in shmem.) Pages stay mapped between parts: dropping them after
    each upload (MADV_DONTNEED) was measured at -3 to -5 MB of peak RSS for
    ~5 ms of page faults per 8 MiB part (~0.1 s per GB of dump), not kept.
    """
    private = getattr(mmap, "MAP_PRIVATE", None)
    if private is None:  # Windows: no flags
        return mmap.mmap(-1, size)
    return mmap.mmap(-1, size, flags=private)


class _MemoryBody(io.RawIOBase):
    """A read-only, seekable file over the first ``length`` bytes of a part.

    botocore takes a part's body as bytes, a bytearray or a file-like object.
    Bytes or a bytearray of exactly the part's length would mean copying the
    part out of its (larger, reused) buffer; this view reads it in place, in
    the HTTP layer's blocks (128 KiB), and rewinds for a retry. ``len()`` is
    the part's length, which is how botocore sets Content-Length.
    """

    def __init__(self, mem: mmap.mmap, length: int) -> None:
        super().__init__()
        self._mem = mem
        self._length = length
        self._pos = 0

    def __len__(self) -> int:
        return self._length

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        self._pos = min(max(base + offset, 0), self._length)
        return self._pos

    def read(self, n: Optional[int] = -1) -> bytes:
        end = self._length if n is None or n < 0 else min(self._pos + n, self._length)
        data = self._mem[self._pos : end]
        self._pos = max(end, self._pos)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class _PartBuffer:
    """One part being filled: RAM for normal parts, a temp file for huge ones.

    RAM parts live in an anonymous ``mmap`` of the part's full size, allocated
    once and reused by later parts (``_PartPool``). Measured in the agent,
    growing a bytearray per part and freeing it after upload let glibc's heap
    (whose mmap threshold rises after the first freed part) fragment: RSS
    crept up ~35 MB over a 1 GB backup. A fixed mapping never reallocates,
    is never copied (the upload reads it in place through ``_MemoryBody``),
    costs only the pages written (a 1 KiB manifest touches one page, not
    8 MiB), and goes back to the kernel at once when closed.
    """

    def __init__(self, size: int, spool_dir: Optional[str]) -> None:
        self.size = size
        self.length = 0
        self._mem: Optional[mmap.mmap] = None
        self._file: Optional[IO[bytes]] = None
        if size <= SPOOL_THRESHOLD:
            self._mem = _anonymous_map(size)
        else:
            # closed in close(), after the part is uploaded
            self._file = tempfile.TemporaryFile(dir=spool_dir, prefix="backupagent-part-")  # noqa: SIM115

    @property
    def in_memory(self) -> bool:
        return self._mem is not None

    @property
    def room(self) -> int:
        return self.size - self.length

    def write(self, data: memoryview) -> None:
        if len(data) > self.room:
            raise ValueError(f"{len(data)} bytes do not fit in the part's {self.room} left")
        if self._mem is not None:
            self._mem[self.length : self.length + len(data)] = data
        else:
            assert self._file is not None
            self._file.write(data)
        self.length += len(data)

    def body(self) -> IO[bytes]:
        """The part's bytes, as a file positioned at its start (no copy)."""
        if self._mem is not None:
            return _MemoryBody(self._mem, self.length)
        assert self._file is not None
        self._file.flush()
        self._file.seek(0)
        return self._file

    def reset(self) -> None:
        """Empty the buffer for the next part (RAM buffers only are reused)."""
        self.length = 0

    def close(self) -> None:
        self.length = 0
        if self._mem is not None:
            self._mem.close()
            self._mem = None
        if self._file is not None:
            self._file.close()
            self._file = None


class _PartPool:
    """The RAM part buffers of one upload: at most ``limit`` exist at a time.

    The writer keeps one buffer filling and up to ``max_inflight`` uploading,
    so ``limit`` is ``1 + max_inflight``; buffers come back after their part is
    uploaded and are reused as they are. A buffer of a size the schedule has
    left behind (parts double every 1,000) is freed instead of reused. Spooled
    (temp file) parts are not pooled: each is a new unlinked file.
    ``allocated`` and ``peak_live`` let tests pin the bound.
    """

    def __init__(self, limit: int, spool_dir: Optional[str]) -> None:
        self.limit = limit
        self.spool_dir = spool_dir
        self.allocated = 0  # RAM buffers ever created
        self.peak_live = 0
        self._live: List[_PartBuffer] = []
        self._free: List[_PartBuffer] = []
        self._lock = threading.Lock()

    @property
    def live(self) -> int:
        return len(self._live)

    def acquire(self, size: int) -> _PartBuffer:
        if size > SPOOL_THRESHOLD:
            return _PartBuffer(size, self.spool_dir)
        with self._lock:
            while self._free:
                buf = self._free.pop()
                if buf.size == size:
                    buf.reset()
                    return buf
                self._forget(buf)
            if len(self._live) >= self.limit:
                # a bug in the writer, not a user error: memory must stay bounded
                raise RuntimeError(f"S3 part pool exhausted ({self.limit} buffers in use)")
            buf = _PartBuffer(size, self.spool_dir)
            self._live.append(buf)
            self.allocated += 1
            self.peak_live = max(self.peak_live, len(self._live))
            return buf

    def release(self, buf: _PartBuffer) -> None:
        """Take a buffer back after its part was uploaded (or given up)."""
        if not buf.in_memory:
            buf.close()
            return
        with self._lock:
            if any(b is buf for b in self._live) and not any(b is buf for b in self._free):
                self._free.append(buf)

    def _forget(self, buf: _PartBuffer) -> None:
        self._live = [b for b in self._live if b is not buf]
        buf.close()

    def close(self) -> None:
        """Free every buffer; only once no upload thread can still read one."""
        with self._lock:
            for buf in self._live:
                buf.close()
            self._live.clear()
            self._free.clear()


class S3Target:
    """Objects under ``s3://bucket/prefix/``; keys are relative to the prefix."""

    scheme = "s3"

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        region: Optional[str] = None,
        endpoint_url: Optional[str] = None,
        storage_class: Optional[str] = None,
        sse: Optional[str] = None,
        credentials: Any = None,
        path_style: Optional[bool] = None,
        *,
        sse_kms_key_id: Optional[str] = None,
        part_size: int = DEFAULT_PART_SIZE,
        max_inflight: int = 1,
        spool_dir: Optional[str] = None,
    ) -> None:
        if not bucket or "/" in bucket or len(bucket) < 3 or len(bucket) > 255:
            raise TargetError(
                f"S3 bucket name {bucket!r} is invalid: use the bare bucket name "
                "(3 to 63 characters, no '/'), and put folders in the prefix"
            )
        if sse is not None and sse not in SSE_VALUES:
            raise TargetError(
                f"S3 serverSideEncryption {sse!r} is not supported: "
                f"use one of {', '.join(SSE_VALUES)}"
            )
        if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
            raise TargetError(f"S3 part size {part_size} is outside 5 MiB..5 GiB")
        if max_inflight < 0 or max_inflight > 4:
            raise TargetError(f"S3 max_inflight {max_inflight} must be between 0 and 4")
        self.bucket = bucket
        self.prefix = sanitize_prefix(prefix)
        self.region = region
        self.endpoint_url = endpoint_url
        self.storage_class = storage_class
        self.sse = sse
        self.sse_kms_key_id = sse_kms_key_id
        self.part_size = part_size
        self.max_inflight = max_inflight
        self.spool_dir = spool_dir
        self.path_style = bool(endpoint_url) if path_style is None else bool(path_style)
        self._secrets: List[str] = []
        self._client = self._make_client(credentials)

    def __repr__(self) -> str:
        return f"S3Target({self.url_for_prefix()!r}, endpoint_url={self.endpoint_url!r})"

    # client --------------------------------------------------------------
    def _make_client(self, credentials: Any) -> Any:
        from botocore.config import Config

        from backupagent.targets.s3_client import make_s3_client

        kwargs: Dict[str, Optional[str]] = {}
        if credentials is not None:
            key_id = _credential(credentials, "access_key_id", "accessKeyId", "aws_access_key_id")
            secret = _credential(
                credentials, "secret_access_key", "secretAccessKey", "aws_secret_access_key"
            )
            token = _credential(credentials, "session_token", "sessionToken", "aws_session_token")
            if not key_id or not secret:
                raise TargetError(
                    f"S3 target {self.url_for_prefix()}: credentials need both accessKeyId "
                    "and secretAccessKey (or leave credentials out to use the AWS chain)"
                )
            self._secrets = [s for s in (secret, token) if s]
            kwargs.update(
                aws_access_key_id=key_id, aws_secret_access_key=secret, aws_session_token=token
            )
        config_kwargs: Dict[str, Any] = {
            "retries": {"mode": "standard", "max_attempts": MAX_ATTEMPTS},
            "connect_timeout": CONNECT_TIMEOUT,
            "read_timeout": READ_TIMEOUT,
            "max_pool_connections": 4 + self.max_inflight,
            "s3": {"addressing_style": "path" if self.path_style else "auto"},
            "signature_version": "s3v4",
        }
        if self.endpoint_url:
            # S3-compatible stores often reject the CRC headers boto3 >= 1.36
            # adds by default; send them only where an operation needs them.
            config_kwargs["request_checksum_calculation"] = "when_required"
            config_kwargs["response_checksum_validation"] = "when_required"
        try:
            config = Config(**config_kwargs)
        except TypeError:  # boto3 < 1.36 has no checksum options (and sends none)
            config_kwargs.pop("request_checksum_calculation", None)
            config_kwargs.pop("response_checksum_validation", None)
            config = Config(**config_kwargs)
        try:
            return make_s3_client(
                region=self.region,
                endpoint_url=self.endpoint_url,
                config=config,
                credentials=kwargs,
            )
        except Exception as exc:
            raise self._error("configuring the S3 client for", self.url_for_prefix(), exc) from None

    # naming --------------------------------------------------------------
    def _full_key(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def url_for(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._full_key(key)}"

    def url_for_prefix(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    # errors --------------------------------------------------------------
    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _error(self, action: str, url: str, exc: BaseException) -> TargetError:
        """A TargetError naming what failed and the likely fix, with no secret."""
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            EndpointConnectionError,
            NoCredentialsError,
        )

        cls = TargetError
        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", "")) or str(
                exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
            )
            detail = f"{code}: {err.get('Message') or 'no message'}"
            if code == "NoSuchBucket":
                hint = (
                    f"bucket {self.bucket!r} does not exist: create it or fix the target's bucket"
                )
            elif code in _AUTH_CODES or code == "403":
                hint = (
                    "check the target's credentials (accessKeyId/secretAccessKey) "
                    "or the AWS credential chain, and the bucket policy"
                )
            elif code in ("NoSuchKey", "404", "NotFound"):
                cls = ObjectNotFound
                hint = "the object does not exist"
            else:
                hint = "see the S3 error code"
        elif isinstance(exc, NoCredentialsError):
            detail = "no credentials"
            hint = "set credentials in the target or configure the AWS credential chain"
        elif isinstance(exc, EndpointConnectionError):
            detail = "endpoint unreachable"
            hint = f"check endpointUrl/region ({self.endpoint_url or self.region or 'default'})"
        elif isinstance(exc, BotoCoreError):
            detail = type(exc).__name__ + ": " + str(exc)
            hint = "check the target's settings and the network"
        elif isinstance(exc, TargetError):
            return exc
        else:
            detail = type(exc).__name__ + ": " + str(exc)
            hint = "unexpected error"
        return cls(self._redact(f"{action} {url} failed ({detail}); {hint}"))

    # objects -------------------------------------------------------------
    def _put_args(self) -> Dict[str, Any]:
        args: Dict[str, Any] = {}
        if self.storage_class:
            args["StorageClass"] = self.storage_class
        if self.sse:
            args["ServerSideEncryption"] = self.sse
            if self.sse == "aws:kms" and self.sse_kms_key_id:
                args["SSEKMSKeyId"] = self.sse_kms_key_id
        return args

    def open_writer(self, key: str) -> S3Writer:
        return S3Writer(self, self._full_key(key))

    def open_reader(self, key: str) -> _S3Reader:
        full = self._full_key(key)
        url = self.url_for(key)
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=full)
        except Exception as exc:
            raise self._error("reading", url, exc) from None
        return _S3Reader(self, response["Body"], url)

    def exists(self, key: str) -> bool:
        url = self.url_for(key)
        try:
            self._client.head_object(Bucket=self.bucket, Key=self._full_key(key))
        except Exception as exc:
            err = self._error("checking", url, exc)
            if isinstance(err, ObjectNotFound):
                return False
            raise err from None
        return True

    def delete(self, key: str) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._full_key(key))
        except Exception as exc:
            raise self._error("deleting", self.url_for(key), exc) from None

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        root = f"{self.prefix}/" if self.prefix else ""
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=root + prefix
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    key = obj["Key"][len(root) :]
                    if not key or key.endswith("/"):
                        continue  # "folder" markers some tools create
                    modified = obj["LastModified"].astimezone(dt.timezone.utc)
                    yield ObjectInfo(key, int(obj["Size"]), modified)
        except Exception as exc:
            raise self._error("listing", self.url_for_prefix() + "/" + prefix, exc) from None

    def abort_incomplete_uploads(
        self, prefix: str = "", older_than: Optional[dt.timedelta] = None
    ) -> int:
        """Abort multipart uploads a crash left behind; returns how many.

        ``older_than`` spares uploads a running job may still own; pass None
        (abort all under the prefix) only when no job is running.
        """
        root = f"{self.prefix}/" if self.prefix else ""
        cutoff = None
        if older_than is not None:
            cutoff = dt.datetime.now(dt.timezone.utc) - older_than
        count = 0
        try:
            pages = self._client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=root + prefix
            )
            for page in pages:
                for upload in page.get("Uploads", []):
                    initiated = upload.get("Initiated")
                    if cutoff is not None and initiated is not None and initiated > cutoff:
                        continue
                    self._client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    count += 1
        except Exception as exc:
            raise self._error("cleaning up uploads in", self.url_for_prefix(), exc) from None
        return count


class _S3Reader(io.RawIOBase):
    """A streaming GetObject body whose failures are TargetErrors."""

    def __init__(self, target: S3Target, body: Any, url: str) -> None:
        super().__init__()
        self._target = target
        self._body = body
        self._url = url

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        try:
            return self._body.read(None if n is None or n < 0 else n)
        except Exception as exc:
            raise self._target._error("reading", self._url, exc) from None

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            try:
                self._body.close()
            finally:
                super().close()


class S3Writer(WriterBase):
    """Streaming multipart upload; see the module docstring for sizes and memory."""

    def __init__(self, target: S3Target, full_key: str) -> None:
        super().__init__(f"s3://{target.bucket}/{full_key}")
        self._t = target
        self._key = full_key
        self._upload_id: Optional[str] = None
        self._parts: Dict[int, str] = {}
        self._part_number = 0  # parts handed to the uploader so far
        self._pool = _PartPool(1 + target.max_inflight, target.spool_dir)
        self._buf: Optional[_PartBuffer] = None  # taken from the pool at the first byte
        self._pending: Deque[concurrent.futures.Future] = collections.deque()
        self._executor: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._parts_lock = threading.Lock()

    # filling -------------------------------------------------------------
    def _write(self, data: memoryview) -> None:
        offset = 0
        while offset < len(data):
            buf = self._buf if self._buf is not None else self._next_buffer()
            take = min(buf.room, len(data) - offset)
            buf.write(data[offset : offset + take])
            offset += take
            if buf.room == 0:
                self._send_part()

    def _next_buffer(self) -> _PartBuffer:
        """The buffer for the next part: a finished upload's, else a new one."""
        while self._pending and self._pending[0].done():
            self._pool.release(self._pending.popleft().result())  # re-raises an upload error
        self._buf = self._pool.acquire(part_size_for(self._part_number + 1, self._t.part_size))
        return self._buf

    def _send_part(self) -> None:
        if self._state != "open":
            raise TargetError(f"upload to {self.url} was {self._state}")
        if self._part_number >= MAX_PARTS:
            raise TargetError(f"{self.url}: more than {MAX_PARTS} parts (object over S3's limit)")
        if self._upload_id is None:
            try:
                response = self._t._client.create_multipart_upload(
                    Bucket=self._t.bucket, Key=self._key, **self._t._put_args()
                )
            except Exception as exc:
                raise self._t._error("starting upload of", self.url, exc) from None
            self._upload_id = response["UploadId"]
        buf, self._buf = self._buf, None
        assert buf is not None
        self._part_number += 1
        if self._t.max_inflight == 0:
            self._pool.release(self._upload_part(self._part_number, buf))
            return
        while len(self._pending) >= self._t.max_inflight:
            self._pool.release(self._pending.popleft().result())  # back-pressure; re-raises
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=self._t.max_inflight, thread_name_prefix="s3-upload"
            )
        self._pending.append(self._executor.submit(self._upload_part, self._part_number, buf))

    def _upload_part(self, number: int, buf: _PartBuffer) -> _PartBuffer:
        """Upload one part; returns its buffer for reuse (freed on failure)."""
        try:
            response = self._t._client.upload_part(
                Bucket=self._t.bucket,
                Key=self._key,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=buf.body(),
            )
        except Exception as exc:
            self._pool.release(buf)
            raise self._t._error(f"uploading part {number} of", self.url, exc) from None
        with self._parts_lock:
            self._parts[number] = response["ETag"]
        return buf

    def _drain(self) -> None:
        while self._pending:
            self._pool.release(self._pending.popleft().result())

    def _shutdown_executor(self) -> None:
        for fut in self._pending:
            fut.cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=True)  # in-flight parts finish before the abort
            self._executor = None
        self._pending.clear()

    # finishing -----------------------------------------------------------
    def _commit(self) -> None:
        if self._upload_id is None:
            self._put_single()
            return
        if self._buf is not None and self._buf.length:
            self._send_part()
        self._drain()
        self._shutdown_executor()
        self._pool.close()
        parts = [{"PartNumber": n, "ETag": self._parts[n]} for n in sorted(self._parts)]
        if len(parts) != self._part_number:
            raise TargetError(f"{self.url}: {self._part_number - len(parts)} parts missing")
        try:
            self._t._client.complete_multipart_upload(
                Bucket=self._t.bucket,
                Key=self._key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": parts},
            )
        except Exception as exc:
            raise self._t._error("completing upload of", self.url, exc) from None
        self._upload_id = None

    def _put_single(self) -> None:
        body: Any = self._buf.body() if self._buf is not None else b""
        try:
            self._t._client.put_object(
                Bucket=self._t.bucket, Key=self._key, Body=body, **self._t._put_args()
            )
        except Exception as exc:
            raise self._t._error("uploading", self.url, exc) from None
        finally:
            self._buf = None
            self._pool.close()

    def _abort(self) -> None:
        self._shutdown_executor()  # no upload thread reads a buffer after this
        if self._buf is not None:
            self._buf.close()  # a spooled part is not in the pool
            self._buf = None
        self._pool.close()
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is None:
            return
        try:
            self._t._client.abort_multipart_upload(
                Bucket=self._t.bucket, Key=self._key, UploadId=upload_id
            )
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code")
            if code != "NoSuchUpload":  # NoSuchUpload: already gone, nothing to clean
                raise self._t._error("aborting upload of", self.url, exc) from None
