"""PsqlSession against a psql that dies before reading a byte (the server unreachable)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from backupagent.engines.base import EngineError
from backupagent.engines.pg_session import PsqlSession


def _dying_psql(tmp_path: Path) -> str:
    script = tmp_path / "psql"
    script.write_text(
        "#!/bin/sh\n"
        'echo \'psql: error: connection to server at "127.0.0.1", port 1 failed: '
        "Connection refused' >&2\n"
        "exit 2\n"
    )
    script.chmod(0o755)
    return str(script)


def test_a_psql_gone_before_the_first_query_reports_its_own_error(tmp_path: Path) -> None:
    """The query is left in stdin's buffer when psql is already gone: the
    session must report psql's error, and closing must not trade it for a
    BrokenPipeError (it did: the one-off backup of an unreachable server
    failed with IO_ERROR instead of DB_UNREACHABLE)."""
    seen = []

    def on_error(rc: int, stderr: bytes) -> EngineError:
        seen.append((rc, stderr))
        return EngineError(stderr.decode().strip(), code="DB_UNREACHABLE")

    session = PsqlSession(_dying_psql(tmp_path), "host=127.0.0.1 port=1", {}, on_error)
    deadline = time.monotonic() + 10
    while not session.exited and time.monotonic() < deadline:
        time.sleep(0.01)
    assert session.exited
    with pytest.raises(EngineError) as info:
        session.query("SELECT 1")
    assert info.value.code == "DB_UNREACHABLE" and "Connection refused" in str(info.value)
    assert seen[0][0] == 2
    assert session.close() == 2
    assert session.close() == 2  # twice is fine
