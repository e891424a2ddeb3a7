"""systemd/backupagent.service: systemd's own checks, the directives the agent
relies on, and the hardening assumptions tested against the kernel."""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Dict, List

import pytest

from tests.integration.test_install import _unpacked, built  # noqa: F401 - shared build
from tests.servers import require, require_binary

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "backupagent.service"
INSTALL_SH = ROOT / "install.sh"


def parse_unit(text: str) -> Dict[str, Dict[str, List[str]]]:
    """section -> key -> values (a key may repeat, as Environment= does)."""
    sections: Dict[str, Dict[str, List[str]]] = {}
    current: Dict[str, List[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def unit() -> Dict[str, Dict[str, List[str]]]:
    return parse_unit(UNIT.read_text())


def verifiable_copy(tmp_path: Path, text: str) -> Path:
    """The unit with ExecStart pointing at an executable that exists here
    (verify checks it), everything else untouched."""
    fake = tmp_path / "bin" / "backupagent"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    text = text.replace("ExecStart=/usr/local/bin/backupagent ", f"ExecStart={fake} ")
    path = tmp_path / "backupagent.service"
    path.write_text(text)
    return path


def analyze(*args: str) -> subprocess.CompletedProcess:
    tool = require_binary("systemd-analyze", "apt-get install systemd")
    return subprocess.run(
        [tool, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_COLORS": "0"},
        check=False,
        timeout=120,
    )


def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    path = verifiable_copy(tmp_path, UNIT.read_text())
    proc = analyze("verify", str(path))
    out = proc.stdout.decode()
    assert proc.returncode == 0, out
    assert out.strip() == "", f"verify printed warnings:\n{out}"


@pytest.mark.parametrize(
    "bad",
    ["WatchdogSec=banana", "RestrictAddressFamilies=AF_BANANA", "ProtectSystm=strict"],
)
def test_verify_would_catch_a_broken_unit(tmp_path: Path, bad: str) -> None:
    """The check above can fail: verify reports a broken directive."""
    text = UNIT.read_text().replace("[Service]\n", f"[Service]\n{bad}\n", 1)
    proc = analyze("verify", str(verifiable_copy(tmp_path, text)))
    assert proc.returncode != 0 or proc.stdout.strip(), f"verify accepted {bad}"


def test_verify_needs_the_installed_binary_path() -> None:
    """ExecStart is where install.sh puts the agent, so the two stay in step."""
    text = INSTALL_SH.read_text()
    assert 'BIN_LINK="/usr/local/bin/backupagent"' in text
    assert "ExecStart=/usr/local/bin/backupagent run\n" in UNIT.read_text()


def test_security_exposure_is_low(tmp_path: Path) -> None:
    path = verifiable_copy(tmp_path, UNIT.read_text())
    proc = analyze("security", "--offline=yes", str(path))
    out = proc.stdout.decode()
    if "--offline" in out and "unrecognized" in out:
        require(False, "systemd-analyze security --offline needs systemd >= 250")
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out)
    assert match, out[-2000:]
    # 0 = fully locked down, 10 = no protection; systemd's own daemons sit at 1-3.
    assert float(match.group(1)) <= 2.5, out[-3000:]


def test_service_directives(unit: Dict[str, Dict[str, List[str]]]) -> None:
    svc, top = unit["Service"], unit["Unit"]

    def one(key: str) -> str:
        values = svc[key]
        assert len(values) == 1, f"{key} set {len(values)} times"
        return values[0]

    assert one("Type") == "notify"
    assert one("NotifyAccess") == "main"
    assert one("ExecStart") == "/usr/local/bin/backupagent run"
    assert one("Restart") == "on-failure"
    assert top["StartLimitIntervalSec"] == ["10min"] and top["StartLimitBurst"] == ["5"]
    assert one("User") == "backupagent" and one("Group") == "backupagent"
    assert one("ConfigurationDirectory") == "backupagent"
    assert one("ConfigurationDirectoryMode") == "0750"
    assert one("StateDirectory") == "backupagent"
    assert one("UMask") == "0077"
    assert one("KillMode") == "mixed"
    assert "BACKUPAGENT_LOG_FORMAT=json" in svc["Environment"]
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "LimitCORE": "0",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "RestrictRealtime": "yes",
        "SystemCallArchitectures": "native",
        "MemoryDenyWriteExecute": "yes",
    }.items():
        assert one(key) == value, key
    assert one("RestrictAddressFamilies").split() == ["AF_UNIX", "AF_INET", "AF_INET6"]
    assert "ProtectProc" not in svc, "discovery lists other users' database processes"


def _seconds(value: str) -> float:
    total = 0.0
    for number, unit in re.findall(r"(\d+)\s*(min|s|h)?", value):
        total += int(number) * {"min": 60, "h": 3600, "s": 1, "": 1}[unit]
    return total


def test_timeouts_cover_the_agents_own(unit: Dict[str, Dict[str, List[str]]]) -> None:
    from backupagent.daemon.agent import CANCEL_WAIT
    from backupagent.settings import DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_SHUTDOWN_GRACE

    svc = unit["Service"]
    # SIGKILL only after the graceful stop and the cancellation have had their time.
    assert _seconds(svc["TimeoutStopSec"][0]) > DEFAULT_SHUTDOWN_GRACE + CANCEL_WAIT
    # The watchdog pings follow heartbeats: several heartbeats fit in one period.
    assert _seconds(svc["WatchdogSec"][0]) >= 5 * DEFAULT_HEARTBEAT_INTERVAL
    assert _seconds(svc["RestartSec"][0]) >= 1


# -- hardening assumptions, tried against the kernel ----------------------------


def _serve_once(path: Path) -> threading.Thread:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def accept() -> None:
        conn, _ = server.accept()
        conn.sendall(b"hello")
        conn.close()
        server.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    return thread


def test_unix_socket_on_a_read_only_mount_still_connects(tmp_path: Path) -> None:
    """ProtectSystem=strict mounts /run read-only; the agent must still reach
    /run/postgresql/.s.PGSQL.5432 and /run/docker.sock. Try it: a socket under
    a read-only bind mount in a private mount namespace."""
    unshare = require_binary("unshare", "apt-get install util-linux")
    require(os.geteuid() == 0, "mount namespaces need root")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    sock = run_dir / ".s.PGSQL.5432"
    thread = _serve_once(sock)
    client = (
        "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]);"
        "print(s.recv(5).decode())"
    )
    script = (
        f'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && '
        f'! touch "$1/x" 2>/dev/null && {sys.executable} -c "$2" "$1/.s.PGSQL.5432"'
    )
    proc = subprocess.run(
        [unshare, "--mount", "sh", "-c", script, "sh", str(run_dir), client],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        check=False,
        timeout=30,
    )
    thread.join(5)
    assert proc.returncode == 0, proc.stdout.decode()
    assert proc.stdout.decode().strip() == "hello"


PR_SET_MDWE, PR_GET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 66, 1

MDWE_WRAPPER = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:
    sys.exit("PR_SET_MDWE failed: errno %d" % ctypes.get_errno())
os.execv(sys.argv[1], sys.argv[1:])
"""


def _mdwe_supported() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_GET_MDWE, 0, 0, 0, 0) >= 0


def test_memory_deny_write_execute_does_not_break_the_agent(
    built: Path,  # noqa: F811 - the shared build fixture
    tmp_path: Path,
) -> None:
    """MemoryDenyWriteExecute=yes: run a real backup of the frozen agent with
    W^X enforced by the kernel (PR_SET_MDWE, Linux >= 6.3, inherited across
    exec, the same rule systemd's seccomp filter applies), plus the dump tools."""
    import sqlite3

    require(_mdwe_supported(), "PR_SET_MDWE needs Linux >= 6.3")
    agent = _unpacked(built, tmp_path / "x") / "backupagent"

    def under_mdwe(argv: List[str]) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", MDWE_WRAPPER, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"},
            check=False,
            timeout=120,
        )

    # The wrapper really enforces W^X: a W+X mapping is refused under it.
    probe = under_mdwe(
        [
            sys.executable,
            "-c",
            "import mmap\ntry:\n mmap.mmap(-1, 4096, prot=7)\nexcept OSError:\n print('refused')",
        ]
    )
    assert probe.stdout.decode().strip() == "refused", probe.stdout

    db = tmp_path / "app.db"
    with sqlite3.connect(db) as conn:
        conn.execute("create table t (n integer)")
        conn.executemany("insert into t values (?)", [(i,) for i in range(100)])
    conn.close()
    from backupagent.crypto.keys import generate_identity

    identity = generate_identity()
    config = tmp_path / "backups.yaml"
    config.write_text(
        "schedules:\n"
        "  - {id: s, targetId: d, cron: '0 3 * * *',\n"
        f"     database: {{id: app, dbType: sqlite, databaseName: {db}}}}}\n"
        f"targets:\n  - {{id: d, type: local, path: {tmp_path / 'out'},\n"
        f"     encryption: {{recipients: [{identity.recipient}]}}}}\n"
    )
    proc = under_mdwe(
        [
            str(agent),
            "--config-dir",
            str(tmp_path / "etc"),
            "--state-dir",
            str(tmp_path / "state"),
            "run",
            "--once",
            "--config-file",
            str(config),
        ]
    )
    assert proc.returncode == 0, proc.stdout.decode()[-3000:]
    assert len(list((tmp_path / "out").rglob("*.age"))) == 1

    for tool, flag in (
        ("pg_dump", "--version"),
        ("pg_restore", "--version"),
        ("mariadb-dump", "--version"),
        ("redis-cli", "--version"),
        ("docker", "--version"),
    ):
        path = shutil.which(tool)
        if path is None:
            continue
        proc = under_mdwe([path, flag])
        assert proc.returncode == 0, f"{tool} under W^X: {proc.stdout.decode()}"
