"""Process exit codes, documented in README.md and ``backupagent --help``.

Scripts and the installer branch on these, so they are part of the public
interface: never renumber one, only add.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    FAILURE = 1  # the command ran and failed (a backup failed, a check failed)
    USAGE = 2  # bad command line (click's own code for usage errors)
    CONFIG = 3  # invalid settings or config file
    NOT_REGISTERED = 4  # the command needs a registration and there is none
    ALREADY_REGISTERED = 5  # register without --force on a registered host
    AUTH = 6  # the control plane rejected the token or API key
    UNREACHABLE = 7  # the control plane could not be reached
    SERVER = 8  # the control plane answered with an error we cannot act on
    INTERRUPTED = 130  # stopped by SIGINT/SIGTERM before finishing


EXIT_CODE_HELP = """\b
Exit codes:
  0  success
  1  the operation failed (see the message)
  2  usage error
  3  invalid settings or config file
  4  not registered (run `backupagent register`)
  5  already registered (use --force to replace)
  6  token or API key rejected by the control plane
  7  control plane unreachable
  8  control plane error
  130 interrupted"""
