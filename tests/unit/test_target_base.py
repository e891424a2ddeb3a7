"""The writer state machine every backend shares, and key validation."""

from __future__ import annotations

from typing import List

import pytest

from backupagent.errors import AgentError
from backupagent.targets.base import TargetError, WriterBase, validate_key


class ListWriter(WriterBase):
    """A real (in-memory) backend for the base class: records what happened."""

    def __init__(self, fail_commit: bool = False) -> None:
        super().__init__("mem://x")
        self.chunks: List[bytes] = []
        self.events: List[str] = []
        self.fail_commit = fail_commit

    def _write(self, data: memoryview) -> None:
        self.chunks.append(bytes(data))

    def _commit(self) -> None:
        if self.fail_commit:
            raise TargetError("store said no")
        self.events.append("commit")

    def _abort(self) -> None:
        self.events.append("abort")


def test_commit_returns_url_and_abort_after_commit_is_noop() -> None:
    w = ListWriter()
    w.write(b"ab")
    w.write(memoryview(b"cd"))
    w.write(b"")
    assert w.bytes_written == 4
    assert w.commit() == "mem://x"
    w.abort()
    assert w.events == ["commit"]


def test_failed_commit_aborts_once() -> None:
    w = ListWriter(fail_commit=True)
    w.write(b"x")
    with pytest.raises(TargetError):
        w.commit()
    w.abort()
    assert w.events == ["abort"]
    assert w.closed and not w.committed


def test_context_manager_aborts_on_exception_and_on_forgotten_commit() -> None:
    with pytest.raises(KeyboardInterrupt), ListWriter() as w:
        raise KeyboardInterrupt
    assert w.events == ["abort"]
    with ListWriter() as w2:
        w2.write(b"x")
    assert w2.events == ["abort"]
    with ListWriter() as w3:
        w3.commit()
    assert w3.events == ["commit"]


def test_abort_never_raises() -> None:
    class Broken(ListWriter):
        def _abort(self) -> None:
            raise TargetError("network gone")

    w = Broken()
    w.abort()
    w.abort()


def test_target_error_is_an_agent_error_with_upload_code() -> None:
    err = TargetError("x")
    assert isinstance(err, AgentError) and err.code == "UPLOAD_FAIL"


@pytest.mark.parametrize("key", ["a", "a/b.c", "h/pg/db/20240101T000000Z-j.dump", "a-b/_c"])
def test_valid_keys(key: str) -> None:
    assert validate_key(key) == key


@pytest.mark.parametrize(
    "key",
    ["", "/a", "a/", "a//b", "..", "a/../b", "./a", ".a", "a\\b", "a\x00", "a\nb", "x" * 1025],
)
def test_invalid_keys(key: str) -> None:
    with pytest.raises(TargetError):
        validate_key(key)
