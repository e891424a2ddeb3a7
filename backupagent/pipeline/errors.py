"""The one error type of the pipeline, carrying what the job needs to report."""

from __future__ import annotations

from typing import Optional

from backupagent.errors import AgentError

DUMP_FAIL = "DUMP_FAIL"
COMPRESS_FAIL = "COMPRESS_FAIL"
ENCRYPT_FAIL = "ENCRYPT_FAIL"
UPLOAD_FAIL = "UPLOAD_FAIL"
RESTORE_FAIL = "RESTORE_FAIL"
DECRYPT_FAIL = "DECRYPT_FAIL"
DECOMPRESS_FAIL = "DECOMPRESS_FAIL"
CHECKSUM_MISMATCH = "CHECKSUM_MISMATCH"


class PipelineError(AgentError):
    """A stage of a backup or restore stream failed, or it was cancelled.

    ``code`` is the protocol's ``errorCode`` word (DUMP_FAIL, CANCELLED, ...).
    For a failed child process ``returncode`` is its exit status (negative:
    killed by that signal) and ``stderr_tail`` the redacted end of its stderr,
    so the job can ask the engine to classify it further (AUTH_FAIL, ...).
    """

    code = DUMP_FAIL

    def __init__(
        self,
        message: str,
        *,
        code: Optional[str] = None,
        returncode: Optional[int] = None,
        stderr_tail: str = "",
    ) -> None:
        super().__init__(message, code=code)
        self.returncode = returncode
        self.stderr_tail = stderr_tail
