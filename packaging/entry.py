"""PyInstaller entry point: the frozen ``backupagent`` executable.

A separate script (not ``backupagent/__main__.py``) so the bundle's entry does
not depend on running a package as ``-m``, which a frozen build cannot do.
"""

from __future__ import annotations

import sys

from backupagent.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
