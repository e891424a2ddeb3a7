"""`backupagent backup URL --to`, `list`, `restore`, `decrypt` against real PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, Tuple

import pytest
import yaml

from backupagent.crypto.age import generate_identity
from backupagent.exitcodes import ExitCode


def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        BACKUPAGENT_CONFIG_DIR=str(tmp_path / "etc"),
        BACKUPAGENT_STATE_DIR=str(tmp_path / "state"),
        BACKUPAGENT_LOG_FORMAT="json",
    )
    return subprocess.run(
        [sys.executable, "-m", "backupagent", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


@pytest.fixture
def setup(tmp_path: Path, pg_database) -> Dict[str, str]:  # type: ignore[no-untyped-def]
    server = pg_database.server
    (tmp_path / "etc").mkdir()
    creds = tmp_path / "etc" / "credentials.yaml"
    creds.write_text(
        yaml.safe_dump(
            {"databases": {"postgresql": {"user": server.user, "password": server.password}}}
        )
    )
    creds.chmod(0o600)
    identity = generate_identity()
    key = tmp_path / "key.txt"
    key.write_text(identity.secret + "\n")
    key.chmod(0o600)
    url = f"postgresql://{server.user}@127.0.0.1:{server.port}/{pg_database.name}"
    return {
        "url": url,
        "recipient": identity.recipient,
        "key": str(key),
        "target": f"file://{tmp_path / 'backups'}",
    }


def _counts(pg, db: str) -> str:  # type: ignore[no-untyped-def]
    return pg.server.psql(
        "SELECT (SELECT count(*) FROM customers) || '/' || (SELECT count(*) FROM orders)", db
    ).strip()


def test_backup_list_restore_roundtrip(tmp_path: Path, setup: Dict[str, str], pg_database) -> None:  # type: ignore[no-untyped-def]
    res = cli(
        tmp_path,
        "backup",
        setup["url"],
        "--to",
        setup["target"],
        "-r",
        setup["recipient"],
        "--json",
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["status"] == "completed" and out["uploadPath"].endswith(".dump.zst.age")
    assert pg_database.server.password not in res.stdout + res.stderr

    listing = json.loads(cli(tmp_path, "list", setup["target"], "--json").stdout)
    assert [b["url"] for b in listing["backups"]] == [out["uploadPath"]]

    restored = pg_database.name + "_r"
    pg_database.server.create_database(restored)
    target_url = setup["url"].rsplit("/", 1)[0] + "/" + restored
    res = cli(tmp_path, "restore", out["uploadPath"], "--to", target_url, "-i", setup["key"])
    assert res.returncode == 0, res.stderr
    assert "2 tables' row counts match the manifest" in res.stdout
    assert _counts(pg_database, restored) == _counts(pg_database, pg_database.name) == "10/25"

    # Not empty now: refused without --force.
    res = cli(tmp_path, "restore", out["uploadPath"], "--to", target_url, "-i", setup["key"])
    assert res.returncode == ExitCode.FAILURE and "not empty" in res.stderr

    # decrypt gives the plain custom-format dump.
    plain = tmp_path / "plain.dump"
    res = cli(tmp_path, "decrypt", out["uploadPath"], "-i", setup["key"], "-o", str(plain))
    assert res.returncode == 0, res.stderr
    assert plain.read_bytes()[:5] == b"PGDMP"


def test_restore_refuses_a_tampered_object_and_a_missing_key(
    tmp_path: Path, setup: Dict[str, str], pg_database
) -> None:  # type: ignore[no-untyped-def]
    res = cli(
        tmp_path,
        "backup",
        setup["url"],
        "--to",
        setup["target"],
        "-r",
        setup["recipient"],
        "--json",
    )
    upload = json.loads(res.stdout)["uploadPath"]
    path = Path(upload[len("file://") :])
    restored = pg_database.name + "_t"
    pg_database.server.create_database(restored)
    target_url = setup["url"].rsplit("/", 1)[0] + "/" + restored

    res = cli(tmp_path, "restore", upload, "--to", target_url)
    assert res.returncode == ExitCode.FAILURE and "--identity" in res.stderr

    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    res = cli(tmp_path, "restore", upload, "--to", target_url, "-i", setup["key"])
    assert res.returncode == ExitCode.FAILURE
    assert "corrupt" in res.stderr or "SHA-256" in res.stderr
    # The restore tool was killed before it saw a clean end of input.
    tables = pg_database.server.psql(
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", restored
    ).strip()
    assert tables == "0"


def test_one_off_backup_of_an_unreachable_database_fails_cleanly(
    tmp_path: Path, setup: Dict[str, str]
) -> None:
    from tests.servers import free_port

    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    res = cli(tmp_path, "backup", url, "--to", setup["target"])
    assert res.returncode == ExitCode.FAILURE
    assert "DB_UNREACHABLE" in res.stderr
    backups = tmp_path / "backups"
    assert not backups.exists() or not [p for p in backups.rglob("*") if p.is_file()]


def test_verify_command_on_a_stored_backup(
    tmp_path: Path, setup: Dict[str, str], pg_database, docker_engine, postgres_image: str
) -> None:  # type: ignore[no-untyped-def]
    res = cli(
        tmp_path,
        "backup",
        setup["url"],
        "--to",
        setup["target"],
        "-r",
        setup["recipient"],
        "--json",
    )
    upload = json.loads(res.stdout)["uploadPath"]
    res = cli(
        tmp_path,
        "verify",
        upload,
        "-i",
        setup["key"],
        "--image",
        postgres_image,
        "--query",
        "SELECT count(*) FROM customers",
        "--expect",
        "10",
        "--json",
    )
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(res.stdout)
    assert report["status"] == "passed" and report["pathTaken"] == "stored-object"
    assert {c["checkType"] for c in report["checks"]} == {
        "row_count",
        "schema_match",
        "custom_query",
    }
    res = cli(
        tmp_path,
        "verify",
        upload,
        "-i",
        setup["key"],
        "--image",
        postgres_image,
        "--query",
        "SELECT count(*) FROM customers",
        "--expect",
        "11",
    )
    assert res.returncode == ExitCode.FAILURE
    assert "expected 11, got 10" in res.stdout


def _on_a_terminal(tmp_path: Path, *args: str) -> Tuple[int, str, str]:
    """Run the CLI with stderr on a pseudo-terminal (where progress shows);
    returns (exit code, stdout, what the terminal received)."""
    import pty

    master, slave = pty.openpty()
    env = dict(
        os.environ,
        BACKUPAGENT_CONFIG_DIR=str(tmp_path / "etc"),
        BACKUPAGENT_STATE_DIR=str(tmp_path / "state"),
        BACKUPAGENT_LOG_FORMAT="json",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "backupagent", *args],
        stdout=subprocess.PIPE,
        stderr=slave,
        env=env,
    )
    os.close(slave)
    seen = bytearray()
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        seen += data
    out = proc.stdout.read() if proc.stdout else b""
    rc = proc.wait(timeout=300)
    os.close(master)
    return rc, out.decode(), seen.decode("utf-8", "replace")


def test_backup_and_restore_show_progress_on_a_terminal(  # type: ignore[no-untyped-def]
    tmp_path: Path, setup: Dict[str, str], pg_database
) -> None:
    rc, out, tty = _on_a_terminal(
        tmp_path, "backup", setup["url"], "--to", setup["target"], "-r", setup["recipient"]
    )
    assert rc == 0, tty
    label = f"postgresql/{pg_database.name}: "
    assert "\r" + label in tty and "/s" in tty and "stored" in tty
    url = next(line.split()[-1] for line in (out + tty).splitlines() if "file://" in line)
    url = url[url.index("file://") :]

    restored = pg_database.name + "_p"
    pg_database.server.create_database(restored)
    target_url = setup["url"].rsplit("/", 1)[0] + "/" + restored
    rc, out, tty = _on_a_terminal(tmp_path, "restore", url, "--to", target_url, "-i", setup["key"])
    assert rc == 0, tty
    assert "\r" + label.replace(pg_database.name, restored) + "restoring" in tty
    assert "read of" in tty and "(100 %)" in tty  # the manifest gives the stored size
    assert "checking" in tty and "row counts against the manifest" in tty
    assert "row counts match the manifest" in out
    assert pg_database.server.password not in tty + out


def test_no_progress_when_not_a_terminal(tmp_path: Path, setup: Dict[str, str]) -> None:
    res = cli(tmp_path, "backup", setup["url"], "--to", setup["target"], "-r", setup["recipient"])
    assert res.returncode == 0, res.stderr
    assert "\r" not in res.stderr and "\r" not in res.stdout
