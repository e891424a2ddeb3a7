"""A long-lived ``psql`` process driven over stdin/stdout.

Why not a driver: the agent has no libpq binding as a dependency, and the
host already has ``psql`` wherever it has ``pg_dump``. The one thing a
one-shot ``psql -c`` cannot do is hold a transaction open while ``pg_dump``
runs, which the exported snapshot needs; this class does only that.

Each statement is followed by an ``\\echo`` of a random marker, so the reader
knows where a result ends. With ``ON_ERROR_STOP`` a failed statement makes
psql exit, which the reader sees as end of output; the captured stderr then
says why.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from typing import Callable, Dict, List, Optional, Tuple

from backupagent.engines.base import EngineError


class PsqlSession:
    """One psql process = one database session; :meth:`close` always ends it."""

    def __init__(
        self,
        psql: str,
        conninfo: str,
        env: Dict[str, str],
        on_error: Callable[[int, bytes], EngineError],
    ) -> None:
        self._on_error = on_error
        self._marker = f"__backupagent_{os.urandom(8).hex()}__"
        self._stderr = bytearray()
        try:
            self._proc = subprocess.Popen(
                [
                    psql,
                    "-X",
                    "-q",
                    "-A",
                    "-t",
                    "-w",
                    "-v",
                    "ON_ERROR_STOP=1",
                    f"--dbname={conninfo}",
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
            )
        except FileNotFoundError:
            raise EngineError(
                f"{psql} not found; install postgresql-client", code="TOOL_MISSING"
            ) from None
        self._reader = threading.Thread(target=self._drain_stderr, daemon=True)
        self._reader.start()

    def _drain_stderr(self) -> None:
        assert self._proc.stderr is not None
        for line in self._proc.stderr:
            self._stderr += line
            if len(self._stderr) > 65536:
                del self._stderr[:-65536]

    def _fail(self) -> EngineError:
        try:
            rc = self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            rc = self._proc.wait()
        self._reader.join(timeout=5)
        return self._on_error(rc, bytes(self._stderr))

    def query(self, sql: str) -> str:
        """Run one statement (or several); return its tuples-only output."""
        return self._roundtrip(sql.rstrip().rstrip(";") + ";\n")

    def _roundtrip(self, script: str) -> str:
        """Send a psql script, then read its output up to our end marker."""
        assert self._proc.stdin is not None and self._proc.stdout is not None
        payload = script + "\\echo " + self._marker + "\n"
        try:
            self._proc.stdin.write(payload.encode("utf-8"))
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise self._fail() from None
        lines: List[bytes] = []
        while True:
            line = self._proc.stdout.readline()
            if not line:
                raise self._fail()
            if line.rstrip(b"\r\n") == self._marker.encode():
                return b"".join(lines).decode("utf-8").rstrip("\n")
            lines.append(line)

    def query_or_error(self, sql: str) -> Tuple[Optional[str], Optional[str]]:
        """Run one read-only statement whose failure must not end the session.

        Only inside an open transaction. Returns ``(output, None)`` or
        ``(None, server error message)``. The statement runs in a savepoint
        that is always rolled back and released, so a failed optional query
        (the schema snapshot on an old server) leaves the open transaction,
        and the snapshot pg_dump imports, intact.
        """
        out = self._roundtrip(
            "SAVEPOINT backupagent_optional;\n\\set ON_ERROR_STOP 0\n"
            + sql.rstrip().rstrip(";")
            + ";\n\\echo :ERROR :LAST_ERROR_MESSAGE\n\\set ON_ERROR_STOP 1\n"
            "ROLLBACK TO SAVEPOINT backupagent_optional;\n"
            "RELEASE SAVEPOINT backupagent_optional;\n"
        )
        body, _, status = out.rpartition("\n")
        failed, _, message = status.partition(" ")
        if failed == "false":
            return body, None
        return None, message.strip() or "query failed"

    @property
    def exited(self) -> bool:
        """The psql process has ended (a failed statement under ON_ERROR_STOP)."""
        return self._proc.poll() is not None

    def kill(self) -> None:
        """End the session at once, even mid-query (the server rolls back)."""
        if self._proc.poll() is None:
            self._proc.kill()

    def close(self, timeout: float = 30.0) -> Optional[int]:
        """Roll back whatever is open and end the process; safe to call twice."""
        proc = self._proc
        if proc.poll() is None:
            try:
                assert proc.stdin is not None
                proc.stdin.write(b"ROLLBACK;\n\\q\n")
                proc.stdin.flush()
                proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None and not pipe.closed:
                # A psql that died (the server unreachable) left our last
                # query in stdin's buffer; closing retries the flush and
                # fails, after closing the descriptor. Nothing is lost, and
                # the error that ended the session is the one to report.
                with contextlib.suppress(OSError):
                    pipe.close()
        self._reader.join(timeout=5)
        if proc.stderr is not None:
            proc.stderr.close()
        return proc.returncode
