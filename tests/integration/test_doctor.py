"""`backupagent doctor` against real pieces: the reference control plane, PostgreSQL,
SeaweedFS S3, local directories, and a stdlib HTTP server with a wrong clock."""

from __future__ import annotations

import email.utils
import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest
import yaml

from backupagent.cli.doctor import FAIL, OK, Check, CheckResult, run_checks
from backupagent.config.load import LastGoodConfigCache
from backupagent.crypto.keys import generate_identity, write_identity_file
from tests.servers import free_port, require

pytestmark = pytest.mark.integration


@dataclass
class Host:
    config_dir: Path
    state_dir: Path
    root: Path

    def doctor(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        env = dict(os.environ)
        env.pop("BACKUPAGENT_CONFIG_DIR", None)
        env.pop("BACKUPAGENT_STATE_DIR", None)
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "backupagent",
                "--config-dir",
                str(self.config_dir),
                "--state-dir",
                str(self.state_dir),
                "doctor",
                *args,
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            check=False,
        )

    def doctor_json(self, *args: str) -> Report:
        # A generous per-check limit: under a loaded CI machine a slow answer
        # is not what these tests are about (the timeout test sets its own).
        if "--timeout" not in args:
            args = ("--timeout", "90", *args)
        res = self.doctor("--json", "--user", "root", *args)
        assert "Traceback" not in res.stderr, res.stderr
        return Report(res.returncode, json.loads(res.stdout), res.stderr)

    def write_settings(self, **values: Any) -> None:
        path = self.config_dir / "agent.yaml"
        current = yaml.safe_load(path.read_text()) if path.exists() else {}
        current.update(values)
        path.write_text(yaml.safe_dump(current))

    def write_key(self, mode: int = 0o600) -> Path:
        key = self.config_dir / "api-key"
        key.write_text("bak_" + "k" * 40 + "\n")
        key.chmod(mode)
        return key

    def cache_config(self, raw: Dict[str, Any]) -> None:
        assert LastGoodConfigCache(self.state_dir).save(raw)

    def write_config_file(self, raw: Dict[str, Any]) -> Path:
        path = self.root / "backups.yaml"
        path.write_text(yaml.safe_dump(raw))
        return path


@dataclass
class Report:
    rc: int
    data: Dict[str, Any]
    stderr: str

    def get(self, name: str) -> Dict[str, Any]:
        found = [c for c in self.data["checks"] if c["check"] == name]
        assert found, f"no check {name!r} in {[c['check'] for c in self.data['checks']]}"
        return found[0]

    def status(self, name: str) -> str:
        return self.get(name)["status"]

    def names(self) -> List[str]:
        return [c["check"] for c in self.data["checks"]]


@pytest.fixture
def host(tmp_path: Path) -> Host:
    config_dir, state_dir = tmp_path / "etc", tmp_path / "state"
    config_dir.mkdir(mode=0o750)
    state_dir.mkdir(mode=0o750)
    return Host(config_dir, state_dir, tmp_path)


@pytest.fixture
def controlplane(tmp_path: Path) -> Iterator[Any]:
    require(find_spec("fastapi") is not None, "fastapi (pip install '.[server]')")
    from backupagent.controlplane.testing import running_server

    with running_server(tmp_path / "cp.db") as srv:
        yield srv


def config(schedules: List[Dict[str, Any]], targets: List[Dict[str, Any]]) -> Dict[str, Any]:
    return {"schedules": schedules, "targets": targets, "alertChannels": []}


def schedule(sid: str, target_id: str, database: Dict[str, Any], **extra: Any) -> Dict[str, Any]:
    return {
        "id": sid,
        "databaseId": database["id"],
        "targetId": target_id,
        "cron": "0 2 * * *",
        "database": database,
        **extra,
    }


def pg_ref(server: Any, name: str = "postgres", port: Optional[int] = None) -> Dict[str, Any]:
    return {
        "id": f"db-{name}",
        "dbType": "postgresql",
        "host": server.host if server else "127.0.0.1",
        "port": str(port or server.port),
        "databaseName": name,
    }


def write_pg_credentials(host: Host, server: Any) -> None:
    creds = host.config_dir / "credentials.yaml"
    creds.write_text(
        yaml.safe_dump(
            {"databases": {"postgresql": {"user": server.user, "password": server.password}}}
        )
    )
    creds.chmod(0o600)


def register(host: Host, controlplane: Any) -> None:
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "backupagent",
            "--config-dir",
            str(host.config_dir),
            "--state-dir",
            str(host.state_dir),
            "register",
            "--token",
            "-",
            "--server",
            controlplane.url,
        ],
        input=controlplane.create_token() + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr


# -- a healthy host -------------------------------------------------------------------


def test_healthy_registered_host(
    host: Host, controlplane: Any, postgres_server: Any, s3_server: Any
) -> None:
    register(host, controlplane)
    write_pg_credentials(host, postgres_server)
    bucket = s3_server.make_bucket()
    local = host.root / "backups"
    local.mkdir()
    s3_target = {
        "id": "offsite",
        "type": "s3",
        "bucket": bucket,
        "prefix": "hosts/db1",
        "endpointUrl": s3_server.endpoint_url,
        "region": s3_server.region,
        "credentials": {
            "accessKeyId": s3_server.access_key,
            "secretAccessKey": s3_server.secret_key,
        },
    }
    host.cache_config(
        config(
            [
                schedule("s1", "local", pg_ref(postgres_server)),
                schedule("s2", "offsite", pg_ref(postgres_server)),
            ],
            [{"id": "local", "type": "local", "path": str(local)}, s3_target],
        )
    )
    before = controlplane.store.list_requests()
    report = host.doctor_json()
    not_ok = [c for c in report.data["checks"] if c["status"] not in ("ok", "info")]
    assert report.rc == 0, not_ok
    assert report.data["ok"] is True, not_ok
    for name in (
        "settings",
        "config",
        "config dir",
        "state dir",
        "registration",
        "api key",
        "control plane",
        "clock skew",
        "credentials file",
        "dump tool postgresql",
        "target local",
        "target offsite",
    ):
        assert report.status(name) == "ok", report.get(name)
    db = report.get(f"database postgresql:{postgres_server.host}:{postgres_server.port}/postgres")
    assert db["status"] == "ok", db
    major = postgres_server.version.split(".")[0]
    assert f"server {major}" in db["detail"] and "pg_dump" in db["detail"]
    assert re.search(r"reachable, \d+ ms", report.get("control plane")["detail"])
    assert report.names().count(db["check"]) == 1  # one connection check per database
    assert report.status("docker") == "info"  # no schedule verifies
    # Nothing left behind in the bucket or the directory.
    listed = s3_server.client().list_objects_v2(Bucket=bucket)
    assert listed.get("KeyCount", 0) == 0
    assert list(local.iterdir()) == []
    # No Agent API call: doctor changes no server state.
    after = controlplane.store.list_requests(since_id=before[-1]["id"] if before else 0)
    assert [r["path"] for r in after if r["path"].startswith("/api/v1/agent")] == []
    # The secrets never show.
    assert s3_server.secret_key not in json.dumps(report.data)
    assert postgres_server.password not in json.dumps(report.data)


def test_text_output_one_line_per_check_with_fix(host: Host) -> None:
    host.write_key(0o644)
    host.write_settings(serverUrl="http://127.0.0.1:9", agentId="a1")
    res = host.doctor("--user", "root", "--timeout", "5")
    assert res.returncode == 1
    assert "Traceback" not in res.stdout + res.stderr
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    for line in lines[:-1]:
        assert re.match(r"^(OK|WARN|FAIL|INFO) +[a-z][^:]*: \S", line) or line.startswith(
            "      fix: "
        ), line
    assert re.match(r"^\d+ ok, \d+ warning\(s\), \d+ failure\(s\), \d+ note\(s\)$", lines[-1])
    key = host.config_dir / "api-key"
    index = next(i for i, ln in enumerate(lines) if ln.startswith("FAIL  api key:"))
    assert "0644" in lines[index]
    assert lines[index + 1] == f"      fix: chmod 600 {key}"


# -- failures -------------------------------------------------------------------------


def test_key_file_0644_fails_with_chmod_fix(host: Host, controlplane: Any) -> None:
    register(host, controlplane)
    key = host.config_dir / "api-key"
    key.chmod(0o644)
    report = host.doctor_json()
    assert report.rc == 1 and report.data["ok"] is False
    check = report.get("api key")
    assert check["status"] == "fail"
    assert "0644" in check["detail"]
    assert check["fix"] == f"chmod 600 {key}"
    assert report.status("control plane") == "ok"  # the others still ran
    key.chmod(0o600)
    assert host.doctor_json().rc == 0


def test_key_file_owned_by_another_user(host: Host, controlplane: Any) -> None:
    register(host, controlplane)
    key = host.config_dir / "api-key"
    os.chown(key, 65534, 65534)  # nobody
    report = host.doctor_json()  # --user root: root reads anything
    assert report.status("api key") == "ok"
    res = host.doctor("--json", "--user", "daemon")
    check = next(c for c in json.loads(res.stdout)["checks"] if c["check"] == "api key")
    assert res.returncode == 1 and check["status"] == "fail"
    assert check["fix"] == f"chown daemon: {key}"


def test_unreachable_control_plane(host: Host) -> None:
    port = free_port()
    host.write_settings(serverUrl=f"http://127.0.0.1:{port}", agentId="agent-1")
    host.write_key()
    started = time.monotonic()
    report = host.doctor_json("--timeout", "10")
    assert time.monotonic() - started < 30
    assert report.rc == 1
    check = report.get("control plane")
    assert check["status"] == "fail"
    assert f"127.0.0.1:{port}" in check["detail"]
    assert "serverUrl" in check["fix"]
    assert "clock skew" not in report.names()
    assert report.status("api key") == "ok"


def test_unwritable_local_target(host: Host) -> None:
    blocker = host.root / "a-file"
    blocker.write_text("x")
    good = host.root / "good"
    good.mkdir()
    cfg = host.write_config_file(
        config(
            [
                schedule("s1", "bad", {"id": "d", "dbType": "sqlite", "databaseName": "/x.db"}),
                schedule("s2", "good", {"id": "d", "dbType": "sqlite", "databaseName": "/x.db"}),
            ],
            [
                {"id": "bad", "type": "local", "path": str(blocker / "backups")},
                {"id": "good", "type": "local", "path": str(good)},
            ],
        )
    )
    report = host.doctor_json("--config-file", str(cfg))
    assert report.rc == 1
    bad = report.get("target bad")
    assert bad["status"] == "fail" and "cannot be created" in bad["detail"]
    assert bad["fix"]
    assert report.status("target good") == "ok"
    assert report.status("registration") == "info"  # standalone
    assert report.status("database sqlite:/x.db") == "fail"  # no such file


def test_target_dir_the_agent_user_cannot_write(host: Host) -> None:
    """Doctor as root on behalf of the service user: judged from the mode bits."""
    target = host.root / "backups"
    target.mkdir(mode=0o755)  # root-owned, not writable by others
    os.chmod(host.root, 0o755)  # noqa: S103 - nobody must traverse it
    cfg = host.write_config_file(
        config(
            [schedule("s1", "t", {"id": "d", "dbType": "sqlite", "databaseName": "/x.db"})],
            [{"id": "t", "type": "local", "path": str(target)}],
        )
    )
    require(os.geteuid() == 0, "judging another user's access needs doctor to run as root")
    res = host.doctor("--json", "--user", "nobody", "--config-file", str(cfg))
    check = next(c for c in json.loads(res.stdout)["checks"] if c["check"] == "target t")
    assert check["status"] == "fail", check
    assert "nobody cannot write" in check["detail"]
    assert check["fix"] == f"chown nobody: {target}"
    os.chown(target, 65534, 65534)
    res = host.doctor("--json", "--user", "nobody", "--config-file", str(cfg))
    check = next(c for c in json.loads(res.stdout)["checks"] if c["check"] == "target t")
    assert check["status"] == "ok", check


def test_s3_wrong_credentials_fail_without_leaking(host: Host, s3_server: Any) -> None:
    bucket = s3_server.make_bucket()
    wrong_secret = "wrong-secret-" + "z" * 20
    cfg = host.write_config_file(
        config(
            [schedule("s1", "s3", {"id": "d", "dbType": "sqlite", "databaseName": "/x.db"})],
            [
                {
                    "id": "s3",
                    "type": "s3",
                    "bucket": bucket,
                    "endpointUrl": s3_server.endpoint_url,
                    "region": s3_server.region,
                    "credentials": {
                        "accessKeyId": s3_server.access_key,
                        "secretAccessKey": wrong_secret,
                    },
                }
            ],
        )
    )
    report = host.doctor_json("--config-file", str(cfg))
    check = report.get("target s3")
    assert check["status"] == "fail", check
    assert "PutObject" in check["fix"]
    assert wrong_secret not in json.dumps(report.data) + report.stderr


def test_unreachable_database_fails_with_fix(host: Host) -> None:
    port = free_port()
    cfg = host.write_config_file(
        config(
            [schedule("s1", "t", pg_ref(None, "app", port=port))],
            [{"id": "t", "type": "local", "path": str(host.root / "b")}],
        )
    )
    report = host.doctor_json("--config-file", str(cfg))
    check = report.get(f"database postgresql:127.0.0.1:{port}/app")
    assert check["status"] == "fail"
    assert "host/port" in check["fix"]
    assert report.status("target t") == "warn"  # missing, but creatable


def test_wrong_password_fails_with_credentials_fix(host: Host, postgres_server: Any) -> None:
    creds = host.config_dir / "credentials.yaml"
    creds.write_text(
        yaml.safe_dump(
            {"databases": {"postgresql": {"user": postgres_server.user, "password": "nope"}}}
        )
    )
    creds.chmod(0o600)
    cfg = host.write_config_file(
        config(
            [schedule("s1", "t", pg_ref(postgres_server))],
            [{"id": "t", "type": "local", "path": str(host.root)}],
        )
    )
    report = host.doctor_json("--config-file", str(cfg))
    check = report.get(
        f"database postgresql:{postgres_server.host}:{postgres_server.port}/postgres"
    )
    assert check["status"] == "fail", check
    assert "credentials.yaml" in check["fix"]
    creds.chmod(0o644)
    report = host.doctor_json("--config-file", str(cfg))
    assert report.get("credentials file")["fix"] == f"chmod 600 {creds}"


def test_age_identity_permissions_and_recipients(host: Host) -> None:
    ident = generate_identity()
    other = generate_identity()
    key_path = host.config_dir / "age.key"
    write_identity_file(key_path, ident)
    host.write_settings(verification={"identityFile": str(key_path)})
    target = {
        "id": "t",
        "type": "local",
        "path": str(host.root),
        "encryption": {"recipients": [ident.recipient]},
    }
    ref = {"id": "d", "dbType": "sqlite", "databaseName": "/x.db"}
    cfg = host.write_config_file(config([schedule("s1", "t", ref)], [target]))
    assert host.doctor_json("--config-file", str(cfg)).status("age identity") == "ok"
    key_path.chmod(0o640)
    check = host.doctor_json("--config-file", str(cfg)).get("age identity")
    assert check["status"] == "fail" and check["fix"] == f"chmod 600 {key_path}"
    assert ident.secret not in json.dumps(check)
    key_path.chmod(0o600)
    target["encryption"] = {"recipients": [other.recipient]}
    cfg = host.write_config_file(config([schedule("s1", "t", ref)], [target]))
    check = host.doctor_json("--config-file", str(cfg)).get("age identity")
    assert check["status"] == "warn" and "cannot decrypt" in check["detail"]


def _verifying_config(host: Host) -> Path:
    ref = {"id": "d", "dbType": "sqlite", "databaseName": "/x.db"}
    return host.write_config_file(
        config(
            [schedule("s1", "t", ref, verification={"enabled": True})],
            [{"id": "t", "type": "local", "path": str(host.root)}],
        )
    )


def test_docker_unreachable_when_verification_is_on(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _verifying_config(host)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{host.root / 'no-docker.sock'}")
    report = host.doctor_json("--config-file", str(cfg), "--timeout", "10")
    check = report.get("docker")
    assert check["status"] == "fail", check
    assert "cannot reach the Docker engine" in check["detail"]
    assert report.rc == 1


def test_docker_reachable_and_socket_warning(host: Host, docker_engine: Any) -> None:
    cfg = _verifying_config(host)
    report = host.doctor_json("--config-file", str(cfg))
    check = report.get("docker")
    assert check["status"] == "ok", check
    assert "reachable" in check["detail"]
    if "docker socket" in report.names():  # a unix socket (not tcp://)
        sock = report.get("docker socket")
        assert sock["status"] == "info" and "root-equivalent" in sock["detail"]
        res = host.doctor("--json", "--user", "nobody", "--config-file", str(cfg))
        sock = next(c for c in json.loads(res.stdout)["checks"] if c["check"] == "docker socket")
        assert sock["status"] == "fail" and "usermod -aG" in sock["fix"]


class _SkewedHandler(BaseHTTPRequestHandler):
    skew = -300.0

    def date_time_string(self, timestamp: Optional[float] = None) -> str:
        return email.utils.formatdate(time.time() + self.skew, usegmt=True)

    def do_GET(self) -> None:
        body = b'{"status": "ok"}' if self.path == "/api/v1/health" else b"{}"
        self.send_response(200 if self.path == "/api/v1/health" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_clock_skew_warns(host: Host) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SkewedHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host.write_settings(serverUrl=f"http://127.0.0.1:{server.server_port}", agentId="a")
        host.write_key()
        report = host.doctor_json()
    finally:
        server.shutdown()
        server.server_close()
    assert report.status("control plane") == "ok"
    check = report.get("clock skew")
    assert check["status"] == "warn", check
    assert "ahead of" in check["detail"]
    assert "timedatectl" in check["fix"]
    assert report.rc == 0  # a warning is not a failure


# -- the runner itself ----------------------------------------------------------------


def test_crashing_and_hanging_checks_are_failures() -> None:
    def boom() -> CheckResult:
        raise RuntimeError("boom with bak_" + "s" * 20)

    gate = threading.Event()

    def hang() -> CheckResult:
        gate.wait(30)
        return CheckResult(OK, "hang", "never")

    started = time.monotonic()
    results = run_checks(
        [
            Check("boom", boom, 5),
            Check("hang", hang, 0.5),
            Check("fine", lambda: [CheckResult(OK, "a", "x"), CheckResult(OK, "b", "y")], 5),
        ]
    )
    gate.set()
    assert time.monotonic() - started < 5
    assert [(r.check, r.status) for r in results] == [
        ("boom", FAIL),
        ("hang", FAIL),
        ("a", OK),
        ("b", OK),
    ]
    assert results[0].detail.startswith("check crashed: RuntimeError: boom")
    assert "s" * 20 not in results[0].detail  # secret-shaped text redacted
    assert "did not finish within" in results[1].detail
