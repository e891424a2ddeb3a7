"""The dump source against real small processes."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import pytest

from backupagent.jobs.result import CancelToken
from backupagent.pipeline.errors import PipelineError
from backupagent.pipeline.source import FileSource, ProcessSource

PY = sys.executable


def py(code: str) -> list:
    return [PY, "-c", code]


def read_all(src) -> bytes:
    return b"".join(iter(src))


def test_exit_zero_reads_everything_in_chunks() -> None:
    src = ProcessSource(
        py("import sys; sys.stdout.buffer.write(bytes(range(256)) * 10000)"),
        None,
        chunk_size=65536,
    )
    chunks = list(src)
    assert b"".join(chunks) == bytes(range(256)) * 10000
    assert all(len(c) == 65536 for c in chunks[:-1])
    assert src.finish() == 2_560_000
    assert src.returncode == 0


def test_stdin_is_devnull() -> None:
    src = ProcessSource(py("import sys; print(repr(sys.stdin.read()))"), None)
    assert read_all(src).strip() == b"''"
    src.finish()


def test_nonzero_exit_raises_dump_fail_with_stderr_tail() -> None:
    src = ProcessSource(
        py(
            "import sys; sys.stdout.write('partial'); sys.stdout.flush();"
            "sys.stderr.write('pg_dump: error: connection refused\\n'); sys.exit(3)"
        ),
        None,
    )
    assert read_all(src) == b"partial"
    with pytest.raises(PipelineError) as info:
        src.finish()
    err = info.value
    assert err.code == "DUMP_FAIL"
    assert err.returncode == 3
    assert "exited with status 3" in str(err)
    assert "connection refused" in str(err)
    assert "connection refused" in err.stderr_tail


def test_killed_by_signal_mid_stream() -> None:
    src = ProcessSource(
        py(
            "import os, sys, signal; sys.stdout.buffer.write(b'x' * 300000);"
            "sys.stdout.flush(); os.kill(os.getpid(), signal.SIGKILL)"
        ),
        None,
    )
    data = read_all(src)
    assert len(data) == 300000
    with pytest.raises(PipelineError) as info:
        src.finish()
    assert info.value.code == "DUMP_FAIL"
    assert info.value.returncode == -signal.SIGKILL
    assert "killed by signal SIGKILL" in str(info.value)


def test_huge_stderr_does_not_deadlock_and_is_bounded() -> None:
    # 20 MB of stderr before any stdout: without a drain thread the child
    # blocks on the full stderr pipe and we block on its empty stdout.
    src = ProcessSource(
        py(
            "import sys\n"
            "for i in range(20000): sys.stderr.write('warning %06d ' % i + 'y' * 1000 + '\\n')\n"
            "sys.stderr.write('THE END\\n'); sys.stdout.write('done'); sys.exit(1)"
        ),
        None,
    )
    start = time.monotonic()
    assert read_all(src) == b"done"
    with pytest.raises(PipelineError) as info:
        src.finish()
    assert time.monotonic() - start < 30
    msg = str(info.value)
    assert "THE END" in msg  # the tail is kept, not the head
    assert "warning 000000" not in msg
    assert len(msg) < 5000


def test_secrets_from_env_are_scrubbed_from_stderr() -> None:
    env = dict(os.environ, PGPASSWORD="hunter2-very-secret")
    src = ProcessSource(
        py(
            "import os, sys; sys.stderr.write('auth failed for ' + os.environ['PGPASSWORD']"
            " + ' and postgresql://u:pw123@h/db\\n'); sys.exit(2)"
        ),
        env,
    )
    read_all(src)
    with pytest.raises(PipelineError) as info:
        src.finish()
    msg = str(info.value)
    assert "hunter2-very-secret" not in msg
    assert "pw123" not in msg
    assert "***" in msg


def test_classifier_hook_decides_the_error() -> None:
    from backupagent.errors import AgentError

    seen = {}

    def classify(rc: int, stderr: bytes) -> AgentError:
        seen["rc"], seen["stderr"] = rc, stderr
        return AgentError("auth failed", code="AUTH_FAIL")

    src = ProcessSource(
        py("import sys; sys.stderr.write('denied'); sys.exit(1)"), None, classify=classify
    )
    read_all(src)
    with pytest.raises(AgentError) as info:
        src.finish()
    assert info.value.code == "AUTH_FAIL"
    assert seen == {"rc": 1, "stderr": b"denied"}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); look at its state
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("reason", ["CANCELLED", "TIMEOUT"])
def test_cancellation_kills_the_process_group(reason: str) -> None:
    # The dump forks a grandchild in its process group, prints its pid, then
    # keeps streaming; cancelling must kill both.
    code = (
        "import subprocess, sys, time\n"
        "c = subprocess.Popen(['sleep', '300'])\n"
        "sys.stdout.write('%d\\n' % c.pid); sys.stdout.flush()\n"
        "while True:\n"
        "    sys.stdout.buffer.write(b'z' * 65536); sys.stdout.flush(); time.sleep(0.01)\n"
    )
    token = CancelToken()
    src = ProcessSource(py(code), None, cancel=token, chunk_size=65536)
    first = src.read(65536)
    grandchild = int(first.split(b"\n", 1)[0])
    assert _pid_alive(grandchild)
    src.read(65536)
    token.cancel(reason)
    with pytest.raises(PipelineError) as info:
        while src.read(65536):
            pass
    assert info.value.code == reason
    deadline = time.monotonic() + 10
    while _pid_alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _pid_alive(grandchild)
    with pytest.raises(PipelineError) as info2:
        src.finish()
    assert info2.value.code == reason


def test_cancel_kills_a_hung_dump_that_writes_nothing() -> None:
    token = CancelToken()
    src = ProcessSource(py("import time; time.sleep(300)"), None, cancel=token)
    threading.Timer(0.5, token.cancel).start()
    start = time.monotonic()
    with pytest.raises(PipelineError) as info:
        src.read()
    assert time.monotonic() - start < 10
    assert info.value.code == "CANCELLED"


def test_finish_before_end_of_output_is_a_cut_short_dump() -> None:
    src = ProcessSource(
        py("import sys; sys.stdout.buffer.write(b'q' * 5_000_000)"), None, chunk_size=65536
    )
    assert src.read(65536)
    start = time.monotonic()
    with pytest.raises(PipelineError) as info:
        src.finish()
    assert time.monotonic() - start < 10
    assert info.value.code == "DUMP_FAIL"
    assert "before the end of its output" in str(info.value)


def test_missing_binary_is_tool_missing() -> None:
    src = ProcessSource(["/nonexistent/pg_dump_nope", "-Fc"], None)
    with pytest.raises(PipelineError) as info:
        src.read()
    assert info.value.code == "TOOL_MISSING"
    assert "pg_dump_nope" in str(info.value)


def test_close_kills_a_running_dump() -> None:
    src = ProcessSource(py("import time; time.sleep(300)"), None)
    src.start()
    pid = src.pid
    assert pid is not None and _pid_alive(pid)
    src.close()
    assert not _pid_alive(pid)
    src.close()


def test_file_source(tmp_path) -> None:
    path = tmp_path / "dump.db"
    path.write_bytes(b"s" * 3_000_000)
    src = FileSource(path, chunk_size=1 << 20)
    assert [len(c) for c in src] == [1 << 20, 1 << 20, 3_000_000 - (2 << 20)]
    assert src.finish() == 3_000_000

    partial = FileSource(path, chunk_size=1000)
    partial.read()
    with pytest.raises(PipelineError):
        partial.finish()

    with pytest.raises(PipelineError) as info:
        FileSource(tmp_path / "missing").read()
    assert "missing" in str(info.value)
