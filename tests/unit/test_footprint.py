"""The idle daemon must not pay for what only a job needs (boto3, docker)."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("boto3", "botocore", "docker", "fastapi", "uvicorn")


def test_daemon_start_up_imports_no_heavy_modules() -> None:
    code = (
        "import sys\n"
        "from backupagent.cli.main import cli\n"
        "import backupagent.cli.run, backupagent.daemon.agent, backupagent.jobs.runner\n"
        "import backupagent.discovery\n"
        "from backupagent.jobs.runner import ScheduleRunner\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == ""
