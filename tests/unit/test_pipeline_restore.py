"""Restore stream: decrypt -> decompress with every end-of-stream check."""

from __future__ import annotations

import hashlib
import io
import os
import sys

import pytest
import zstandard

from backupagent.crypto.age import AgeError, generate_identity
from backupagent.jobs.result import CancelToken
from backupagent.pipeline.errors import PipelineError
from backupagent.pipeline.restore import (
    ZstdFrameTracker,
    open_restore_stream,
    run_restore_pipeline,
)
from backupagent.pipeline.run import run_backup_pipeline
from backupagent.pipeline.source import FileSource
from backupagent.pipeline.stages import FRAME_SIZE
from backupagent.pipeline.zstd_framing import end_marker, is_skippable_magic

PY = sys.executable


class MemWriter:
    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.bytes_written = 0

    def write(self, data) -> None:
        self.buf.write(bytes(data))


def make_dump(n: int = 3_000_000) -> bytes:
    rows = b"".join(
        b"%d\tname %d\t%s\n" % (i, i % 13, os.urandom(4).hex().encode()) for i in range(n // 20)
    )
    return rows[:n]


def backup(tmp_path, data: bytes, recipients=()) -> tuple:
    path = tmp_path / "dump.bin"
    path.write_bytes(data)
    w = MemWriter()
    res = run_backup_pipeline(FileSource(path), w, recipients=list(recipients), threads=2)
    return w.buf.getvalue(), res


def read_all(stream) -> bytes:
    out = []
    while True:
        chunk = stream.read(100_000)
        if not chunk:
            return b"".join(out)
        out.append(chunk)


@pytest.mark.parametrize("encrypted", [False, True])
@pytest.mark.parametrize("explicit", [False, True])
def test_round_trip(tmp_path, encrypted: bool, explicit: bool) -> None:
    ident = generate_identity()
    data = make_dump()
    stored, res = backup(tmp_path, data, [ident.recipient] if encrypted else [])
    stream = open_restore_stream(
        io.BytesIO(stored),
        [ident],
        encrypted if explicit else None,
        True if explicit else None,
        expected_sha256=res.sha256,
    )
    assert read_all(stream) == data
    assert stream.sha256 == res.sha256
    assert stream.stored_size == len(stored)
    assert stream.dump_size == len(data)
    assert stream.encrypted is encrypted and stream.compressed is True


def test_checksum_mismatch_raises_at_the_end(tmp_path) -> None:
    data = make_dump(500_000)
    stored, _ = backup(tmp_path, data)
    stream = open_restore_stream(io.BytesIO(stored), [], False, True, expected_sha256="0" * 64)
    with pytest.raises(PipelineError) as info:
        read_all(stream)
    assert info.value.code == "CHECKSUM_MISMATCH"
    assert "0" * 64 in str(info.value)


def test_truncated_unencrypted_stream_is_detected(tmp_path) -> None:
    # zstandard's own reader returns a truncated frame's output silently
    data = make_dump(2_000_000)
    stored, _ = backup(tmp_path, data)
    for cut in (len(stored) - 1, len(stored) - 4, len(stored) // 2, 7):
        stream = open_restore_stream(io.BytesIO(stored[:cut]), [], False, True)
        with pytest.raises(PipelineError) as info:
            read_all(stream)
        assert info.value.code == "DECOMPRESS_FAIL", cut


def test_truncated_encrypted_stream_is_detected(tmp_path) -> None:
    ident = generate_identity()
    stored, _ = backup(tmp_path, make_dump(1_000_000), [ident.recipient])
    stream = open_restore_stream(io.BytesIO(stored[:-100]), [ident], True, True)
    with pytest.raises(AgeError):
        read_all(stream)


def test_trailing_garbage_and_corruption(tmp_path) -> None:
    data = make_dump(1_000_000)
    stored, _ = backup(tmp_path, data)
    with pytest.raises(PipelineError):
        read_all(open_restore_stream(io.BytesIO(stored + b"junk!"), [], False, True))
    bad = bytearray(stored)
    bad[len(bad) // 2] ^= 0x55
    with pytest.raises(PipelineError) as info:
        read_all(open_restore_stream(io.BytesIO(bytes(bad)), [], False, True))
    assert info.value.code == "DECOMPRESS_FAIL"


def test_wrong_identity_fails_before_any_output(tmp_path) -> None:
    stored, _ = backup(tmp_path, b"x" * 1000, [generate_identity().recipient])
    with pytest.raises(AgeError):
        open_restore_stream(io.BytesIO(stored), [generate_identity()], True, True)


def test_uncompressed_plain_object_passes_through() -> None:
    stream = open_restore_stream(io.BytesIO(b"plain dump"), [], expected_sha256=None)
    assert read_all(stream) == b"plain dump"
    assert stream.compressed is False and stream.encrypted is False


def test_frame_tracker_multi_frame_and_skippable() -> None:
    a = zstandard.ZstdCompressor(write_checksum=True).compress(b"a" * 300_000)
    b = zstandard.ZstdCompressor(write_checksum=False, write_content_size=False).compress(
        os.urandom(200_000)
    )
    skippable = b"\x50\x2a\x4d\x18" + (5).to_bytes(4, "little") + b"hello"
    whole = a + skippable + b
    for step in (1, 7, 4096, len(whole)):
        t = ZstdFrameTracker()
        for i in range(0, len(whole), step):
            t.feed(whole[i : i + step])
        assert t.complete and t.frames == 2
    t = ZstdFrameTracker()
    t.feed(whole[:-1])
    assert not t.complete
    with pytest.raises(PipelineError):
        ZstdFrameTracker().feed(b"nope")
    # multi-frame content is restored across frames
    stream = open_restore_stream(io.BytesIO(a + b), [], False, True)
    assert len(read_all(stream)) == 500_000


# -- the restore pipeline, with a real child process as the "restore tool" ----

SINK = (
    "import hashlib, sys, pathlib\n"
    "h = hashlib.sha256(); n = 0\n"
    "while True:\n"
    "    b = sys.stdin.buffer.read(65536)\n"
    "    if not b: break\n"
    "    h.update(b); n += len(b)\n"
    "pathlib.Path(sys.argv[1]).write_text('%d %s' % (n, h.hexdigest()))\n"
)


def test_restore_pipeline_feeds_the_tool(tmp_path) -> None:
    ident = generate_identity()
    data = make_dump()
    stored, res = backup(tmp_path, data, [ident.recipient])
    out = tmp_path / "seen"
    result = run_restore_pipeline(
        io.BytesIO(stored),
        [PY, "-c", SINK, str(out)],
        None,
        identities=[ident],
        expected_sha256=res.sha256,
        cancel=CancelToken(),
    )
    assert out.read_text() == f"{len(data)} {hashlib.sha256(data).hexdigest()}"
    assert result.sha256 == res.sha256
    assert result.dump_size == len(data)
    assert result.stored_size == len(stored)
    assert result.returncode == 0


def test_checksum_mismatch_kills_the_tool_before_it_sees_eof(tmp_path) -> None:
    stored, _ = backup(tmp_path, make_dump(500_000))
    out = tmp_path / "seen"
    with pytest.raises(PipelineError) as info:
        run_restore_pipeline(
            io.BytesIO(stored), [PY, "-c", SINK, str(out)], None, expected_sha256="a" * 64
        )
    assert info.value.code == "CHECKSUM_MISMATCH"
    assert not out.exists()  # the tool never reached the end of its input


def test_failing_tool_is_restore_fail_with_stderr(tmp_path) -> None:
    stored, res = backup(tmp_path, make_dump(3_000_000))
    tool = (
        "import sys; sys.stdin.buffer.read(1000); sys.stderr.write('relation exists'); sys.exit(1)"
    )
    with pytest.raises(PipelineError) as info:
        run_restore_pipeline(io.BytesIO(stored), [PY, "-c", tool], None, expected_sha256=res.sha256)
    assert info.value.code == "RESTORE_FAIL"
    assert "relation exists" in str(info.value)
    assert info.value.returncode == 1


def test_cancelled_restore(tmp_path) -> None:
    stored, _ = backup(tmp_path, make_dump(500_000))
    token = CancelToken()
    token.cancel("CANCELLED")
    with pytest.raises(PipelineError) as info:
        run_restore_pipeline(
            io.BytesIO(stored), [PY, "-c", SINK, str(tmp_path / "x")], None, cancel=token
        )
    assert info.value.code == "CANCELLED"


# -- multi-frame streams (one zstd thread: FRAME_SIZE frames between markers) -----


def framed_backup(tmp_path, data: bytes) -> bytes:
    path = tmp_path / "dump.bin"
    path.write_bytes(data)
    w = MemWriter()
    run_backup_pipeline(FileSource(path), w, threads=0)
    return w.buf.getvalue()


def boundaries(stored: bytes) -> list:
    """Offsets where each frame (skippable or data) of ``stored`` ends."""
    out, pos = [], 0
    while pos < len(stored):
        if is_skippable_magic(stored[pos : pos + 4]):
            pos += 8 + int.from_bytes(stored[pos + 4 : pos + 8], "little")
        else:
            obj = zstandard.ZstdDecompressor().decompressobj()
            obj.decompress(stored[pos:])
            pos = len(stored) - len(obj.unused_data)
        out.append(pos)
    return out


def test_a_framed_stream_restores_and_is_detected_as_zstd(tmp_path) -> None:
    data = make_dump(2 * FRAME_SIZE + FRAME_SIZE // 2)  # three frames
    stored = framed_backup(tmp_path, data)
    assert len(boundaries(stored)) == 5  # start marker, 3 frames, end marker
    stream = open_restore_stream(io.BytesIO(stored), [], None, None)
    assert read_all(stream) == data
    assert stream.compressed is True


def test_a_framed_stream_cut_between_frames_is_refused(tmp_path) -> None:
    """Each frame checks itself, so only the end marker can tell a stream cut
    exactly between two frames from a whole one."""
    data = make_dump(2 * FRAME_SIZE + FRAME_SIZE // 2)
    stored = framed_backup(tmp_path, data)
    cuts = boundaries(stored)[:-1]
    for cut in cuts:
        stream = open_restore_stream(io.BytesIO(stored[:cut]), [], False, True)
        with pytest.raises(PipelineError) as info:
            read_all(stream)
        assert info.value.code == "DECOMPRESS_FAIL", cut
        assert "truncated" in str(info.value), cut
    # The stock decoder sees nothing wrong with the same cut: why the marker exists.
    assert len(
        zstandard.ZstdDecompressor()
        .stream_reader(io.BytesIO(stored[: cuts[-2]]), read_across_frames=True)
        .read()
    ) < len(data)


def test_a_framed_stream_whose_end_marker_disagrees_is_refused(tmp_path) -> None:
    data = make_dump(FRAME_SIZE + FRAME_SIZE // 2)  # two frames
    stored = framed_backup(tmp_path, data)
    marker = end_marker(len(data), 2)
    assert stored.endswith(marker)
    for bad in (end_marker(len(data) + 1, 2), end_marker(len(data), 3)):
        stream = open_restore_stream(io.BytesIO(stored[: -len(marker)] + bad), [], False, True)
        with pytest.raises(PipelineError) as info:
            read_all(stream)
        assert info.value.code == "DECOMPRESS_FAIL"
    # A frame after the end marker (two backups glued together) is refused too.
    glued = stored + zstandard.ZstdCompressor(write_checksum=True).compress(b"more")
    with pytest.raises(PipelineError) as info:
        read_all(open_restore_stream(io.BytesIO(glued), [], False, True))
    assert info.value.code == "DECOMPRESS_FAIL"


def test_a_single_frame_stream_without_markers_still_restores(tmp_path) -> None:
    """Backups written before the markers (one frame) keep restoring."""
    data = make_dump(1_000_000)
    stored = zstandard.ZstdCompressor(level=3, write_checksum=True).compress(data)
    assert read_all(open_restore_stream(io.BytesIO(stored), [], None, None)) == data
