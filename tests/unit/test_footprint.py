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


def test_a_backup_reaches_its_dump_without_loading_cryptography() -> None:
    """Everything a one-off backup runs before pg_dump starts (CLI, recipient
    check, job, engine, pipeline set-up) stays off ``cryptography``: loading
    it takes ~20 ms, which would delay the dump by as much. The encryptor
    loads it in the upload thread once the dump runs."""
    code = (
        "import sys\n"
        "import backupagent.cli.main, backupagent.cli.backup, backupagent.jobs.backup\n"
        "import backupagent.engines.postgresql, backupagent.pipeline.run\n"
        "import backupagent.targets.local, backupagent.engines.credentials\n"
        "from backupagent.crypto.recipient import parse_recipient\n"
        "r = parse_recipient('age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p')\n"
        "assert str(r).startswith('age1')\n"
        "print(','.join(m for m in sys.modules if m.startswith('cryptography')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == ""
