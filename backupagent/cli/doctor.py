"""``backupagent doctor``: check this host's prerequisites and say how to fix each.

Doctor is what an operator runs when a backup failed, or before the first
one: it answers "will the next backup work?" without running one. So it
tries the real things (connects to each database, writes a throwaway object
to each target, opens the Docker socket) but never changes server state: the
control plane is probed with an unauthenticated health request, not a
heartbeat or a config pull (a pull would mark the config as delivered).

Every check runs in its own thread with a timeout, so one hanging database or
bucket cannot hide the others' answers; a check that crashes is reported as a
FAIL with its error, never a traceback. Exit 0 when nothing FAILs, 1 otherwise.
"""

from __future__ import annotations

import contextlib
import email.utils
import grp
import os
import pwd
import secrets
import shutil
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import click

from backupagent.cli.context import AppContext, emit_json, pass_app
from backupagent.errors import AgentError
from backupagent.exitcodes import ExitCode
from backupagent.logs import redact

OK, WARN, FAIL, INFO = "OK", "WARN", "FAIL", "INFO"
DEFAULT_TIMEOUT = 20.0
CLOCK_SKEW_WARN = 30.0
SERVICE_USER = "backupagent"
PROBE_PREFIX = ".backupagent-doctor-"


@dataclass
class CheckResult:
    status: str
    check: str
    detail: str
    fix: Optional[str] = None
    duration_ms: int = 0


CheckFunc = Callable[[], Union[CheckResult, Sequence[CheckResult]]]


@dataclass
class Check:
    """A named check; ``func`` returns one result or several (one per line)."""

    name: str
    func: CheckFunc
    timeout: float = DEFAULT_TIMEOUT


@dataclass
class DoctorContext:
    """What the checks share: settings, config, and who the agent runs as."""

    app: AppContext
    settings: Any = None
    config: Any = None
    config_source: Optional[str] = None
    standalone: bool = False
    agent_user: str = ""
    timeout: float = DEFAULT_TIMEOUT
    results: List[CheckResult] = field(default_factory=list)


# -- running ----------------------------------------------------------------------


def run_checks(checks: Sequence[Check]) -> List[CheckResult]:
    """Run every check concurrently; results in the checks' order.

    A check still running at its deadline is reported as FAIL and left
    behind (its thread is a daemon; subprocesses it started have their own
    timeouts), so doctor always finishes.
    """
    boxes: List[Dict[str, Any]] = []
    threads: List[threading.Thread] = []
    for check in checks:
        box: Dict[str, Any] = {"started": time.monotonic()}

        def work(check: Check = check, box: Dict[str, Any] = box) -> None:
            try:
                box["result"] = check.func()
            except BaseException as exc:
                box["error"] = exc
            box["ended"] = time.monotonic()

        thread = threading.Thread(target=work, name=f"doctor-{check.name}", daemon=True)
        thread.start()
        boxes.append(box)
        threads.append(thread)
    out: List[CheckResult] = []
    for check, box, thread in zip(checks, boxes, threads):
        thread.join(max(0.0, box["started"] + check.timeout - time.monotonic()))
        elapsed = int((box.get("ended", time.monotonic()) - box["started"]) * 1000)
        if thread.is_alive():
            out.append(
                CheckResult(
                    FAIL,
                    check.name,
                    f"did not finish within {check.timeout:.0f}s",
                    "something it talks to is hanging (a database, a bucket, the network); "
                    "run with --timeout to wait longer",
                    elapsed,
                )
            )
            continue
        if "error" in box:
            exc = box["error"]
            text = str(exc) if isinstance(exc, AgentError) else f"{type(exc).__name__}: {exc}"
            out.append(
                CheckResult(FAIL, check.name, f"check crashed: {redact(text)}", None, elapsed)
            )
            continue
        result = box.get("result")
        items = [result] if isinstance(result, CheckResult) else list(result or [])
        for item in items:
            item.detail, item.duration_ms = redact(item.detail), elapsed
            item.fix = redact(item.fix) if item.fix else None
            out.append(item)
    return out


# -- helpers ----------------------------------------------------------------------


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def default_agent_user() -> str:
    """The service user when the installer created it, else whoever runs doctor."""
    try:
        pwd.getpwnam(SERVICE_USER)
        return SERVICE_USER
    except KeyError:
        return _user_name(os.geteuid())


def user_may(path: Union[str, Path], user: str, want: int) -> Optional[bool]:
    """Whether ``user`` has ``want`` (os.R_OK/W_OK/X_OK bits) on ``path`` by its mode.

    Answers for another user than ours (doctor run as root for the service
    user) from ownership, groups and mode bits; ACLs are not read. None when
    the user does not exist.
    """
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return None
    if pw.pw_uid == 0:
        return True
    st = os.stat(path)
    groups = {pw.pw_gid} | {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}
    if st.st_uid == pw.pw_uid:
        shift = 6
    elif st.st_gid in groups:
        shift = 3
    else:
        shift = 0
    bits = (st.st_mode >> shift) & 0o7
    return bits & want == want


def probe_write(directory: Path) -> Optional[str]:
    """Create, write, fsync and remove a file in ``directory``; the error, or None."""
    path = directory / f"{PROBE_PREFIX}{secrets.token_hex(6)}"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        return exc.strerror or str(exc)
    try:
        os.write(fd, b"backupagent doctor write test\n")
        os.fsync(fd)
    except OSError as exc:
        return exc.strerror or str(exc)
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
    return None


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _agent_sees(ctx: DoctorContext, path: Path, want: int) -> Optional[str]:
    """When doctor runs as root for another agent user: why that user lacks access."""
    if os.geteuid() != 0 or ctx.agent_user in ("", "root"):
        return None
    allowed = user_may(path, ctx.agent_user, want)
    if allowed is None or allowed:
        return None
    need = "write to" if want & os.W_OK else "read"
    return f"the agent's user {ctx.agent_user} cannot {need} it"


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


# -- checks: host -----------------------------------------------------------------


def check_user(ctx: DoctorContext) -> CheckResult:
    me = _user_name(os.geteuid())
    if me == ctx.agent_user:
        return CheckResult(OK, "user", f"running as {me}, the agent's user")
    return CheckResult(
        INFO,
        "user",
        f"running as {me}; the agent runs as {ctx.agent_user}, whose access is judged "
        "from file modes",
        f"for exact results run: sudo -u {ctx.agent_user} backupagent doctor",
    )


def check_config_dir(ctx: DoctorContext) -> CheckResult:
    path = ctx.app.config_dir
    name = "config dir"
    if not path.is_dir():
        return CheckResult(
            FAIL,
            name,
            f"{path} does not exist",
            f"install -d -m 0750 -o root -g {ctx.agent_user} {path} "
            "(the installer does this), then `backupagent register`",
        )
    if not os.access(path, os.R_OK | os.X_OK):
        return CheckResult(
            FAIL,
            name,
            f"{path} is not readable by {_user_name(os.geteuid())}",
            f"chmod u+rx {path}",
        )
    problem = _agent_sees(ctx, path, os.R_OK | os.X_OK)
    if problem:
        return CheckResult(
            FAIL, name, f"{path}: {problem}", f"chgrp {ctx.agent_user} {path} && chmod 0750 {path}"
        )
    writable = probe_write(path) is None
    detail = f"{path} ({_mode(path):04o}, owner {_user_name(path.stat().st_uid)})"
    detail += " readable and writable" if writable else " readable; not writable by this user"
    if not writable:
        return CheckResult(OK, name, detail + " (fine for the daemon; `register` needs root)", None)
    return CheckResult(OK, name, detail)


def check_state_dir(ctx: DoctorContext) -> CheckResult:
    path = ctx.app.state_dir
    name = "state dir"
    owner = ctx.agent_user
    fix = f"install -d -m 0750 -o {owner} -g {owner} {path}"
    if not path.exists():
        parent = _nearest_existing(path.parent)
        if probe_write(parent) is None and not _agent_sees(ctx, parent, os.W_OK | os.X_OK):
            return CheckResult(WARN, name, f"{path} does not exist; the agent will create it", fix)
        return CheckResult(FAIL, name, f"{path} does not exist and cannot be created", fix)
    if not path.is_dir():
        return CheckResult(FAIL, name, f"{path} is not a directory", f"remove it, then: {fix}")
    error = probe_write(path)
    if error:
        return CheckResult(
            FAIL, name, f"{path} is not writable by {_user_name(os.geteuid())}: {error}", fix
        )
    problem = _agent_sees(ctx, path, os.W_OK | os.X_OK)
    if problem:
        return CheckResult(FAIL, name, f"{path}: {problem}", f"chown -R {owner}: {path}")
    usage = shutil.disk_usage(path)
    return CheckResult(
        OK, name, f"{path} writable, {usage.free / 2**30:.1f} GiB free (job spool lives here)"
    )


def _secret_file(
    ctx: DoctorContext, name: str, path: Path, what: str, missing_fix: str
) -> Tuple[Optional[CheckResult], Optional[bytes]]:
    """Shared rules for the API key and the age identity: exists, 0600, right owner."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return CheckResult(FAIL, name, f"{path} does not exist", missing_fix), None
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        return (
            CheckResult(
                FAIL,
                name,
                f"{path} has mode {mode:04o}: the {what} is readable by group or others",
                f"chmod 600 {path}",
            ),
            None,
        )
    owner = _user_name(st.st_uid)
    try:
        agent_uid: Optional[int] = pwd.getpwnam(ctx.agent_user).pw_uid
    except KeyError:
        agent_uid = None
    if agent_uid not in (None, 0, st.st_uid):
        return (
            CheckResult(
                FAIL,
                name,
                f"{path} is owned by {owner}, so the agent's user {ctx.agent_user} cannot read "
                f"it (mode {mode:04o})",
                f"chown {ctx.agent_user}: {path}",
            ),
            None,
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        return (
            CheckResult(
                FAIL,
                name,
                f"cannot read {path}: {exc.strerror}",
                f"run doctor as {ctx.agent_user} or root",
            ),
            None,
        )
    return None, data


def check_api_key(ctx: DoctorContext) -> CheckResult:
    name = "api key"
    path = ctx.settings.api_key_file
    bad, data = _secret_file(
        ctx, name, path, "API key", "register this host: backupagent register --token TOKEN"
    )
    if bad is not None:
        return bad
    if not (data or b"").strip():
        return CheckResult(
            FAIL,
            name,
            f"{path} is empty",
            "re-register: backupagent register --force --token TOKEN",
        )
    st = os.stat(path)
    return CheckResult(OK, name, f"{path} mode 0600, owner {_user_name(st.st_uid)}")


def check_registration(ctx: DoctorContext) -> CheckResult:
    s = ctx.settings
    if ctx.standalone:
        return CheckResult(INFO, "registration", "standalone mode (--config-file): not needed")
    if not s.agent_id or not s.server_url:
        return CheckResult(
            FAIL,
            "registration",
            f"this host is not registered ({s.settings_file} has no agentId/serverUrl)",
            "backupagent register --token TOKEN (a token from the control plane), or run "
            "standalone with --config-file",
        )
    return CheckResult(OK, "registration", f"agent {s.agent_id} with {s.server_url}")


def check_credentials_file(ctx: DoctorContext) -> CheckResult:
    from backupagent.engines.credentials import CredentialsError, load_credentials

    path = ctx.settings.credentials_file
    name = "credentials file"
    if not path.exists():
        return CheckResult(
            INFO,
            name,
            f"{path} does not exist: databases log in with the tools' own defaults "
            "(peer auth, ~/.pgpass, ...)",
        )
    bad, _ = _secret_file(ctx, name, path, "database passwords file", "")
    if bad is not None:
        return bad
    try:
        entries = load_credentials(path)
    except CredentialsError as exc:
        return CheckResult(FAIL, name, str(exc), "fix the entries named above")
    return CheckResult(OK, name, f"{path} mode 0600, {len(entries)} entries")


# -- checks: control plane ------------------------------------------------------------


def check_control_plane(ctx: DoctorContext) -> List[CheckResult]:
    """GET /api/v1/health (or the base URL), with the client's TLS settings.

    Reports latency, and clock skew from the response's Date header: the
    API's timestamps and S3's request signatures both break on a wrong clock.
    """
    import requests

    s = ctx.settings
    base = str(s.server_url).rstrip("/")
    session = requests.Session()
    session.verify = s.ca_bundle or True
    session.headers["User-Agent"] = "backupagent-doctor"
    timeout = (min(5.0, ctx.timeout / 2), min(10.0, ctx.timeout / 2))
    url = base + "/api/v1/health"
    try:
        before = time.time()
        t0 = time.monotonic()
        resp = session.get(url, timeout=timeout, allow_redirects=False)
        if resp.status_code == 404:
            url = base + "/"
            before = time.time()
            t0 = time.monotonic()
            resp = session.get(url, timeout=timeout, allow_redirects=False)
        latency_ms = (time.monotonic() - t0) * 1000
        after = time.time()
    except requests.exceptions.SSLError as exc:
        return [
            CheckResult(
                FAIL,
                "control plane",
                f"TLS handshake with {base} failed: {_short(exc)}",
                "if the server uses a private CA, set caBundle: /path/ca.pem in agent.yaml; "
                "check the host's clock (certificates look expired on a wrong clock)",
            )
        ]
    except requests.exceptions.Timeout:
        return [
            CheckResult(
                FAIL,
                "control plane",
                f"{base} did not answer within {timeout[0] + timeout[1]:.0f}s",
                "check the network path (firewall, HTTPS_PROXY) to the control plane",
            )
        ]
    except requests.exceptions.RequestException as exc:
        return [
            CheckResult(
                FAIL,
                "control plane",
                f"cannot reach {base}: {_short(exc)}",
                f"check serverUrl in {s.settings_file}, DNS, the firewall and any proxy "
                "(HTTPS_PROXY); the host must reach the control plane over HTTPS",
            )
        ]
    finally:
        session.close()
    out: List[CheckResult] = []
    if resp.status_code >= 500:
        out.append(
            CheckResult(
                WARN,
                "control plane",
                f"{url} answered HTTP {resp.status_code} in {latency_ms:.0f} ms",
                "the control plane is reachable but unwell; retry later or check its status",
            )
        )
    else:
        note = "" if url.endswith("/health") else f" (HTTP {resp.status_code}, no health endpoint)"
        out.append(CheckResult(OK, "control plane", f"{base} reachable, {latency_ms:.0f} ms{note}"))
    out.append(_clock_skew(resp.headers.get("Date"), before, after))
    return out


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 300 else text[:300] + "..."


def _clock_skew(date_header: Optional[str], before: float, after: float) -> CheckResult:
    name = "clock skew"
    if not date_header:
        return CheckResult(INFO, name, "the control plane sent no Date header; not checked")
    try:
        server = email.utils.parsedate_to_datetime(date_header).timestamp()
    except (TypeError, ValueError):
        return CheckResult(INFO, name, f"unparseable Date header {date_header!r}; not checked")
    local = (before + after) / 2
    skew = local - server
    # Date has a 1 s resolution: up to a second (plus the round trip) is noise.
    slack = 1.0 + (after - before) / 2
    if abs(skew) <= CLOCK_SKEW_WARN + slack:
        return CheckResult(OK, name, f"{skew:+.1f}s against the control plane")
    direction = "ahead of" if skew > 0 else "behind"
    return CheckResult(
        WARN,
        name,
        f"this host's clock is {abs(skew):.0f}s {direction} the control plane",
        "enable time synchronisation: timedatectl set-ntp true (or chrony/ntpd)",
    )


# -- checks: config, tools, databases -----------------------------------------------------


def load_config(ctx: DoctorContext, config_file: Optional[Path]) -> List[CheckResult]:
    from backupagent.config.load import LastGoodConfigCache, load_config_file
    from backupagent.errors import ConfigInvalid

    if config_file is not None:
        try:
            _, ctx.config = load_config_file(config_file)
        except ConfigInvalid as exc:
            return [CheckResult(FAIL, "config", str(exc), f"fix {config_file}")]
        ctx.config_source = str(config_file)
    else:
        cached = LastGoodConfigCache(ctx.app.state_dir).load()
        if cached is None:
            return [
                CheckResult(
                    WARN,
                    "config",
                    f"no config yet (none cached in {ctx.app.state_dir}): database, target and "
                    "Docker checks are skipped",
                    "start the agent so it pulls its config, or pass --config-file",
                )
            ]
        ctx.config = cached[1]
        ctx.config_source = "cached last good config"
    c = ctx.config
    out = [
        CheckResult(
            OK,
            "config",
            f"{ctx.config_source}: {len(c.schedules)} schedule(s), {len(c.targets)} target(s)",
        )
    ]
    out += [CheckResult(WARN, "config", warning) for warning in c.warnings]
    return out


_TOOL_HINTS = {
    "postgresql": "apt install postgresql-client (the server's major version or newer)",
    "mysql": "apt install mariadb-client (or mysql-client)",
    "mariadb": "apt install mariadb-client",
    "redis": "apt install redis-tools",
}


def check_tools(db_type: str) -> CheckResult:
    from backupagent.engines.registry import get_engine

    name = f"dump tool {db_type}"
    hint = _TOOL_HINTS.get(db_type)
    try:
        if db_type == "postgresql":
            from backupagent.engines.postgresql import _binary_major, tool_candidates

            found = [(p, _binary_major(p)) for p in tool_candidates("pg_dump")]
            versions = [f"{info[1]} at {p}" for p, info in found if info is not None]
            if not versions:
                return CheckResult(FAIL, name, "pg_dump not found", hint)
            if not tool_candidates("psql"):
                return CheckResult(FAIL, name, "psql not found (needed for queries)", hint)
            return CheckResult(OK, name, "; ".join(versions))
        engine: Any = get_engine(db_type)
        return CheckResult(OK, name, engine.tool_version())
    except AgentError as exc:
        return CheckResult(FAIL, name, str(exc), hint)


def _db_label(ref: Any) -> str:
    where = f"{ref.host}:{ref.port}/" if ref.host else ""
    return f"{ref.db_type}:{where}{ref.database_name}"


def _db_fix(exc: AgentError) -> str:
    code = getattr(exc, "code", "")
    if code == "AUTH_FAIL":
        return "fix the user/password in credentials.yaml (or the database's auth rules)"
    if code == "DB_UNREACHABLE":
        return "check that the database runs and that host/port (or socket) are right"
    if code == "DB_NOT_FOUND":
        return "check the database name in the schedule"
    if code == "PERMISSION_DENIED":
        return "grant the backup role read access (PostgreSQL: GRANT pg_read_all_data)"
    if code == "TOOL_MISSING":
        return "install the client tools named above"
    return "see the error above"


def check_database(ctx: DoctorContext, ref: Any) -> CheckResult:
    """Connect with the host's credentials; for PostgreSQL, match pg_dump to the server."""
    from backupagent.engines.credentials import resolve_connection
    from backupagent.engines.registry import get_engine

    name = f"database {_db_label(ref)}"
    timeout = max(1.0, ctx.timeout - 2)
    try:
        conn = resolve_connection(ref, ctx.settings.credentials_file)
        engine: Any = get_engine(conn.db_type)
        if conn.db_type == "postgresql":
            from backupagent.engines.postgresql import select_tool

            version = engine.query(conn, "SHOW server_version", timeout=timeout)
            major = int(engine.query(conn, "SHOW server_version_num", timeout=timeout)) // 10000
            tool, line = select_tool("pg_dump", major)
            return CheckResult(OK, name, f"server {version}; will dump with {line} ({tool})")
        if conn.db_type in ("mysql", "mariadb"):
            version = engine.query_rows(conn, "SELECT VERSION()", timeout=timeout)[0][0]
            return CheckResult(OK, name, f"server {version}; dump tool {engine.dump_tool()}")
        if conn.db_type == "redis":
            info = engine.command(conn, "INFO", "server", timeout=timeout)
            version = next(
                (
                    ln.split(":", 1)[1].strip()
                    for ln in info.splitlines()
                    if ln.startswith("redis_version:")
                ),
                "?",
            )
            return CheckResult(OK, name, f"server {version}")
        if conn.db_type == "sqlite":
            path = Path(conn.database_name)
            if not path.is_file():
                return CheckResult(FAIL, name, f"{path} does not exist", "fix the schedule's path")
            if not os.access(path, os.R_OK):
                return CheckResult(
                    FAIL,
                    name,
                    f"{path} is not readable",
                    f"give the agent's user read access to {path}",
                )
            return CheckResult(OK, name, f"{path} readable ({path.stat().st_size} bytes)")
        return CheckResult(WARN, name, f"no connection check for dbType {conn.db_type}")
    except AgentError as exc:
        return CheckResult(FAIL, name, str(exc), _db_fix(exc))


# -- checks: targets ------------------------------------------------------------------


def check_target(ctx: DoctorContext, target: Any) -> CheckResult:
    name = f"target {target.id}"
    if target.type == "local" and target.local is not None:
        return _check_local_target(ctx, name, Path(target.local.path))
    if target.type == "s3" and target.s3 is not None:
        return _check_s3_target(name, target)
    return CheckResult(WARN, name, f"no check for target type {target.type!r}")


def _check_local_target(ctx: DoctorContext, name: str, path: Path) -> CheckResult:
    fix = f"install -d -m 0750 -o {ctx.agent_user} {path}"
    if not path.exists():
        parent = _nearest_existing(path.parent)
        if (
            parent.is_dir()
            and probe_write(parent) is None
            and not _agent_sees(ctx, parent, os.W_OK | os.X_OK)
        ):
            return CheckResult(WARN, name, f"{path} does not exist; the first backup creates it")
        return CheckResult(FAIL, name, f"{path} does not exist and cannot be created", fix)
    if not path.is_dir():
        return CheckResult(
            FAIL, name, f"{path} is not a directory", "point the target at a directory"
        )
    error = probe_write(path)
    if error:
        return CheckResult(
            FAIL,
            name,
            f"{path} is not writable by {_user_name(os.geteuid())}: {error}",
            f"chown {ctx.agent_user}: {path} (and under systemd add it to ReadWritePaths=)",
        )
    problem = _agent_sees(ctx, path, os.W_OK | os.X_OK)
    if problem:
        return CheckResult(FAIL, name, f"{path}: {problem}", f"chown {ctx.agent_user}: {path}")
    usage = shutil.disk_usage(path)
    return CheckResult(OK, name, f"{path} writable, {usage.free / 2**30:.1f} GiB free")


def _check_s3_target(name: str, target: Any) -> CheckResult:
    """Put and delete a small dot-named object: what a backup needs, minus the size.

    Goes through the target's own client so endpoint, region, path style,
    credentials and SSE are exactly the backup's. Dot-led keys are reserved
    (never listed as backups), so a leftover cannot pass for one.
    """
    from backupagent.targets.registry import target_from_config

    t: Any = target_from_config(target)
    key = (
        f"{t.prefix}/{PROBE_PREFIX}{secrets.token_hex(6)}"
        if t.prefix
        else (f"{PROBE_PREFIX}{secrets.token_hex(6)}")
    )
    url = f"s3://{t.bucket}/{key}"
    try:
        t._client.put_object(
            Bucket=t.bucket, Key=key, Body=b"backupagent doctor write test\n", **t._put_args()
        )
    except Exception as exc:
        return CheckResult(
            FAIL,
            name,
            str(t._error("writing", url, exc)),
            "the agent needs s3:PutObject, s3:GetObject, s3:ListBucket and s3:DeleteObject "
            "on the bucket/prefix",
        )
    try:
        t._client.delete_object(Bucket=t.bucket, Key=key)
    except Exception as exc:
        return CheckResult(
            WARN,
            name,
            f"write ok but {t._error('deleting', url, exc)}",
            "grant s3:DeleteObject (retention needs it) and remove the leftover object",
        )
    return CheckResult(OK, name, f"s3://{t.bucket}/{t.prefix} writable (put + delete)")


# -- checks: verification, Docker, optional CLIs --------------------------------------------


def _verification_section(ctx: DoctorContext) -> Dict[str, Any]:
    section = (ctx.settings.extra or {}).get("verification") if ctx.settings else None
    return section if isinstance(section, dict) else {}


def check_identity(ctx: DoctorContext, path_text: str) -> CheckResult:
    from backupagent.crypto.keys import load_identities

    name = "age identity"
    path = Path(path_text)
    bad, _ = _secret_file(
        ctx, name, path, "age secret key", "fix verification.identityFile in agent.yaml"
    )
    if bad is not None:
        return bad
    try:
        identities = load_identities(path)
    except AgentError as exc:
        return CheckResult(FAIL, name, str(exc), "point identityFile at an age key file")
    mine = {i.recipient for i in identities}
    if ctx.config is not None:
        foreign = [
            t.id
            for t in ctx.config.targets
            if t.encrypted and not mine & set(t.encryption.recipients)
        ]
        if foreign:
            return CheckResult(
                WARN,
                name,
                f"{path}: none of its {len(mine)} keys is a recipient of target(s) "
                f"{', '.join(foreign)}, so verification cannot decrypt their backups",
                "add this identity's public key (backupagent keygen shows it) to those targets' "
                "recipients, or unset identityFile to verify from the local spool",
            )
    return CheckResult(
        OK, name, f"{path} mode 0600, {len(mine)} identit{'y' if len(mine) == 1 else 'ies'}"
    )


def _docker_socket() -> Optional[Path]:
    host = os.environ.get("DOCKER_HOST", "")
    if host.startswith("unix://"):
        return Path(host[len("unix://") :])
    if host:
        return None
    return Path("/var/run/docker.sock")


def check_docker(ctx: DoctorContext) -> List[CheckResult]:
    from backupagent.verify.container import docker_client

    try:
        client = docker_client(timeout=max(1.0, ctx.timeout - 2))
        try:
            version = client.version().get("Version", "?")
        finally:
            client.close()
    except AgentError as exc:
        return [CheckResult(FAIL, "docker", str(exc), "verification restores need a Docker engine")]
    out = [CheckResult(OK, "docker", f"engine {version} reachable (needed for verification)")]
    sock = _docker_socket()
    if sock is None or not sock.exists():
        return out
    name = "docker socket"
    st = os.stat(sock)
    warning = (
        f"{sock} ({_user_name(st.st_uid)}:{_group_name(st.st_gid)} {stat.S_IMODE(st.st_mode):04o})"
        " gives root-equivalent control of this host to whoever can use it"
    )
    if ctx.agent_user == "root":
        out.append(CheckResult(INFO, name, warning + "; the agent runs as root anyway"))
    elif user_may(sock, ctx.agent_user, os.R_OK | os.W_OK):
        out.append(
            CheckResult(
                WARN,
                name,
                warning + f", and the agent's user {ctx.agent_user} can",
                "accepted risk if verification is wanted; otherwise disable verification and "
                f"remove {ctx.agent_user} from the socket's group (docs/install.md)",
            )
        )
    else:
        out.append(
            CheckResult(
                FAIL,
                name,
                f"the agent's user {ctx.agent_user} cannot use {sock}",
                f"usermod -aG {_group_name(st.st_gid)} {ctx.agent_user} (root-equivalent: "
                "see docs/install.md), or disable verification",
            )
        )
    return out


def check_cli(tool: str, purpose: str) -> CheckResult:
    from backupagent.engines.process import tool_version_line

    path = shutil.which(tool)
    name = f"{tool} cli"
    if not path:
        return CheckResult(
            INFO, name, f"not installed (optional: {purpose})", f"apt install {tool}"
        )
    try:
        return CheckResult(OK, name, f"{tool_version_line([path, '--version'])} at {path}")
    except AgentError as exc:
        return CheckResult(INFO, name, f"{path}: {exc}")


def check_metrics_file(ctx: DoctorContext, path_text: str) -> CheckResult:
    name = "metrics file"
    path = Path(path_text)
    directory = path.parent
    fix = (
        f"create {directory} writable by {ctx.agent_user} (node_exporter's "
        "--collector.textfile.directory) and add it to ReadWritePaths= under systemd"
    )
    if not directory.is_dir():
        return CheckResult(WARN, name, f"{directory} does not exist", fix)
    error = probe_write(directory) or _agent_sees(ctx, directory, os.W_OK | os.X_OK)
    if error:
        return CheckResult(WARN, name, f"{directory} is not writable: {error}", fix)
    return CheckResult(OK, name, f"{path} (directory writable)")


# -- assembling ----------------------------------------------------------------------


# What the checks import lazily, loaded before their threads start
# (backupagent.preload says why).
_LAZY_CHECK_MODULES = (
    "backupagent.config.load",
    "backupagent.crypto.keys",
    "backupagent.engines.credentials",
    "backupagent.engines.process",
    "backupagent.engines.registry",
    "backupagent.targets.registry",
)


def build_checks(ctx: DoctorContext) -> List[Check]:
    from backupagent.preload import preload

    preload(_LAZY_CHECK_MODULES)
    t = ctx.timeout
    checks: List[Check] = [
        Check("user", lambda: check_user(ctx), t),
        Check("config dir", lambda: check_config_dir(ctx), t),
        Check("state dir", lambda: check_state_dir(ctx), t),
    ]
    if ctx.settings is None:
        return checks
    checks.append(Check("registration", lambda: check_registration(ctx), t))
    registered = bool(ctx.settings.agent_id or ctx.settings.server_url)
    if not ctx.standalone and (registered or ctx.settings.api_key_file.exists()):
        checks.append(Check("api key", lambda: check_api_key(ctx), t))
    if not ctx.standalone and ctx.settings.server_url:
        checks.append(Check("control plane", lambda: check_control_plane(ctx), t))
    checks.append(Check("credentials file", lambda: check_credentials_file(ctx), t))
    config = ctx.config
    if config is not None:
        db_types = sorted({s.database.db_type for s in config.schedules})
        for db_type in db_types:
            checks.append(Check(f"dump tool {db_type}", lambda d=db_type: check_tools(d), t))
        seen = set()
        for s in config.schedules:
            key = (s.database.db_type, s.database.host, s.database.port, s.database.database_name)
            if key not in seen:
                seen.add(key)
                checks.append(
                    Check(
                        f"database {_db_label(s.database)}",
                        lambda ref=s.database: check_database(ctx, ref),
                        t,
                    )
                )
        used = {s.target_id for s in config.schedules}
        for target in config.targets:
            if target.id in used or not config.schedules:
                checks.append(
                    Check(f"target {target.id}", lambda tg=target: check_target(ctx, tg), t)
                )
        if any(s.enabled and s.verification.enabled for s in config.schedules):
            checks.append(Check("docker", lambda: check_docker(ctx), t))
        else:
            ctx.results.append(
                CheckResult(INFO, "docker", "not needed: no schedule has verification enabled")
            )
    identity = _verification_section(ctx).get("identityFile")
    if identity:
        checks.append(Check("age identity", lambda: check_identity(ctx, str(identity)), t))
    metrics_file = (ctx.settings.extra or {}).get("metricsFile")
    if isinstance(metrics_file, str) and metrics_file:
        checks.append(Check("metrics file", lambda: check_metrics_file(ctx, metrics_file), t))
    checks.append(Check("age cli", lambda: check_cli("age", "manual decryption of backups"), t))
    checks.append(Check("zstd cli", lambda: check_cli("zstd", "manual decompression"), t))
    return checks


def diagnose(
    app: AppContext,
    *,
    config_file: Optional[Path] = None,
    agent_user: Optional[str] = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> List[CheckResult]:
    """Every check's result, in a stable order; never raises for a failed check."""
    from backupagent.settings import load_settings

    ctx = DoctorContext(
        app=app,
        standalone=config_file is not None,
        agent_user=agent_user or default_agent_user(),
        timeout=timeout,
    )
    first: List[CheckResult] = []
    try:
        ctx.settings = load_settings(app.config_dir, app.state_dir)
        path = ctx.settings.settings_file
        detail = f"{path} valid" if path.exists() else f"{path} absent: defaults apply"
        first.append(CheckResult(OK, "settings", detail))
    except AgentError as exc:
        first.append(CheckResult(FAIL, "settings", str(exc), "fix agent.yaml"))
    if ctx.settings is not None:
        first += run_checks([Check("config", lambda: load_config(ctx, config_file), timeout)])
    results = first + run_checks(build_checks(ctx))
    return results + ctx.results


def format_text(results: Sequence[CheckResult]) -> str:
    lines = []
    for r in results:
        lines.append(f"{r.status:<5} {r.check}: {r.detail}")
        if r.fix and r.status != OK:
            lines.append(f"      fix: {r.fix}")
    counts = {s: sum(1 for r in results if r.status == s) for s in (OK, WARN, FAIL, INFO)}
    lines.append(
        f"\n{counts[OK]} ok, {counts[WARN]} warning(s), {counts[FAIL]} failure(s), "
        f"{counts[INFO]} note(s)"
    )
    return "\n".join(lines)


@click.command(
    help="Check this host's prerequisites (directories, key files, control plane, clock, "
    "dump tools against the database servers, targets, Docker) and say how to fix each. "
    "Changes nothing on the server; exits 1 when any check FAILs."
)
@click.option(
    "--config-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Check against this standalone config instead of the cached one.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=1.0, max=600.0),
    default=DEFAULT_TIMEOUT,
    show_default=True,
    help="Seconds each check may take.",
)
@click.option(
    "--user",
    "agent_user",
    default=None,
    help=f"The user the agent runs as [default: {SERVICE_USER} if it exists, else you].",
)
@pass_app
def doctor(
    app: AppContext,
    config_file: Optional[Path],
    as_json: bool,
    timeout: float,
    agent_user: Optional[str],
) -> None:
    results = diagnose(app, config_file=config_file, agent_user=agent_user, timeout=timeout)
    failed = any(r.status == FAIL for r in results)
    if as_json:
        emit_json(
            {
                "ok": not failed,
                "checks": [
                    {
                        "status": r.status.lower(),
                        "check": r.check,
                        "detail": r.detail,
                        "fix": r.fix,
                        "durationMs": r.duration_ms,
                    }
                    for r in results
                ],
            }
        )
    else:
        click.echo(format_text(results))
    raise SystemExit(int(ExitCode.FAILURE) if failed else int(ExitCode.OK))
