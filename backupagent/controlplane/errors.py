"""Errors the control plane's store raises; the app maps each to an HTTP status.

Keeping them HTTP-free lets the admin CLI and the tests use the store directly
and still get the same, precise reasons the API returns.
"""

from __future__ import annotations

from backupagent.errors import AgentError


class ControlPlaneError(AgentError):
    """Base of the control plane's own errors."""

    code = "CONTROL_PLANE_ERROR"


class TokenRejected(ControlPlaneError):
    """A registration token is unknown, already used or expired (HTTP 401)."""

    code = "TOKEN_REJECTED"


class NotFound(ControlPlaneError):
    """The job (or agent) does not exist, or belongs to another agent (HTTP 404).

    One error for both cases on purpose: an agent must not learn which job ids
    other agents have.
    """

    code = "NOT_FOUND"


class Conflict(ControlPlaneError):
    """The request contradicts the job's state, e.g. an update after a terminal status (409)."""

    code = "CONFLICT"


class ConfigDocInvalid(ControlPlaneError):
    """A config document is not ``{schedules: [...], targets: [...], alertChannels: [...]}``."""

    code = "CONFIG_INVALID"

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("config document is invalid: " + "; ".join(self.problems))
