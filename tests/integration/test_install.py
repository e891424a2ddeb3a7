"""install.sh and the release artifacts, for real.

The artifacts are built with ``packaging/build.sh`` (cached by a hash of the
sources: a build takes about 40 s), served over HTTP on 127.0.0.1 the way
the hosted service lays them out, and ``install.sh`` runs as root inside a
fresh Debian bookworm container (built locally with debootstrap, no registry
needed) on the host network so it reaches the loopback server. Each scenario
gets its own container, thrown away afterwards.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

from tests.servers import require, require_binary

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
INSTALL_SH = ROOT / "install.sh"
UNIT = ROOT / "systemd" / "backupagent.service"
CACHE = Path(os.environ.get("BACKUPAGENT_ARTIFACT_CACHE", str(ROOT / "build" / "test-artifacts")))
IMAGE_TAG = "backupagent-test/install-base:bookworm-1"
BUILD_INPUTS = ("backupagent", "packaging", "systemd", "pyproject.toml")


def _version() -> str:
    from backupagent import __version__

    return __version__


def _arch() -> str:
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def source_hash() -> str:
    """What the frozen build depends on: the package, the packaging and the unit."""
    digest = hashlib.sha256()
    for top in BUILD_INPUTS:
        path = ROOT / top
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        for f in files:
            if not f.is_file() or "__pycache__" in f.parts or f.suffix == ".pyc":
                continue
            digest.update(str(f.relative_to(ROOT)).encode() + b"\0")
            digest.update(f.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def built() -> Path:
    """dist/ of a build of the current sources (reused while they do not change)."""
    require_binary("sha256sum", "coreutils")
    require(shutil.which("gzip") is not None, "gzip")
    out = CACHE / source_hash()
    if (out / "SHA256SUMS").exists():
        return out
    tmp = Path(tempfile.mkdtemp(prefix="build-", dir=_mkdir(CACHE)))
    started = time.monotonic()
    proc = subprocess.run(
        ["bash", str(ROOT / "packaging" / "build.sh"), "--out", str(tmp)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        check=False,
    )
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        pytest.fail(
            "packaging/build.sh failed:\n" + proc.stdout.decode(errors="replace")[-4000:],
            pytrace=False,
        )
    print(f"built the artifacts in {time.monotonic() - started:.0f}s")
    if out.exists():  # a concurrent session finished first
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.rename(out)
    for old in CACHE.iterdir():  # keep the cache from growing without bound
        if old != out and old.is_dir() and not old.name.startswith("build-"):
            shutil.rmtree(old, ignore_errors=True)
    return out


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def make_site(built: Path, dest: Path) -> Path:
    """The published tree, with the installer as it is in the working tree now."""
    shutil.copytree(built / "site", dest)
    version = _version()
    rel = dest / "releases" / version
    shutil.copy2(INSTALL_SH, rel / "install.sh")
    shutil.copy2(INSTALL_SH, dest / "install.sh")
    shutil.copy2(INSTALL_SH, dest / "install")
    write_sums(rel)
    return dest


def write_sums(rel: Path) -> None:
    lines = []
    for f in sorted(rel.iterdir()):
        if f.name != "SHA256SUMS":
            lines.append(f"{hashlib.sha256(f.read_bytes()).hexdigest()}  {f.name}\n")
    (rel / "SHA256SUMS").write_text("".join(lines))


class Site:
    def __init__(self, root: Path, url: str) -> None:
        self.root = root
        self.url = url

    @property
    def tarball(self) -> Path:
        name = f"backupagent-{_version()}-linux-{_arch()}.tar.gz"
        return self.root / "releases" / _version() / name


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve(root: Path) -> Tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def site(built: Path, tmp_path: Path) -> Iterator[Site]:
    """This test's own copy of the published tree (tests may tamper with it)."""
    root = make_site(built, tmp_path / "site")
    server, url = serve(root)
    try:
        yield Site(root, url)
    finally:
        server.shutdown()
        server.server_close()


# -- the fresh Debian container ------------------------------------------------


@pytest.fixture(scope="session")
def engine(request: pytest.FixtureRequest) -> Any:
    """The Docker engine fixture of tests/servers/docker.py."""
    return request.getfixturevalue("docker_engine")


def _debian_mirror() -> str:
    try:
        from tests.images.build import debian_mirror

        return debian_mirror()
    except ImportError:
        return "http://deb.debian.org/debian"


@pytest.fixture(scope="session")
def base_image(engine: Any) -> str:
    """A bare bookworm with curl and wget: what a database host starts from.

    Built once with debootstrap and kept under a fixed tag.
    """
    import docker.errors

    try:
        engine.client.images.get(IMAGE_TAG)
        return IMAGE_TAG
    except docker.errors.ImageNotFound:
        pass
    debootstrap = require_binary("debootstrap", "apt-get install debootstrap")
    require(os.geteuid() == 0, "debootstrap needs root")
    root = Path(tempfile.mkdtemp(prefix="install-base-"))
    try:
        argv = [debootstrap, "--variant=minbase", "--include=curl,wget,ca-certificates"]
        argv += ["bookworm", str(root), _debian_mirror()]
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
        if proc.returncode != 0:
            pytest.fail(
                "debootstrap failed:\n" + proc.stdout.decode(errors="replace")[-3000:],
                pytrace=False,
            )
        for rel in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc"):
            shutil.rmtree(root / rel, ignore_errors=True)
        tar = subprocess.Popen(
            ["tar", "--numeric-owner", "-C", str(root), "-c", "."], stdout=subprocess.PIPE
        )
        imp = subprocess.run(
            ["docker", "import", "-c", 'CMD ["/bin/bash"]', "-", IMAGE_TAG],
            stdin=tar.stdout,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=engine.env(),
            check=False,
        )
        tar.wait()
        if imp.returncode != 0:
            pytest.fail("docker import failed: " + imp.stdout.decode(errors="replace"))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return IMAGE_TAG


class Box:
    """One fresh container on the host network; commands run in it via exec."""

    def __init__(self, container: Any) -> None:
        self.container = container

    def sh(
        self, script: str, *, env: Optional[Dict[str, str]] = None, user: str = "root"
    ) -> Tuple[int, str]:
        code, out = self.container.exec_run(
            ["sh", "-c", script], environment=env or {}, user=user, demux=False
        )
        return code, (out or b"").decode(errors="replace")

    def ok(self, script: str, **kw: Any) -> str:
        code, out = self.sh(script, **kw)
        assert code == 0, f"`{script}` exited {code}:\n{out}"
        return out

    def exists(self, path: str) -> bool:
        return self.sh(f"test -e {path} || test -L {path}")[0] == 0

    def stat(self, path: str) -> str:
        return self.ok(f"stat -c '%a %U %G' {path}").strip()

    def snapshot(self) -> str:
        """Everything the installer owns, with modes and owners (no times)."""
        return self.ok(
            "find /opt/backupagent /etc/backupagent /var/lib/backupagent "
            "/usr/local/bin/backupagent /etc/systemd/system/backupagent.service "
            "-printf '%p %m %u %g %l %s\\n' 2>/dev/null | sort; getent passwd backupagent; "
            "getent group backupagent; true"
        )

    def put(self, path: str, data: bytes, mode: int = 0o644) -> None:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(os.path.basename(path))
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
        self.container.put_archive(os.path.dirname(path), buf.getvalue())


@pytest.fixture
def box(engine: Any, base_image: str) -> Iterator[Box]:
    container = engine.client.containers.run(
        base_image, ["sleep", "infinity"], detach=True, network_mode="host", init=True
    )
    try:
        yield Box(container)
    finally:
        container.remove(force=True)


@pytest.fixture
def make_box(engine: Any, base_image: str) -> Iterator[Any]:
    """Fresh containers with extra `docker run` options (e.g. tmpfs mounts)."""
    made: List[Any] = []

    def make(**options: Any) -> Box:
        container = engine.client.containers.run(
            base_image, ["sleep", "infinity"], detach=True, network_mode="host", **options
        )
        made.append(container)
        return Box(container)

    try:
        yield make
    finally:
        for container in made:
            container.remove(force=True)


def install(box: Box, site: Site, args: str = "", env: Optional[Dict[str, str]] = None) -> str:
    """The documented one-liner, with the artifacts from the loopback server."""
    full = {"BACKUPAGENT_BASE_URL": site.url, **(env or {})}
    return box.ok(f"curl -fsSL {site.url}/install | sh -s -- {args}", env=full)


def install_fails(
    box: Box, site: Site, args: str = "", env: Optional[Dict[str, str]] = None
) -> str:
    full = {"BACKUPAGENT_BASE_URL": site.url, **(env or {})}
    code, out = box.sh(f"curl -fsSL {site.url}/install | sh -s -- {args}", env=full)
    assert code != 0, f"install.sh {args} succeeded but should have failed:\n{out}"
    return out


def assert_nothing_installed(box: Box) -> None:
    for path in (
        "/opt/backupagent",
        "/usr/local/bin/backupagent",
        "/etc/systemd/system/backupagent.service",
        "/etc/backupagent",
        "/var/lib/backupagent",
    ):
        assert not box.exists(path), f"{path} exists"
    assert box.sh("getent passwd backupagent")[0] != 0, "the backupagent user exists"


# -- scenarios -------------------------------------------------------------------


def test_fresh_install_rerun_dry_run_uninstall(box: Box, site: Site) -> None:
    version = _version()
    out = install(box, site)
    assert f"backupagent {version} for linux/{_arch()}" in out
    assert "checksum ok" in out
    # No systemd in the container: it must say how to run the agent by hand.
    assert "systemd is not running" in out
    assert "runuser -u backupagent -- env BACKUPAGENT_LOG_FORMAT=json" in out

    # The agent runs, without any Python on the machine.
    assert box.sh("command -v python3")[0] != 0
    assert box.ok("backupagent version").startswith(f"backupagent {version} (linux/{_arch()}")
    assert "register" in box.ok("backupagent --help")

    # User, directories, links and unit.
    passwd = box.ok("getent passwd backupagent").strip().split(":")
    assert passwd[5] == "/var/lib/backupagent"
    assert passwd[6] in ("/usr/sbin/nologin", "/sbin/nologin")
    assert int(passwd[2]) < 1000, "not a system user"
    assert box.stat("/etc/backupagent") == "750 root backupagent"
    assert box.stat("/var/lib/backupagent") == "750 backupagent backupagent"
    assert box.ok("readlink /usr/local/bin/backupagent").strip() == (
        "/opt/backupagent/current/backupagent"
    )
    assert box.ok("readlink /opt/backupagent/current").strip() == version
    assert box.stat(f"/opt/backupagent/{version}/backupagent") == "755 root root"
    assert box.ok(f"find /opt/backupagent/{version} -perm /022 ! -type l").strip() == ""
    assert box.stat("/etc/systemd/system/backupagent.service") == "644 root root"
    unit = box.ok("cat /etc/systemd/system/backupagent.service")
    assert unit == UNIT.read_text()
    assert box.ok("ls -A /tmp").strip() == "", "the installer left temp files behind"

    # The service user can run the agent against its directories.
    box.ok("runuser -u backupagent -- backupagent status")

    # A rerun is idempotent and keeps the configuration and state.
    box.ok("printf 'hostname: db1\\n' > /etc/backupagent/agent.yaml")
    box.ok("chmod 640 /etc/backupagent/agent.yaml && chgrp backupagent /etc/backupagent/agent.yaml")
    box.ok(
        "printf x > /var/lib/backupagent/marker"
        " && chown backupagent:backupagent /var/lib/backupagent/marker"
    )
    before = box.snapshot()
    out = install(box, site)
    assert f"reinstalling {version}" in out
    assert box.snapshot() == before
    assert box.ok("cat /etc/backupagent/agent.yaml") == "hostname: db1\n"

    # --dry-run prints the plan and changes nothing.
    out = install(box, site, "--dry-run")
    assert "[dry-run] " in out and "nothing was changed" in out
    assert box.snapshot() == before

    # --uninstall keeps config and state; --purge removes them.
    code, out = box.sh(f"curl -fsSL {site.url}/install | sh -s -- --uninstall --dry-run")
    assert code == 0 and "[dry-run] rm -rf /opt/backupagent" in out, out
    assert box.snapshot() == before
    out = box.ok(f"curl -fsSL {site.url}/install | sh -s -- --uninstall")
    assert "kept /etc/backupagent" in out
    for path in ("/opt/backupagent", "/usr/local/bin/backupagent"):
        assert not box.exists(path), path
    assert not box.exists("/etc/systemd/system/backupagent.service")
    assert box.sh("getent passwd backupagent")[0] != 0
    assert box.sh("getent group backupagent")[0] != 0
    assert box.ok("cat /etc/backupagent/agent.yaml") == "hostname: db1\n"
    assert box.exists("/var/lib/backupagent/marker")

    # Installing again after an uninstall adopts the kept state for the new user,
    # whose uid differs from the old one's.
    box.ok("useradd --system someone-else")
    box.ok("chown 12345:12345 /var/lib/backupagent/marker")
    install(box, site)
    assert box.stat("/var/lib/backupagent/marker").endswith("backupagent backupagent")
    box.ok(f"curl -fsSL {site.url}/install | sh -s -- --uninstall --purge")
    assert_nothing_installed(box)


def test_tampered_tarball_is_refused(box: Box, site: Site) -> None:
    data = bytearray(site.tarball.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, after SHA256SUMS was written
    site.tarball.write_bytes(bytes(data))
    out = install_fails(box, site)
    assert f"checksum mismatch for {site.tarball.name}" in out
    assert "nothing was installed" in out
    assert_nothing_installed(box)


def test_artifact_missing_from_sums_is_refused(box: Box, site: Site) -> None:
    sums = site.tarball.parent / "SHA256SUMS"
    kept = [line for line in sums.read_text().splitlines() if site.tarball.name not in line]
    sums.write_text("\n".join(kept) + "\n")
    out = install_fails(box, site)
    assert f"has no build for linux/{_arch()}" in out
    assert_nothing_installed(box)


@pytest.mark.parametrize("machine", ["armv7l", "i686", "riscv64", "s390x"])
def test_unsupported_architecture_is_refused(box: Box, site: Site, machine: str) -> None:
    out = install_fails(box, site, env={"BACKUPAGENT_TEST_UNAME_M": machine})
    assert f"unsupported architecture '{machine}'" in out
    assert "x86_64 (amd64) and aarch64 (arm64)" in out
    assert_nothing_installed(box)


def test_non_linux_is_refused(box: Box, site: Site) -> None:
    out = install_fails(box, site, env={"BACKUPAGENT_TEST_UNAME_S": "Darwin"})
    assert "Linux only; this is Darwin" in out
    assert_nothing_installed(box)


def test_plain_http_to_a_remote_host_is_refused(box: Box, site: Site) -> None:
    out = install_fails(box, site, env={"BACKUPAGENT_BASE_URL": "http://example.com/api"})
    assert "must be an https:// URL" in out
    assert_nothing_installed(box)


def test_wget_only_then_neither(box: Box, site: Site) -> None:
    box.ok(f"curl -fsSL -o /root/install.sh {site.url}/install && rm /usr/bin/curl")
    env = {"BACKUPAGENT_BASE_URL": site.url}
    box.ok("sh /root/install.sh --no-start", env=env)
    assert box.ok("backupagent version").startswith("backupagent ")
    box.ok("sh /root/install.sh --uninstall --purge")
    box.ok("rm /usr/bin/wget")
    code, out = box.sh("sh /root/install.sh", env=env)
    assert code == 1
    assert "neither curl nor wget is installed" in out
    assert_nothing_installed(box)


def test_not_root_without_sudo(box: Box, site: Site) -> None:
    box.ok(f"curl -fsSL -o /tmp/install.sh {site.url}/install && chmod 644 /tmp/install.sh")
    code, out = box.sh("sh /tmp/install.sh", user="nobody", env={"BACKUPAGENT_BASE_URL": site.url})
    assert code == 1
    assert "needs root and sudo is not installed" in out
    assert_nothing_installed(box)


def test_truncated_script_runs_nothing(box: Box, site: Site) -> None:
    """A download cut short must not run half an installer: main is on the last line."""
    text = INSTALL_SH.read_text()
    assert text.rstrip().splitlines()[-1] == 'main "$@"'
    cut = text[: text.index("\nmain()")]  # everything but main and its call
    box.put("/root/cut.sh", cut.encode())
    code, out = box.sh("sh /root/cut.sh --token x", env={"BACKUPAGENT_BASE_URL": site.url})
    assert code == 0 and out == ""
    assert_nothing_installed(box)


def test_register_with_token_from_stdin(box: Box, site: Site, tmp_path: Path) -> None:
    from backupagent.controlplane.testing import running_server

    with running_server(tmp_path / "cp.db") as cp:
        token = cp.create_token()
        box.ok(f"curl -fsSL -o /root/install.sh {site.url}/install")
        box.put("/root/token", token.encode() + b"\n", mode=0o600)
        out = box.ok(
            f"sh /root/install.sh --token - --server {cp.url} < /root/token",
            env={"BACKUPAGENT_BASE_URL": site.url},
        )
        assert "registering this host" in out
        assert token not in out
        # The daemon runs as backupagent and refuses a key others can read.
        assert box.stat("/etc/backupagent/api-key") == "600 backupagent backupagent"
        assert box.stat("/etc/backupagent/agent.yaml") == "640 root backupagent"
        agent_yaml = box.ok("cat /etc/backupagent/agent.yaml")
        assert "agentId:" in agent_yaml and cp.url in agent_yaml
        box.ok("runuser -u backupagent -- backupagent status")
        # One heartbeat as the service user, exactly as the unit would run it.
        code, out = box.sh(
            "runuser -u backupagent -- backupagent run --once --heartbeat-interval 1"
        )
        assert code == 0, out

        # A rerun with a (used) token keeps the registration instead of failing.
        out = box.ok(
            f"sh /root/install.sh --token {token} --server {cp.url}",
            env={"BACKUPAGENT_BASE_URL": site.url},
        )
        assert "already registered" in out
        assert box.ok("cat /etc/backupagent/agent.yaml") == agent_yaml
        assert box.stat("/etc/backupagent/api-key") == "600 backupagent backupagent"


def test_bad_token_fails_clearly_and_leaves_the_agent_installed(
    box: Box, site: Site, tmp_path: Path
) -> None:
    from backupagent.controlplane.testing import running_server

    with running_server(tmp_path / "cp.db") as cp:
        out = install_fails(box, site, f"--token not-a-token --server {cp.url}")
    assert "registration failed (exit 6" in out
    assert "not-a-token" not in out.split("registration failed")[1]
    assert box.ok("backupagent version").startswith("backupagent ")
    assert not box.exists("/etc/backupagent/api-key")


# -- static checks and the frozen build on this host ----------------------------


def test_install_sh_is_posix_and_shellcheck_clean() -> None:
    shellcheck = require_binary("shellcheck", "apt-get install shellcheck")
    dash = require_binary("dash", "apt-get install dash")
    subprocess.run([dash, "-n", str(INSTALL_SH)], check=True)
    for shell, script in (("sh", INSTALL_SH), ("bash", ROOT / "packaging" / "build.sh")):
        proc = subprocess.run(
            [shellcheck, f"--shell={shell}", str(script)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout.decode()
    text = INSTALL_SH.read_text()
    assert text.startswith("#!/bin/sh\n")
    assert "\nset -eu\n" in text


def _unpacked(built: Path, tmp_path: Path) -> Path:
    name = f"backupagent-{_version()}-linux-{_arch()}"
    tmp_path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-xzf", str(built / f"{name}.tar.gz"), "-C", str(tmp_path)], check=True)
    return tmp_path / name


def _bare(argv: List[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run with an empty environment: no venv, no PYTHONPATH, no pyenv."""
    return subprocess.run(
        argv,
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        check=False,
        timeout=120,
    )


def test_frozen_build_runs_every_command_without_python(built: Path, tmp_path: Path) -> None:
    from backupagent.cli.main import COMMANDS

    agent = _unpacked(built, tmp_path) / "backupagent"
    proc = _bare([str(agent), "version"], tmp_path)
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout.decode().startswith(f"backupagent {_version()} ")
    # Every subcommand is imported lazily (importlib): --help loads each module.
    for name in COMMANDS:
        proc = _bare([str(agent), name, "--help"], tmp_path)
        assert proc.returncode == 0, f"{name} --help: {proc.stdout.decode()}"


def _module_name(path: Path, root: Path) -> str:
    dotted = path.relative_to(root).with_suffix("").as_posix().replace("/", ".")
    return dotted.replace(".__init__", "")


def test_frozen_build_collects_the_lazy_imports(built: Path, tmp_path: Path) -> None:
    # The build keeps modules as .pyc files beside the executable (the spec's
    # noarchive: no archive to decompress at every start), one file per module.
    internal = _unpacked(built, tmp_path) / "_internal"
    modules = {_module_name(p, internal) for p in internal.rglob("*.pyc")}
    expected = {
        _module_name(p, ROOT)
        for p in (ROOT / "backupagent").rglob("*.py")
        if "controlplane" not in p.parts
    }
    expected |= {
        "boto3",
        "botocore.session",
        "docker",
        "zstandard",
        "cryptography.hazmat.primitives.asymmetric.x25519",
        "apscheduler.schedulers.background",
        "apscheduler.triggers.cron",
        "apscheduler.executors.pool",
        "psutil",
        "yaml",
    }
    missing = sorted(m for m in expected if m not in modules)
    assert not missing, f"not in the frozen build: {missing}"
    assert not any(m.startswith("backupagent.controlplane") for m in modules)


def test_frozen_build_backs_up_a_standalone_config(built: Path, tmp_path: Path) -> None:
    """run --once from a local YAML file: config, APScheduler, the sqlite engine,
    zstd and age encryption, all inside the frozen build; the result restores
    with the reference age and zstd CLIs."""
    import sqlite3

    age = require_binary("age", "apt-get install age")
    age_keygen = require_binary("age-keygen", "apt-get install age")
    zstd = require_binary("zstd", "apt-get install zstd")
    agent = _unpacked(built, tmp_path / "x") / "backupagent"
    db = tmp_path / "app.db"
    with sqlite3.connect(db) as conn:
        conn.execute("create table t (n integer)")
        conn.executemany("insert into t values (?)", [(i,) for i in range(1000)])
    conn.close()
    key = tmp_path / "key.txt"
    subprocess.run([age_keygen, "-o", str(key)], check=True, capture_output=True)
    recipient = next(
        line.split(": ")[1] for line in key.read_text().splitlines() if "public key" in line
    )
    out_dir = tmp_path / "out"
    config = tmp_path / "backups.yaml"
    config.write_text(
        "schedules:\n"
        "  - id: nightly\n"
        "    targetId: disk\n"
        "    cron: '0 3 * * *'\n"
        f"    database: {{id: app, dbType: sqlite, databaseName: {db}}}\n"
        "targets:\n"
        "  - id: disk\n"
        "    type: local\n"
        f"    path: {out_dir}\n"
        f"    encryption: {{recipients: [{recipient}]}}\n"
    )
    argv = [str(agent), "--config-dir", str(tmp_path / "etc"), "--state-dir"]
    argv += [str(tmp_path / "state"), "run", "--once", "--config-file", str(config)]
    proc = _bare(argv, tmp_path)
    assert proc.returncode == 0, proc.stdout.decode()[-3000:]
    stored = [p for p in out_dir.rglob("*.age")]
    assert len(stored) == 1, sorted(out_dir.rglob("*"))
    restored = tmp_path / "restored.db"
    with open(restored, "wb") as sink:
        dec = subprocess.Popen([age, "-d", "-i", str(key), str(stored[0])], stdout=subprocess.PIPE)
        subprocess.run([zstd, "-d", "-c"], stdin=dec.stdout, stdout=sink, check=True)
        assert dec.wait() == 0
    with sqlite3.connect(restored) as conn:
        assert conn.execute("select count(*), sum(n) from t").fetchone() == (1000, 499500)
    conn.close()

    # A broken config is refused with the config exit code, as from source.
    bad = tmp_path / "bad.yaml"
    bad.write_text("schedules:\n  - id: 1\n")
    argv[-1] = str(bad)
    proc = _bare(argv, tmp_path)
    assert proc.returncode == 3, proc.stdout.decode()


def test_small_noexec_tmp_is_fine(make_box: Any, site: Site) -> None:
    """Hardened hosts mount /tmp noexec (and small): the installer only keeps the
    tarball there and runs the agent from where it is installed."""
    box = make_box(tmpfs={"/tmp": "rw,noexec,nosuid,size=48m"})
    install(box, site, "--no-start")
    assert box.ok("backupagent version").startswith(f"backupagent {_version()} ")


def test_agent_that_cannot_run_is_not_installed(make_box: Any, site: Site) -> None:
    box = make_box(tmpfs={"/opt": "rw,noexec,nosuid"})
    out = install_fails(box, site)
    assert "the agent does not run on this machine" in out
    assert "noexec" in out
    assert box.ok("ls -A /opt").strip() == ""
    assert box.sh("getent passwd backupagent")[0] != 0
    assert not box.exists("/usr/local/bin/backupagent")


# -- under a real systemd ----------------------------------------------------------

SYSTEMD_IMAGE_TAG = "backupagent-test/install-systemd:bookworm-1"
CAP_NAMES = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
]


def _caps_we_lack() -> List[str]:
    """Capabilities outside this process's bounding set: `--privileged` would
    fail to grant them (as in a nested container), so drop them explicitly."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapBnd:"):
            bound = int(line.split()[1], 16)
            return [name for i, name in enumerate(CAP_NAMES) if not bound >> i & 1]
    return []


def _build_systemd_image(engine: Any) -> str:
    import docker.errors

    try:
        engine.client.images.get(SYSTEMD_IMAGE_TAG)
        return SYSTEMD_IMAGE_TAG
    except docker.errors.ImageNotFound:
        pass
    debootstrap = require_binary("debootstrap", "apt-get install debootstrap")
    root = Path(tempfile.mkdtemp(prefix="install-systemd-"))
    try:
        argv = [debootstrap, "--variant=minbase", "--include=systemd,systemd-sysv,dbus,curl"]
        proc = subprocess.run(
            [*argv, "bookworm", str(root), _debian_mirror()],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            check=False,
        )
        if proc.returncode != 0:
            pytest.fail("debootstrap failed:\n" + proc.stdout.decode(errors="replace")[-3000:])
        for rel in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc"):
            shutil.rmtree(root / rel, ignore_errors=True)
        tar = subprocess.Popen(
            ["tar", "--numeric-owner", "-C", str(root), "-c", "."], stdout=subprocess.PIPE
        )
        imp = subprocess.run(
            ["docker", "import", "-c", 'CMD ["/lib/systemd/systemd"]', "-", SYSTEMD_IMAGE_TAG],
            stdin=tar.stdout,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=engine.env(),
            check=False,
        )
        tar.wait()
        if imp.returncode != 0:
            pytest.fail("docker import failed: " + imp.stdout.decode(errors="replace"))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return SYSTEMD_IMAGE_TAG


@pytest.fixture
def systemd_box(engine: Any) -> Iterator[Box]:
    """A container whose PID 1 is systemd, on the host network."""
    require(os.geteuid() == 0, "systemd in a container needs root")
    require(Path("/sys/fs/cgroup/systemd").is_dir(), "a name=systemd cgroup hierarchy (v1)")
    image = _build_systemd_image(engine)
    container = engine.client.containers.run(
        image,
        ["/lib/systemd/systemd"],
        detach=True,
        network_mode="host",
        cap_add=["ALL"],
        cap_drop=_caps_we_lack(),
        security_opt=["seccomp=unconfined", "apparmor=unconfined"],
        tmpfs={"/run": "rw,size=64m", "/run/lock": "rw", "/tmp": "rw,size=64m"},
        volumes={"/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"}},
    )
    box = Box(container)
    try:
        deadline = time.monotonic() + 60
        state = ""
        while time.monotonic() < deadline:
            state = box.sh("systemctl is-system-running")[1].strip()
            if state in ("running", "degraded"):
                break
            time.sleep(0.5)
        require(state in ("running", "degraded"), f"systemd did not boot in a container: {state}")
        yield box
    finally:
        container.remove(force=True)


def _register_and_install(box: Box, site: Site, cp: Any, args: str = "") -> str:
    box.ok(f"curl -fsSL -o /root/install.sh {site.url}/install")
    box.put("/root/token", cp.create_token().encode() + b"\n", mode=0o600)
    return box.ok(
        f"sh /root/install.sh --token - --server {cp.url} {args} < /root/token",
        env={"BACKUPAGENT_BASE_URL": site.url},
    )


def _main_pid(box: Box) -> str:
    return box.ok("systemctl show -p MainPID --value backupagent").strip()


def test_hardened_service_runs_under_systemd(systemd_box: Box, site: Site, tmp_path: Path) -> None:
    """The unit's sandbox as systemd really applies it: the agent starts, heartbeats
    as the backupagent user with no capabilities, a seccomp filter, a read-only
    root; it stops cleanly on SIGTERM. Type=simple here so this holds whether
    or not the daemon sends READY (test_service_notifies_systemd covers that)."""
    from backupagent.controlplane.testing import running_server

    box = systemd_box
    with running_server(tmp_path / "cp.db") as cp:
        _register_and_install(box, site, cp, "--no-start")
        box.ok(
            "mkdir -p /etc/systemd/system/backupagent.service.d && printf "
            "'[Service]\\nType=simple\\n' > /etc/systemd/system/backupagent.service.d/t.conf"
            " && systemctl daemon-reload && systemctl start backupagent"
        )
        agent_id = cp.store.list_agents()[0]["agentId"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not cp.store.list_heartbeats(agent_id):
            time.sleep(0.5)
        assert cp.store.list_heartbeats(agent_id), "no heartbeat from the service"
        pid = _main_pid(box)
        assert pid != "0", box.sh("journalctl -u backupagent --no-pager -o cat")[1]
        status = box.ok(f"cat /proc/{pid}/status")
        assert "\nNoNewPrivs:\t1" in status
        assert "\nSeccomp:\t2" in status
        assert "\nCapEff:\t0000000000000000" in status
        assert "\nCapBnd:\t0000000000000000" in status
        assert box.ok(f"stat -c %U /proc/{pid}").strip() == "backupagent"
        mounts = box.ok(f"cat /proc/{pid}/mountinfo")
        root_opts = next(line.split()[5] for line in mounts.splitlines() if line.split()[4] == "/")
        assert root_opts.startswith("ro"), root_opts
        journal = box.ok("journalctl -u backupagent --no-pager -o cat")
        assert '"level": "info"' in journal, journal  # JSON lines under systemd
        assert "agent running" in journal, journal

        box.ok("systemctl stop backupagent")
        shown = box.ok("systemctl show -p Result -p ExecMainStatus backupagent")
        assert "Result=success" in shown and "ExecMainStatus=0" in shown, shown
        assert "agent stopped" in box.ok("journalctl -u backupagent --no-pager -o cat")


def test_service_notifies_systemd(systemd_box: Box, site: Site, tmp_path: Path) -> None:
    """The unit as shipped (Type=notify): `systemctl start` returns only after
    READY=1, and the service stays up past a short watchdog period."""
    from backupagent.controlplane.testing import running_server

    box = systemd_box
    with running_server(tmp_path / "cp.db") as cp:
        _register_and_install(box, site, cp, "--no-start")
        box.ok(
            "mkdir -p /etc/systemd/system/backupagent.service.d && printf "
            "'[Service]\\nTimeoutStartSec=30s\\nWatchdogSec=6s\\n'"
            " > /etc/systemd/system/backupagent.service.d/t.conf && systemctl daemon-reload"
            " && echo 'heartbeatInterval: 1' >> /etc/backupagent/agent.yaml"
        )
        code, out = box.sh("systemctl start backupagent")
        journal = box.sh("journalctl -u backupagent --no-pager -o cat")[1]
        assert code == 0, f"start failed ({out}):\n{journal[-3000:]}"
        time.sleep(10)  # longer than WatchdogSec: only pings keep it alive
        shown = box.ok("systemctl show -p ActiveState -p NRestarts -p StatusText backupagent")
        assert "ActiveState=active" in shown and "NRestarts=0" in shown, shown

        # Heartbeats failing: the pings stop, the watchdog fires, systemd restarts it.
        cp.faults.add("/heartbeat", 503, times=10_000)
        deadline = time.monotonic() + 60
        restarts = ""
        while time.monotonic() < deadline:
            restarts = box.ok("systemctl show -p NRestarts --value backupagent").strip()
            if restarts not in ("", "0"):
                break
            time.sleep(1)
        journal = box.sh("journalctl -u backupagent --no-pager -o cat")[1]
        assert restarts not in ("", "0"), f"no watchdog restart:\n{journal[-3000:]}"
        assert "Watchdog timeout" in journal, journal[-3000:]
        box.ok("systemctl stop backupagent")
