"""The pipeline's output against the reference ``zstd`` and ``age`` CLIs, both ways."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from backupagent.pipeline.restore import open_restore_stream
from backupagent.pipeline.run import run_backup_pipeline
from backupagent.pipeline.source import ProcessSource
from backupagent.pipeline.stages import FRAME_SIZE
from backupagent.targets.local import LocalTarget
from tests.servers import require_binary

pytestmark = pytest.mark.integration

PY = sys.executable
# ~8 MB of dump-like output from a real process
GEN = (
    "import sys, random\n"
    "r = random.Random(11)\n"
    "w = sys.stdout.buffer.write\n"
    "for i in range(200000):\n"
    "    w(b'%d\\tcustomer %d\\t%016x\\n' % (i, i % 101, r.getrandbits(64)))\n"
)


@pytest.fixture(scope="module")
def tools() -> dict:
    return {
        "zstd": require_binary("zstd", "apt-get install zstd"),
        "age": require_binary("age", "apt-get install age"),
        "age-keygen": require_binary("age-keygen", "apt-get install age"),
    }


@pytest.fixture(scope="module")
def keypair(tools, tmp_path_factory) -> tuple:
    key = tmp_path_factory.mktemp("age") / "key.txt"
    subprocess.run([tools["age-keygen"], "-o", str(key)], check=True, capture_output=True)
    pub = subprocess.run(
        [tools["age-keygen"], "-y", str(key)], check=True, capture_output=True, text=True
    ).stdout.strip()
    return key, pub


def expected() -> bytes:
    return subprocess.run([PY, "-c", GEN], check=True, capture_output=True).stdout


def backup_to_file(tmp_path: Path, recipients: list) -> tuple:
    target = LocalTarget(str(tmp_path / "target"))
    key = "h/postgresql/db/backup.dump.zst" + (".age" if recipients else "")
    writer = target.open_writer(key)
    res = run_backup_pipeline(ProcessSource([PY, "-c", GEN], None), writer, recipients=recipients)
    url = writer.commit()
    path = Path(url[len("file://") :])
    return path, res


def test_zstd_cli_reads_unencrypted_output(tools, tmp_path) -> None:
    path, res = backup_to_file(tmp_path, [])
    stored = path.read_bytes()
    assert hashlib.sha256(stored).hexdigest() == res.sha256
    assert len(stored) == res.stored_size
    subprocess.run([tools["zstd"], "-t", "-q", str(path)], check=True)  # checksum verified
    listing = subprocess.run(
        [tools["zstd"], "-lv", str(path)], check=True, capture_output=True, text=True
    ).stdout
    # FRAME_SIZE frames between the start and end markers, read as one stream
    frames = -(-len(expected()) // FRAME_SIZE)
    assert frames > 1
    assert f"# Zstandard Frames: {frames}\n" in listing, listing
    assert "# Skippable Frames: 2" in listing, listing
    out = subprocess.run(
        [tools["zstd"], "-d", "-c", str(path)], check=True, capture_output=True
    ).stdout
    assert out == expected()


def test_age_and_zstd_clis_restore_encrypted_output(tools, keypair, tmp_path) -> None:
    key, pub = keypair
    path, res = backup_to_file(tmp_path, [pub])
    assert hashlib.sha256(path.read_bytes()).hexdigest() == res.sha256
    age = subprocess.Popen([tools["age"], "-d", "-i", str(key), str(path)], stdout=subprocess.PIPE)
    zstd = subprocess.run(
        [tools["zstd"], "-d", "-c"], stdin=age.stdout, capture_output=True, check=True
    )
    assert age.wait() == 0
    assert zstd.stdout == expected()
    assert res.dump_size == len(zstd.stdout)


def test_restore_stream_reads_what_the_clis_write(tools, keypair, tmp_path) -> None:
    key, pub = keypair
    data = expected()
    raw = tmp_path / "dump"
    raw.write_bytes(data)
    enc = tmp_path / "dump.zst.age"
    zstd = subprocess.Popen(
        [tools["zstd"], "-3", "-T0", "-q", "-c", str(raw)], stdout=subprocess.PIPE
    )
    with open(enc, "wb") as f:
        subprocess.run([tools["age"], "-r", pub], stdin=zstd.stdout, stdout=f, check=True)
    assert zstd.wait() == 0
    from backupagent.crypto.age import load_identities

    stored = enc.read_bytes()
    stream = open_restore_stream(
        io.BytesIO(stored),
        load_identities(str(key)),
        expected_sha256=hashlib.sha256(stored).hexdigest(),
    )
    out = b"".join(iter(lambda: stream.read(1 << 20), b""))
    assert out == data
    assert stream.encrypted and stream.compressed


def test_zstd_cli_multiframe_and_truncation(tools, tmp_path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(os.urandom(100_000) * 3)
    b.write_bytes(b"tail" * 1000)
    za = subprocess.run([tools["zstd"], "-q", "-c", str(a)], capture_output=True, check=True).stdout
    zb = subprocess.run([tools["zstd"], "-q", "-c", str(b)], capture_output=True, check=True).stdout
    stream = open_restore_stream(io.BytesIO(za + zb), [], False, True)
    assert b"".join(iter(lambda: stream.read(65536), b"")) == a.read_bytes() + b.read_bytes()
    from backupagent.pipeline.errors import PipelineError

    with pytest.raises(PipelineError):
        s = open_restore_stream(io.BytesIO(za[:-3]), [], False, True)
        b"".join(iter(lambda: s.read(65536), b""))
