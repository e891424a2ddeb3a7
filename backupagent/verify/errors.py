"""Verification error codes.

A verification that cannot restore is reported as ``error`` (not ``failed``),
and the code says which link of the chain broke, so an operator knows whether
to fix the host (image, Docker, key) or to distrust the backup itself.
"""

from __future__ import annotations

from backupagent.errors import AgentError

VERIFY_IMAGE_MISSING = "VERIFY_IMAGE_MISSING"
VERIFY_DOCKER_UNAVAILABLE = "VERIFY_DOCKER_UNAVAILABLE"
VERIFY_CONTAINER_FAIL = "VERIFY_CONTAINER_FAIL"
VERIFY_TIMEOUT = "VERIFY_TIMEOUT"
VERIFY_CANCELLED = "VERIFY_CANCELLED"
VERIFY_SHA_MISMATCH = "VERIFY_SHA_MISMATCH"
VERIFY_DECRYPT_FAIL = "VERIFY_DECRYPT_FAIL"
VERIFY_DECOMPRESS_FAIL = "VERIFY_DECOMPRESS_FAIL"
VERIFY_NO_SOURCE = "VERIFY_NO_SOURCE"
VERIFY_RESTORE_FAIL = "RESTORE_FAIL"
VERIFY_QUERY_FAIL = "VERIFY_QUERY_FAIL"
VERIFY_UNSUPPORTED = "UNSUPPORTED"


class VerifyError(AgentError):
    """A verification could not complete; ``code`` names the broken link."""

    code = VERIFY_RESTORE_FAIL
