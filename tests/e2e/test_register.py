"""`backupagent register` against the reference control plane."""

from __future__ import annotations

import os
import platform
import stat

from backupagent import __version__
from backupagent.controlplane.testing import ServerHandle
from backupagent.exitcodes import ExitCode
from tests.e2e.conftest import Agent
from tests.servers import free_port


def test_register_stores_key_0600_and_never_prints_it(
    agent: Agent, controlplane: ServerHandle
) -> None:
    token = controlplane.create_token()
    res = agent.cli(
        "register",
        "--token",
        "-",
        "--server",
        controlplane.url,
        "--hostname",
        "db-host-1",
        input=token + "\n",
    )
    assert res.returncode == 0, res.stderr
    key_file = agent.config_dir / "api-key"
    key = key_file.read_text().strip()
    assert key.startswith("bak_")
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert key not in res.stdout and key not in res.stderr
    assert token not in res.stdout and token not in res.stderr
    settings = (agent.config_dir / "agent.yaml").read_text()
    assert key not in settings
    agents = controlplane.store.list_agents()
    assert len(agents) == 1
    row = agents[0]
    assert row["agentId"] in settings and controlplane.url in settings
    assert (row["hostname"], row["os"], row["agentVersion"]) == ("db-host-1", "linux", __version__)
    expected_arch = {"x86_64": "amd64", "aarch64": "arm64"}[platform.machine()]
    assert row["arch"] == expected_arch
    reqs = controlplane.store.list_requests(path="/api/v1/agent/register")
    assert len(reqs) == 1 and not reqs[0]["authPresent"]
    body = dict(reqs[0]["json"])
    assert set(body.pop("registrationToken")) and body == {
        "hostname": "db-host-1",
        "os": "linux",
        "arch": expected_arch,
        "agentVersion": __version__,
    }


def test_token_from_file(agent: Agent, controlplane: ServerHandle, tmp_path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(controlplane.create_token() + "\n")
    res = agent.cli("register", "--token-file", str(token_file), "--server", controlplane.url)
    assert res.returncode == 0, res.stderr
    assert (agent.config_dir / "api-key").exists()


def test_used_token_is_refused_and_nothing_is_written(
    agent: Agent, controlplane: ServerHandle, tmp_path
) -> None:
    token = controlplane.create_token()
    assert agent.cli("register", "--token", token, "--server", controlplane.url).returncode == 0
    other = Agent(config_dir=tmp_path / "etc2", state_dir=tmp_path / "state2")
    res = other.cli("register", "--token", token, "--server", controlplane.url)
    assert res.returncode == ExitCode.AUTH
    assert "rejected" in res.stderr and "already been used" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (other.config_dir / "api-key").exists()
    assert not (other.config_dir / "agent.yaml").exists()


def test_existing_registration_needs_force(agent: Agent, controlplane: ServerHandle) -> None:
    first_key = agent.register(controlplane)
    res = agent.cli(
        "register", "--token", controlplane.create_token(), "--server", controlplane.url
    )
    assert res.returncode == ExitCode.ALREADY_REGISTERED
    assert "--force" in res.stderr
    assert (agent.config_dir / "api-key").read_text().strip() == first_key
    res = agent.cli(
        "register", "--force", "--token", controlplane.create_token(), "--server", controlplane.url
    )
    assert res.returncode == 0, res.stderr
    assert (agent.config_dir / "api-key").read_text().strip() != first_key


def test_rejected_force_reregistration_keeps_the_old_key(
    agent: Agent, controlplane: ServerHandle
) -> None:
    first_key = agent.register(controlplane)
    res = agent.cli("register", "--force", "--token", "not-a-token", "--server", controlplane.url)
    assert res.returncode == ExitCode.AUTH
    assert (agent.config_dir / "api-key").read_text().strip() == first_key


def test_unreachable_server_has_its_own_exit_code(agent: Agent) -> None:
    res = agent.cli("register", "--token", "t", "--server", f"http://127.0.0.1:{free_port()}")
    assert res.returncode == ExitCode.UNREACHABLE
    assert "unreachable" in res.stderr
    assert not (agent.config_dir / "api-key").exists()


def test_plain_http_to_remote_host_is_refused(agent: Agent) -> None:
    res = agent.cli("register", "--token", "t", "--server", "http://192.0.2.1:8080")
    assert res.returncode == ExitCode.USAGE
    assert "--insecure-http" in res.stderr


def test_token_is_required_from_exactly_one_source(
    agent: Agent, controlplane: ServerHandle
) -> None:
    res = agent.cli("register", "--server", controlplane.url)
    assert res.returncode == ExitCode.USAGE and "exactly one" in res.stderr
    res = agent.cli("register", "--token", "-", "--server", controlplane.url, input="\n")
    assert res.returncode == ExitCode.USAGE and "empty" in res.stderr
