"""Planted secrets never leak: real backups (good and failing), every output searched.

Planted: the API key (generated at registration, read from the key file), a
database password (credentials.yaml), an S3 secret key and session token (the
config's target credentials, against a real S3 server), an SMTP password (an
email alert channel pointing at an aiosmtpd server) and an age identity
(host settings). Searched: the agent's stdout/stderr in JSON and text format,
everything the control plane received (requests, job statuses and logs), every
object and manifest in the bucket, every file in the state dir except the 0600
config cache, the alert e-mails, and the argv of every process the agent
started (traced with ``strace -f -e execve``).
"""

from __future__ import annotations

import json
import os
import re
import ssl
import stat
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
import yaml

from backupagent.api.client import ApiClient
from backupagent.api.errors import Unreachable
from backupagent.api.models import HeartbeatRequest
from backupagent.api.retry import RetryPolicy
from backupagent.controlplane.testing import ServerHandle
from backupagent.crypto.age import generate_identity
from tests.e2e.conftest import Agent
from tests.integration.test_alerts import Authenticator, Smtp, self_signed
from tests.servers import free_port, require_binary

REPO = Path(__file__).resolve().parents[2]
SMTP_USER = "alerts"
SMTP_PASSWORD = "smtp-Pl4nted-" + os.urandom(6).hex()
SESSION_TOKEN = "sts-Pl4nted-" + os.urandom(12).hex()
WRONG_DB_PASSWORD = "wrong-Pl4nted-" + os.urandom(6).hex()


@pytest.fixture
def smtp() -> Iterator[Smtp]:
    server = Smtp(
        authenticator=Authenticator(SMTP_USER, SMTP_PASSWORD),
        auth_required=True,
        auth_require_tls=False,
    )
    yield server
    server.stop()


def _config(pg: Any, s3: Any, bucket: str, recipient: str, smtp_port: int, **over: Any) -> dict:
    credentials = {"accessKeyId": s3.access_key, "secretAccessKey": s3.secret_key}
    if over.get("session_token"):
        credentials["sessionToken"] = over["session_token"]
    return {
        "schedules": [
            {
                "id": "sched-1",
                "databaseId": "db-1",
                "targetId": "s3-1",
                "cron": "0 3 * * *",
                "database": {
                    "id": "db-1",
                    "dbType": "postgresql",
                    "host": "127.0.0.1",
                    "port": str(pg.server.port),
                    "databaseName": pg.name,
                },
            }
        ],
        "targets": [
            {
                "id": "s3-1",
                "type": "s3",
                "bucket": bucket,
                "prefix": "secrets-test",
                "region": s3.region,
                "endpointUrl": over.get("endpoint", s3.endpoint_url),
                "credentials": credentials,
                "encryption": {"recipients": [recipient]},
            }
        ],
        "alertChannels": [
            {
                "id": "mail",
                "type": "email",
                "events": ["job_failed"],
                "to": ["ops@example.com"],
                "smtp": {
                    "host": "127.0.0.1",
                    "port": smtp_port,
                    "username": SMTP_USER,
                    "password": SMTP_PASSWORD,
                    "starttls": False,
                },
            }
        ],
    }


def _write_host_files(agent: Agent, pg: Any, password: str, identity_file: Path) -> None:
    creds = agent.config_dir / "credentials.yaml"
    creds.write_text(
        yaml.safe_dump({"databases": {"db-1": {"user": pg.server.user, "password": password}}})
    )
    creds.chmod(0o600)
    settings = agent.config_dir / "agent.yaml"
    doc = yaml.safe_load(settings.read_text()) or {}
    doc["verification"] = {"identityFile": str(identity_file)}
    settings.write_text(yaml.safe_dump(doc))


def _traced_run(agent: Agent, trace: Path, fmt: str) -> subprocess.CompletedProcess:
    """``run --once`` under strace: every execve of the agent and its children."""
    strace = require_binary("strace", "apt-get install strace")
    env = agent.env()
    env["BACKUPAGENT_LOG_FORMAT"] = fmt
    return subprocess.run(
        [
            *(strace, "-f", "-qq", "-s", "4096", "-e", "trace=execve", "-o", str(trace)),
            *(sys.executable, "-m", "backupagent", "run", "--once"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def _execs(trace: Path) -> List[str]:
    return [line for line in trace.read_text().splitlines() if "execve(" in line]


def _state_files(state: Path) -> Dict[str, bytes]:
    out = {}
    for path in state.rglob("*"):
        if path.is_file():
            out[str(path)] = path.read_bytes()
    return out


def _bucket_bytes(s3: Any, bucket: str) -> Dict[str, bytes]:
    client = s3.client()
    out = {}
    for obj in client.list_objects_v2(Bucket=bucket).get("Contents", []):
        out[obj["Key"]] = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return out


def _forms(secret: str) -> List[str]:
    """A secret as it could appear: raw, JSON-escaped, URL-quoted, base64 of SMTP AUTH."""
    import base64
    import urllib.parse

    return sorted(
        {
            secret,
            json.dumps(secret)[1:-1],
            urllib.parse.quote(secret, safe=""),
            base64.b64encode(secret.encode()).decode(),
        }
    )


def _assert_absent(secrets: Dict[str, str], where: str, data: Any) -> None:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
    for name, secret in secrets.items():
        for form in _forms(secret):
            assert form not in text, f"{name} leaked into {where}"


def _search_everything(
    secrets: Dict[str, str],
    agent: Agent,
    controlplane: ServerHandle,
    res: subprocess.CompletedProcess,
    trace: Path,
    smtp: Smtp,
    bucket_objects: Dict[str, bytes],
) -> None:
    _assert_absent(secrets, "agent stdout", res.stdout)
    _assert_absent(secrets, "agent stderr", res.stderr)
    for line in _execs(trace):
        _assert_absent(secrets, f"child argv ({line[:120]})", line)
    for job in controlplane.store.list_jobs():
        _assert_absent(secrets, f"job {job['jobId']} status", json.dumps(job))
        _assert_absent(
            secrets,
            f"job {job['jobId']} logs",
            json.dumps(controlplane.store.job_logs(job["jobId"])),
        )
    _assert_absent(secrets, "requests received", json.dumps(controlplane.store.list_requests()))
    _assert_absent(secrets, "anomalies", json.dumps(controlplane.store.list_anomalies()))
    for key, data in bucket_objects.items():
        _assert_absent(secrets, f"object {key}", data)
    cache = agent.state_dir / "config-cache.json"
    for path, data in _state_files(agent.state_dir).items():
        if Path(path) == cache:
            continue  # holds the S3 secret by design; its mode is checked instead
        _assert_absent(secrets, f"state file {path}", data)
    for _sender, _rcpts, raw, _tls in smtp.inbox.messages:
        _assert_absent(secrets, "alert e-mail", raw)


def _assert_private(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode == 0o600, f"{path} is {oct(mode)}, expected 0600"


def _secret_strace_sees(trace: Path, secret: str) -> bool:
    return any(secret in line for line in _execs(trace))


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_planted_secrets_never_leak_on_success_and_failure(
    agent: Agent,
    controlplane: ServerHandle,
    pg_database: Any,
    s3_server: Any,
    smtp: Smtp,
    tmp_path: Path,
    fmt: str,
) -> None:
    require_binary("strace", "apt-get install strace")
    identity = generate_identity()
    identity_file = tmp_path / "age-identity.txt"
    identity_file.write_text(identity.secret + "\n")
    identity_file.chmod(0o600)
    api_key = agent.register(controlplane)
    _assert_private(agent.config_dir / "api-key")
    _write_host_files(agent, pg_database, pg_database.server.password, identity_file)
    _assert_private(agent.config_dir / "credentials.yaml")
    agent_id = controlplane.store.list_agents()[0]["agentId"]
    bucket = s3_server.make_bucket()
    secrets = {
        "API key": api_key,
        "database password": pg_database.server.password,
        "S3 secret key": s3_server.secret_key,
        "S3 session token": SESSION_TOKEN,
        "SMTP password": SMTP_PASSWORD,
        "age identity": identity.secret,
        "wrong database password": WRONG_DB_PASSWORD,
    }
    runs = []

    # 1. success: PostgreSQL -> S3 (the session token is planted in the failing runs
    #    below: SeaweedFS with static keys refuses a request that carries one)
    controlplane.store.set_config(
        agent_id, _config(pg_database, s3_server, bucket, identity.recipient, smtp.port)
    )
    trace = tmp_path / "trace-ok.txt"
    res = _traced_run(agent, trace, fmt)
    assert res.returncode == 0, res.stderr[-3000:]
    assert controlplane.store.list_jobs()[-1]["status"] == "completed"
    assert _secret_strace_sees(trace, "pg_dump")  # the trace did see the children
    runs.append((res, trace))
    _assert_private(agent.state_dir / "config-cache.json")
    assert s3_server.secret_key in (agent.state_dir / "config-cache.json").read_text()

    # 2. failure: wrong database password
    _write_host_files(agent, pg_database, WRONG_DB_PASSWORD, identity_file)
    _forget_last_runs(agent)
    trace = tmp_path / "trace-authfail.txt"
    res = _traced_run(agent, trace, fmt)
    assert res.returncode != 0
    assert controlplane.store.list_jobs()[-1]["status"] == "failed"
    runs.append((res, trace))

    # 3. failure: S3 down (endpoint on a closed port), with a session token planted
    _write_host_files(agent, pg_database, pg_database.server.password, identity_file)
    down = f"http://127.0.0.1:{free_port()}"
    controlplane.store.set_config(
        agent_id,
        _config(
            pg_database,
            s3_server,
            bucket,
            identity.recipient,
            smtp.port,
            endpoint=down,
            session_token=SESSION_TOKEN,
        ),
    )
    _forget_last_runs(agent)
    trace = tmp_path / "trace-s3down.txt"
    res = _traced_run(agent, trace, fmt)
    assert res.returncode != 0
    failed = controlplane.store.list_jobs()[-1]
    assert failed["status"] == "failed"
    runs.append((res, trace))
    _assert_private(agent.state_dir / "config-cache.json")

    assert smtp.inbox.messages, "the failures were alerted by e-mail (so the SMTP login happened)"
    objects = _bucket_bytes(s3_server, bucket)
    assert any(k.endswith(".manifest.json") for k in objects)
    for res, trace in runs:
        _search_everything(secrets, agent, controlplane, res, trace, smtp, objects)


def _forget_last_runs(agent: Agent) -> None:
    """Make the schedule due again for the next ``run --once``."""
    path = agent.state_dir / "agent-state.json"
    doc = json.loads(path.read_text())
    doc["schedules"] = {}
    path.write_text(json.dumps(doc))


# ------------------------------------------------------------------ files and TLS


def test_key_file_is_0600_and_loose_credentials_are_refused(
    agent: Agent, controlplane: ServerHandle
) -> None:
    """(tests/unit/test_credentials.py covers every loose mode; this is the CLI's view.)"""
    agent.register(controlplane)
    _assert_private(agent.config_dir / "api-key")
    assert stat.S_IMODE(agent.config_dir.stat().st_mode) & 0o007 == 0


def test_tls_verification_cannot_be_turned_off_in_the_code() -> None:
    pattern = re.compile(
        r"verify\s*=\s*False|CERT_NONE|check_hostname\s*=\s*False|_create_unverified"
    )
    offenders = [
        f"{path}:{n}"
        for path in (REPO / "backupagent").rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []


def test_client_refuses_a_self_signed_server(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    hits: List[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            hits.append(self.headers.get("Authorization", ""))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"configChanged": false}')

        def log_message(self, *args: Any) -> None:
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"https://127.0.0.1:{httpd.server_address[1]}"
        api = ApiClient(url, "bak_tls_test_key_0123456789", retry=RetryPolicy(max_attempts=1))
        with pytest.raises(Unreachable, match="TLS error"):
            api.heartbeat(HeartbeatRequest("online", "1", ""))
        assert hits == []  # the key never reached the impostor
        api2 = ApiClient(url, "bak_tls_test_key_0123456789", retry=RetryPolicy(max_attempts=1))
        with pytest.raises(Unreachable) as info:
            api2.get_config()
        assert "CERTIFICATE_VERIFY_FAILED" in str(info.value)  # refused for its certificate
    finally:
        httpd.shutdown()
        httpd.server_close()
