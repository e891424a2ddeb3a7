"""Error types shared by every layer.

Each carries a short upper-case ``code`` (the protocol's ``errorCode`` words) so
the job layer can report a failure without knowing which layer raised it, and a
message that is safe to show: callers must never put a secret into one.
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""

    code = "AGENT_ERROR"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)


class ConfigInvalid(AgentError):
    """A config (from the control plane or a YAML file) failed validation.

    ``problems`` lists every bad field as ``path: message`` so a user can fix
    them all in one go instead of one per run.
    """

    code = "CONFIG_INVALID"

    def __init__(self, problems: list[str], *, source: str = "config") -> None:
        self.problems = list(problems)
        self.source = source
        head = f"{source} is invalid ({len(self.problems)} problem"
        head += "s)" if len(self.problems) != 1 else ")"
        super().__init__(head + ":\n  " + "\n  ".join(self.problems))


class SettingsError(AgentError):
    """The host's own settings (agent.yaml, key file, directories) are unusable."""

    code = "SETTINGS_INVALID"
