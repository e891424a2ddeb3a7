"""What can go wrong talking to the control plane, by what the caller should do."""

from __future__ import annotations

from typing import Optional

from backupagent.errors import AgentError


class ApiError(AgentError):
    """The control plane answered with an error (``{"error", "message"}``)."""

    code = "API_ERROR"

    def __init__(
        self, message: str, *, status: Optional[int] = None, error: Optional[str] = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error


class AuthRejected(ApiError):
    """401/403: the token or API key is not accepted. Retrying cannot help."""

    code = "AUTH_REJECTED"


class PermanentApiError(ApiError):
    """Another 4xx: this request, as sent, will never succeed."""

    code = "API_REJECTED"


class TransientApiError(ApiError):
    """5xx/408/429 that outlasted the retry budget."""

    code = "API_UNAVAILABLE"


class Unreachable(ApiError):
    """No HTTP answer at all: DNS, refused connection, TLS failure, timeout."""

    code = "API_UNREACHABLE"
