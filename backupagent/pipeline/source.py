"""Where a backup's bytes come from: a dump process's stdout, or a dump file.

The rule this module exists for: a dump that fails, is killed or is cut short
must never look like a good one. Bytes flow as they are produced (nothing is
spooled), so the verdict comes at the end: :meth:`ProcessSource.finish` waits
for the exit and raises :class:`PipelineError` unless the process exited 0,
its whole output was read and nobody cancelled. The job commits the stored
object only after ``finish()`` returned.

Both sources have the same small interface: ``read(n) -> bytes`` (``b""`` at
the end), iteration in chunks, ``finish()`` and ``close()``; ``name`` says
what is being read, for messages.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any, Callable, Dict, Iterator, List, Optional

from backupagent.cancelwatch import CancelWatch
from backupagent.errors import AgentError
from backupagent.pipeline.errors import DUMP_FAIL, PipelineError
from backupagent.pipeline.pipe_reader import PipeReader
from backupagent.pipeline.proc import (
    StderrTail,
    describe_exit,
    grow_pipe,
    kill_group,
    secret_env_values,
    spawn,
    tail_text,
    watch_process,
)

CHUNK_SIZE = 1 << 20

# Optional hook: (returncode, raw stderr tail) -> the error to raise, so an
# engine can turn "password authentication failed" into AUTH_FAIL.
Classifier = Callable[[int, bytes], AgentError]


def _cancelled_error(cancel: Any, what: str) -> PipelineError:
    reason = getattr(cancel, "reason", "CANCELLED") or "CANCELLED"
    word = "timed out" if reason == "TIMEOUT" else "was cancelled"
    return PipelineError(f"{what} {word}; the process was killed", code=reason)


class ProcessSource:
    """The stdout of a dump process, read in chunks.

    ``argv`` is a list (never a shell string) and ``env`` the child's complete
    environment: secrets (PGPASSWORD, ...) travel there, and their values are
    scrubbed from any stderr we quote. stdin is /dev/null; the child leads its
    own process group so cancelling kills everything it started.

    The process starts on the first ``read`` (or an explicit ``start()``).
    Cancellation is honoured between chunks *and* by a watcher thread, so a
    dump that hangs without output is killed too; the error's code is then
    the token's reason (CANCELLED or TIMEOUT).
    """

    def __init__(
        self,
        argv: List[str],
        env: Optional[Dict[str, str]],
        cwd: Optional[str] = None,
        cancel: Any = None,
        *,
        classify: Optional[Classifier] = None,
        chunk_size: int = CHUNK_SIZE,
    ) -> None:
        self.argv = list(argv)
        self.env = env
        self.cwd = cwd
        self.cancel = cancel
        self.classify = classify
        self.chunk_size = chunk_size
        self.name = os.path.basename(self.argv[0]) if self.argv else "dump"
        self.bytes_read = 0
        self.returncode: Optional[int] = None
        self._proc: Optional[subprocess.Popen] = None
        self._pipe: Optional[PipeReader] = None
        self._stderr: Optional[StderrTail] = None
        self._watcher: Optional[CancelWatch] = None
        self._eof = False
        self._finished = False
        self._secrets = secret_env_values(env)

    # lifecycle -------------------------------------------------------------
    def start(self) -> None:
        """Start the process (idempotent)."""
        if self._proc is not None:
            return
        self._check_cancel()
        proc = spawn(
            self.argv,
            self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            what=f"dump ({self.name})",
        )
        self._proc = proc
        assert proc.stdout is not None and proc.stderr is not None
        grow_pipe(proc.stdout)
        self._pipe = PipeReader.for_fd(proc.stdout.fileno())
        self._stderr = StderrTail(proc.stderr)
        self._stderr.start()
        if self.cancel is not None:
            self._watcher = watch_process(proc, self.cancel)
            self._watcher.start()

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc is not None else None

    def _check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.cancelled:
            self.close()
            raise _cancelled_error(self.cancel, f"dump ({self.name})")

    # reading ---------------------------------------------------------------
    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (a chunk if ``n`` < 0); ``b""`` once stdout is exhausted.

        From a pipe, reads are coalesced (``PipeReader``): a chunk is whatever
        the pipe held, at least half of it unless the dump ended or stalled.
        Elsewhere it blocks until ``n`` bytes or the end of output.
        """
        if self._eof:
            return b""
        self.start()
        self._check_cancel()
        assert self._proc is not None and self._proc.stdout is not None
        size = self.chunk_size if n is None or n < 0 else n
        reader = self._pipe or self._proc.stdout
        data = reader.read(size)
        if not data:
            self._eof = True
            self._check_cancel()
            return b""
        self.bytes_read += len(data)
        return data

    def __iter__(self) -> Iterator[bytes]:
        while True:
            chunk = self.read(self.chunk_size)
            if not chunk:
                return
            yield chunk

    # verdict ---------------------------------------------------------------
    def stderr_tail(self) -> str:
        """Redacted end of the child's stderr (empty before it ran)."""
        if self._stderr is None:
            return ""
        return tail_text(self._stderr.tail(), self._secrets)

    def finish(self) -> int:
        """Wait for the exit; raise unless it was a complete, successful dump.

        Fails when: the token was cancelled (code = its reason); the output
        was not read to the end (the dump was cut short: the process is
        killed); the process exited non-zero or was killed by a signal
        (DUMP_FAIL, or what ``classify`` returns). Returns the byte count.
        """
        if self._finished:
            if self.returncode != 0:
                raise PipelineError(f"dump ({self.name}) already failed", code=DUMP_FAIL)
            return self.bytes_read
        self._finished = True
        if self._proc is None:
            if self.cancel is not None and self.cancel.cancelled:
                raise _cancelled_error(self.cancel, f"dump ({self.name})")
            raise PipelineError(
                f"dump ({self.name}) never started: finish() was called before any read",
                code=DUMP_FAIL,
            )
        proc = self._proc
        cut_short = not self._eof
        if cut_short:
            kill_group(proc)
        rc = self._wait(proc)
        self.returncode = rc
        if self._watcher is not None:
            self._watcher.stop()
        if self.cancel is not None and self.cancel.cancelled:
            raise _cancelled_error(self.cancel, f"dump ({self.name})")
        if cut_short:
            raise PipelineError(
                f"dump ({self.name}) was stopped before the end of its output "
                f"after {self.bytes_read} bytes; the backup is incomplete",
                code=DUMP_FAIL,
                returncode=rc,
                stderr_tail=self.stderr_tail(),
            )
        if rc != 0:
            raw = self._stderr.tail() if self._stderr is not None else b""
            if self.classify is not None:
                raise self.classify(rc, raw)
            tail = tail_text(raw, self._secrets)
            raise PipelineError(
                f"{describe_exit(self.name, rc)} after {self.bytes_read} bytes of output; "
                "the dump is incomplete and was not stored"
                + (f"; stderr: {tail}" if tail else "; it wrote nothing to stderr"),
                code=DUMP_FAIL,
                returncode=rc,
                stderr_tail=tail,
            )
        return self.bytes_read

    def _wait(self, proc: subprocess.Popen) -> int:
        # The watcher kills on cancel, so a plain wait cannot hang past a
        # cancellation; the stdout close makes a writer that ignores SIGPIPE
        # (rare) see EPIPE once we stopped reading.
        if proc.stdout is not None:
            proc.stdout.close()
        return proc.wait()

    def close(self) -> None:
        """Kill the process if it still runs and release everything (idempotent).

        For error paths: after ``close()`` without a successful ``finish()``
        the dump counts as failed.
        """
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            kill_group(proc)
            try:
                if proc.stdout is not None:
                    proc.stdout.close()
            finally:
                proc.wait()
        if self._watcher is not None:
            self._watcher.stop()
        if self.returncode is None:
            self.returncode = proc.returncode

    def __enter__(self) -> ProcessSource:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class FileSource:
    """A finished dump file (e.g. SQLite's online-backup copy), read in chunks.

    ``finish()`` fails if the file was not read to its end, mirroring the
    process source so the job treats both alike.
    """

    def __init__(self, path: Any, *, cancel: Any = None, chunk_size: int = CHUNK_SIZE) -> None:
        self.path = os.fspath(path)
        self.name = os.path.basename(self.path)
        self.cancel = cancel
        self.chunk_size = chunk_size
        self.bytes_read = 0
        self._f: Any = None
        self._eof = False

    def start(self) -> None:
        if self._f is not None:
            return
        try:
            self._f = open(self.path, "rb")  # noqa: SIM115 - closed by close()/finish()
        except OSError as exc:
            raise PipelineError(
                f"dump file {self.path} cannot be read: {exc.strerror}", code=DUMP_FAIL
            ) from None

    def read(self, n: int = -1) -> bytes:
        if self._eof:
            return b""
        self.start()
        if self.cancel is not None and self.cancel.cancelled:
            self.close()
            raise _cancelled_error(self.cancel, f"reading dump file {self.name}")
        data = self._f.read(self.chunk_size if n is None or n < 0 else n)
        if not data:
            self._eof = True
            return b""
        self.bytes_read += len(data)
        return data

    def __iter__(self) -> Iterator[bytes]:
        while True:
            chunk = self.read(self.chunk_size)
            if not chunk:
                return
            yield chunk

    def stderr_tail(self) -> str:
        return ""

    def finish(self) -> int:
        eof = self._eof
        self.close()
        if self.cancel is not None and self.cancel.cancelled:
            raise _cancelled_error(self.cancel, f"reading dump file {self.name}")
        if not eof:
            raise PipelineError(
                f"dump file {self.path} was not read to its end ({self.bytes_read} bytes read)",
                code=DUMP_FAIL,
            )
        return self.bytes_read

    def close(self) -> None:
        if self._f is not None:
            self._f.close()

    def __enter__(self) -> FileSource:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
