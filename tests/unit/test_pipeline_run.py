"""run_backup_pipeline end to end with real small processes and in-memory writers."""

from __future__ import annotations

import hashlib
import io
import sys
import threading
import time

import pytest
import zstandard

from backupagent.crypto.age import decrypt_stream, generate_identity
from backupagent.errors import AgentError
from backupagent.jobs.result import CancelToken
from backupagent.pipeline.errors import PipelineError
from backupagent.pipeline.run import Progress, run_backup_pipeline
from backupagent.pipeline.source import FileSource, ProcessSource

PY = sys.executable
# ~6 MB of semi-compressible output from a real process, deterministic.
GEN = (
    "import sys, random\n"
    "r = random.Random(7)\n"
    "out = sys.stdout.buffer\n"
    "for i in range(60000):\n"
    "    out.write(('%d\\t%s\\t%08x\\n' % (i, 'name' * (i % 7), r.getrandbits(32))).encode()"
    " * 5)\n"
)


def expected_output() -> bytes:
    import subprocess

    return subprocess.run([PY, "-c", GEN], capture_output=True, check=True).stdout


class MemWriter:
    """An ObjectWriter that keeps bytes in memory and records what was called."""

    def __init__(self, fail_after: int = -1) -> None:
        self.buf = io.BytesIO()
        self.bytes_written = 0
        self.committed = False
        self.aborted = False
        self.fail_after = fail_after
        self.thread_names = set()

    def write(self, data) -> None:
        self.thread_names.add(threading.current_thread().name)
        if 0 <= self.fail_after <= self.bytes_written:
            raise AgentError("disk full on target", code="UPLOAD_FAIL")
        self.buf.write(bytes(data))
        self.bytes_written += len(data)

    def commit(self) -> str:
        self.committed = True
        return "mem://x"

    def abort(self) -> None:
        self.aborted = True


def test_unencrypted_sizes_digest_and_stage_order() -> None:
    want = expected_output()
    stages = []
    writer = MemWriter()
    progress = []
    res = run_backup_pipeline(
        ProcessSource([PY, "-c", GEN], None),
        writer,
        level=3,
        recipients=[],
        on_stage=stages.append,
        progress=progress.append,
        hash_dump=True,
    )
    stored = writer.buf.getvalue()
    assert stages == ["dumping", "compressing", "uploading"]
    assert res.dump_size == len(want)
    assert res.dump_sha256 == hashlib.sha256(want).hexdigest()
    assert res.compressed_size == res.stored_size == len(stored)
    assert res.sha256 == hashlib.sha256(stored).hexdigest()
    assert not res.encrypted
    assert zstandard.ZstdDecompressor().stream_reader(io.BytesIO(stored)).read() == want
    assert not writer.committed and not writer.aborted  # the job's decision
    assert set(res.durations_ms) == {"total", "dump", "compress", "encrypt", "upload"}
    assert progress and isinstance(progress[-1], Progress)
    assert progress[-1].stored_bytes == res.stored_size
    # the writer is fed from the pipeline's upload thread, not the caller's
    assert writer.thread_names == {"pipeline-upload"}


def test_encrypted_round_trip_and_stage_order() -> None:
    ident = generate_identity()
    want = expected_output()
    stages = []
    writer = MemWriter()
    res = run_backup_pipeline(
        ProcessSource([PY, "-c", GEN], None),
        writer,
        level=5,
        recipients=[ident.recipient],
        on_stage=stages.append,
    )
    stored = writer.buf.getvalue()
    assert stages == ["dumping", "compressing", "encrypting", "uploading"]
    assert stored.startswith(b"age-encryption.org/v1\n")
    assert res.encrypted and res.compression_level == 5
    assert res.stored_size == len(stored) > res.compressed_size
    assert res.sha256 == hashlib.sha256(stored).hexdigest()
    assert res.dump_sha256 is None
    plain = io.BytesIO()
    decrypt_stream(io.BytesIO(stored), plain, [ident])
    assert len(plain.getvalue()) == res.compressed_size
    assert zstandard.ZstdDecompressor().stream_reader(io.BytesIO(plain.getvalue())).read() == want


def test_empty_dump_still_reports_every_stage_and_a_valid_frame() -> None:
    stages = []
    writer = MemWriter()
    res = run_backup_pipeline(
        ProcessSource([PY, "-c", "pass"], None), writer, recipients=[], on_stage=stages.append
    )
    assert stages == ["dumping", "compressing", "uploading"]
    assert res.dump_size == 0
    assert (
        zstandard.ZstdDecompressor().stream_reader(io.BytesIO(writer.buf.getvalue())).read() == b""
    )


def test_failed_dump_raises_after_streaming_and_never_commits() -> None:
    writer = MemWriter()
    code = GEN + "sys.stderr.write('pg_dump: error: query failed\\n'); sys.exit(1)\n"
    with pytest.raises(PipelineError) as info:
        run_backup_pipeline(ProcessSource([PY, "-c", code], None), writer, recipients=[])
    assert info.value.code == "DUMP_FAIL"
    assert "query failed" in str(info.value)
    assert not writer.committed


def test_dump_killed_mid_stream() -> None:
    writer = MemWriter()
    code = GEN + "import os, signal; sys.stdout.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
    with pytest.raises(PipelineError) as info:
        run_backup_pipeline(ProcessSource([PY, "-c", code], None), writer, recipients=[])
    assert info.value.code == "DUMP_FAIL"
    assert "SIGKILL" in str(info.value)


def test_writer_failure_stops_everything_and_kills_the_dump() -> None:
    # an endless dump: only the writer error can end this pipeline
    endless = "import sys\nwhile True: sys.stdout.buffer.write(bytes(range(256)) * 4096)\n"
    src = ProcessSource([PY, "-c", endless], None)
    writer = MemWriter(fail_after=100_000)
    start = time.monotonic()
    with pytest.raises(AgentError) as info:
        run_backup_pipeline(src, writer, recipients=[], threads=0)
    assert time.monotonic() - start < 30
    assert info.value.code == "UPLOAD_FAIL"
    assert "disk full" in str(info.value)
    assert src.returncode is not None  # the dump process was stopped and reaped


def test_cancel_mid_stream() -> None:
    endless = "import sys\nwhile True: sys.stdout.buffer.write(b'abc' * 100000)\n"
    token = CancelToken()
    writer = MemWriter()
    src = ProcessSource([PY, "-c", endless], None, cancel=token)
    threading.Timer(0.5, token.cancel, args=("TIMEOUT",)).start()
    with pytest.raises(PipelineError) as info:
        run_backup_pipeline(src, writer, recipients=[], cancel=token)
    assert info.value.code == "TIMEOUT"
    assert src.returncode is not None and src.returncode != 0


def test_stage_callback_errors_do_not_fail_the_backup(tmp_path) -> None:
    path = tmp_path / "dump"
    path.write_bytes(b"data" * 1000)

    def boom(stage: str) -> None:
        raise RuntimeError("control plane down")

    writer = MemWriter()
    res = run_backup_pipeline(FileSource(path), writer, recipients=[], on_stage=boom)
    assert res.dump_size == 4000


def test_bad_recipient_is_config_invalid(tmp_path) -> None:
    path = tmp_path / "dump"
    path.write_bytes(b"x")
    with pytest.raises(PipelineError) as info:
        run_backup_pipeline(FileSource(path), MemWriter(), recipients=["age1notakey"])
    assert info.value.code == "CONFIG_INVALID"
