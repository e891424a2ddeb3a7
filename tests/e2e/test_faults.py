"""Fault injection at the job level: a real backup (the shipped CLI as a
subprocess) meets a real fault, and each test asserts the job's outcome, its
errorCode and message (no secret), that nothing half-written was committed and
that no resource is left behind.

The table these tests prove is in docs/reliability.md ("Fault injection").
Faults already covered elsewhere (control plane down, 500s on delivery, 401,
kill -9, SIGTERM, pipeline-level pg_dump kill) are not repeated here.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import psutil
import pytest
import yaml

from tests.e2e.conftest import Agent, wait_until
from tests.servers import free_port, require

pytestmark = pytest.mark.e2e


# --- helpers -----------------------------------------------------------------


def _credentials(agent: Agent, pg: Any, password: Optional[str] = None) -> None:
    agent.config_dir.mkdir(parents=True, exist_ok=True)
    creds = agent.config_dir / "credentials.yaml"
    pw = pg.server.password if password is None else password
    creds.write_text(
        yaml.safe_dump({"databases": {"db-1": {"user": pg.server.user, "password": pw}}})
    )
    creds.chmod(0o600)


def _schedule(pg: Any, *, port: Optional[int] = None, level: int = 3) -> Dict[str, Any]:
    return {
        "id": "s",
        "databaseId": "db-1",
        "targetId": "t",
        "cron": "0 3 * * *",
        "database": {
            "id": "db-1",
            "dbType": "postgresql",
            "host": "127.0.0.1",
            "port": str(port or pg.server.port),
            "databaseName": pg.name,
        },
        "compression": {"algorithm": "zstd", "level": level},
    }


def _write_config(
    tmp_path: Path, schedule: Dict[str, Any], target: Dict[str, Any], **extra: Any
) -> Path:
    cfg = tmp_path / "backups.yaml"
    schedule = {**schedule, **extra}
    cfg.write_text(
        yaml.safe_dump(
            {"schedules": [schedule], "targets": [{"id": "t", **target}], "alertChannels": []}
        )
    )
    return cfg


def _local(path: Path) -> Dict[str, Any]:
    return {"type": "local", "path": str(path)}


def _table(pg: Any, rows: int, random_text: bool = True) -> None:
    """Rows of random hex (does not compress away) or repetitive text (slow at level 19)."""
    value = (
        "md5(random()::text) || md5(random()::text) || md5(random()::text)"
        if random_text
        else "md5(g::text) || repeat('x', 200)"
    )
    pg.psql(f"CREATE TABLE big AS SELECT g AS id, {value} AS v FROM generate_series(1, {rows}) g")


def _backup_argv(cfg: Path) -> List[str]:
    return [
        sys.executable,
        "-m",
        "backupagent",
        "backup",
        "--schedule",
        "s",
        "--config-file",
        str(cfg),
        "--json",
    ]


def _backup(agent: Agent, cfg: Path, timeout: float = 180, **env: str) -> Dict[str, Any]:
    """``backupagent backup --schedule s --json``: the result document (and the exit code)."""
    res = subprocess.run(
        _backup_argv(cfg),
        capture_output=True,
        text=True,
        env={**agent.env(), **env},
        timeout=timeout,
        check=False,
    )
    return _result(res.stdout, res.stderr, res.returncode)


def _result(stdout: str, stderr: str, rc: int) -> Dict[str, Any]:
    """The ``--json`` document printed on stdout, with the exit code and all output."""
    start = stdout.find("{")
    assert start >= 0, f"no JSON result (rc {rc}): {stdout}\n{stderr}"
    doc, _ = json.JSONDecoder().raw_decode(stdout[start:])
    doc["_rc"], doc["_out"] = rc, stdout + stderr
    return dict(doc)


def _job_record(agent: Agent) -> Dict[str, Any]:
    records = list((agent.state_dir / "jobs").glob("*.json"))
    assert len(records) == 1, records
    return json.loads(records[0].read_text())


def _assert_failed(agent: Agent, doc: Dict[str, Any], codes: tuple, secret: str = "") -> str:
    """The CLI and the job record agree: failed with one of ``codes``; no secret shown."""
    assert doc["status"] == "failed" and doc["_rc"] != 0, doc
    assert doc["errorCode"] in codes, doc
    final = _job_record(agent)["statuses"][-1]
    assert final["status"] == "failed" and final["errorCode"] == doc["errorCode"], final
    assert final["errorMessage"] == doc["errorMessage"]
    if secret:
        assert secret not in doc["_out"]
        assert secret not in json.dumps(_job_record(agent))
    return str(doc["errorMessage"])


def _files(root: Path) -> List[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def _assert_no_leftovers(agent: Agent, target: Optional[Path] = None) -> None:
    if target is not None:
        assert _files(target) == [], "a failed backup left files in the target"
    spool = agent.state_dir / "spool"
    assert not list(spool.iterdir()) if spool.exists() else True
    running = agent.state_dir / "running"
    assert not list(running.glob("*.json")) if running.exists() else True
    assert not _children_named("pg_dump")


def _children_named(name: str) -> List[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name", "ppid"]):
        with contextlib.suppress(psutil.Error):
            if proc.info["name"] == name and proc.info["ppid"] == os.getpid():
                found.append(proc)
    return found


@contextlib.contextmanager
def _tmpfs(path: Path, size: str = "2m") -> Iterator[Path]:
    """A small tmpfs at ``path``, always unmounted."""
    require(os.geteuid() == 0, "mounting a tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    require(res.returncode == 0, f"cannot mount a tmpfs: {res.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


# --- the database ------------------------------------------------------------


def test_database_port_closed_is_db_unreachable(
    agent: Agent, pg_database: Any, tmp_path: Path
) -> None:
    _credentials(agent, pg_database)
    backups = tmp_path / "backups"
    cfg = _write_config(tmp_path, _schedule(pg_database, port=free_port()), _local(backups))
    started = time.monotonic()
    doc = _backup(agent, cfg, timeout=120)
    message = _assert_failed(agent, doc, ("DB_UNREACHABLE",), pg_database.server.password)
    assert "127.0.0.1" in message
    assert time.monotonic() - started < 60
    _assert_no_leftovers(agent, backups)


def test_wrong_password_is_auth_fail_without_the_password(
    agent: Agent, pg_database: Any, tmp_path: Path
) -> None:
    wrong = "Wr0ng-pa55-" + os.urandom(6).hex()
    _credentials(agent, pg_database, password=wrong)
    backups = tmp_path / "backups"
    cfg = _write_config(tmp_path, _schedule(pg_database), _local(backups))
    doc = _backup(agent, cfg, timeout=120)
    message = _assert_failed(agent, doc, ("AUTH_FAIL",), wrong)
    assert pg_database.server.user in message
    _assert_no_leftovers(agent, backups)


def test_pg_dump_killed_mid_stream_fails_the_job_and_commits_nothing(
    agent: Agent, pg_database: Any, tmp_path: Path
) -> None:
    _table(pg_database, 250000, random_text=False)  # ~60 MB: seconds at level 19
    _credentials(agent, pg_database)
    backups = tmp_path / "backups"
    cfg = _write_config(tmp_path, _schedule(pg_database, level=19), _local(backups))
    proc = subprocess.Popen(
        _backup_argv(cfg),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=agent.env(),
    )
    agent.procs.append(proc)

    def pg_dump() -> Optional[psutil.Process]:
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(proc.pid).children(recursive=True):
                if child.name() == "pg_dump":
                    return child
        return None

    child = wait_until(pg_dump, 60, "pg_dump to start")
    time.sleep(0.5)  # mid-stream: it has connected and is sending rows
    child.kill()
    out, err = proc.communicate(timeout=120)
    doc = _result(out, err, proc.returncode)
    message = _assert_failed(agent, doc, ("DUMP_FAIL",), pg_database.server.password)
    assert "pg_dump" in message and ("SIGKILL" in message or "signal 9" in message), message
    _assert_no_leftovers(agent, backups)


# --- disk full ------------------------------------------------------------------


def test_local_target_disk_full_fails_with_no_space_and_no_partial_file(
    agent: Agent, pg_database: Any, tmp_path: Path
) -> None:
    _table(pg_database, 100000)  # ~10 MB of hex: ~5 MB compressed, more than the 2 MB tmpfs
    _credentials(agent, pg_database)
    with _tmpfs(tmp_path / "small") as backups:
        cfg = _write_config(tmp_path, _schedule(pg_database), _local(backups))
        doc = _backup(agent, cfg)
        message = _assert_failed(agent, doc, ("UPLOAD_FAIL", "IO_ERROR"))
        assert "No space left on device" in message, message
        assert str(backups) in message or "file://" in message, message
        _assert_no_leftovers(agent, backups)
        assert [p.name for p in backups.rglob("*")] == [] or not _files(backups)
