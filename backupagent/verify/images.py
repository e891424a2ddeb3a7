"""Which container image verifies a backup, and getting it onto the host.

The default is the engine's official image at the source server's version
(``postgres:15``, ``mariadb:10.11``, ``mysql:8.0``, ``redis:7``): restoring
into the same major proves the dump is usable where it would really be
restored. Two overrides exist because real hosts differ: a schedule may name
its own image (an image with the extensions the database needs), and an
air-gapped host maps engines to images in its private registry in the host
settings (``verification: {images: {postgresql: registry.local/pg:15}}``,
where ``{version}`` in the value is replaced by the derived version tag).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

from backupagent.verify.errors import (
    VERIFY_DOCKER_UNAVAILABLE,
    VERIFY_IMAGE_MISSING,
    VERIFY_UNSUPPORTED,
    VerifyError,
)

OFFICIAL_REPOS: Dict[str, str] = {
    "postgresql": "postgres",
    "mariadb": "mariadb",
    "mysql": "mysql",
    "redis": "redis",
}
_ALIASES = {"postgres": "postgresql", "pg": "postgresql"}
DEFAULT_PULL_TIMEOUT = 600.0


@dataclass(frozen=True)
class ImageChoice:
    """The image to run and where that choice came from (for logs and reports)."""

    image: str
    source: str  # "schedule", "host settings" or "default"


def normalize_db_type(db_type: str) -> str:
    key = (db_type or "").strip().lower()
    return _ALIASES.get(key, key)


def version_tag(db_type: str, server_version: Optional[str]) -> Optional[str]:
    """The official image tag matching a server version string, or None if unknown.

    PostgreSQL >= 10 is tagged by major (``15``), older by ``major.minor``
    (``9.6``); MariaDB and MySQL by ``major.minor``; Redis by major.
    """
    kind = normalize_db_type(db_type)
    m = re.search(r"(\d+)(?:\.(\d+))?", server_version or "")
    if not m:
        return None
    major, minor = int(m.group(1)), m.group(2)
    if kind == "postgresql":
        if major >= 10:
            return str(major)
        return f"{major}.{minor}" if minor is not None else str(major)
    if kind in ("mariadb", "mysql"):
        return f"{major}.{minor}" if minor is not None else str(major)
    if kind == "redis":
        return str(major)
    return None


def default_image(db_type: str, server_version: Optional[str]) -> str:
    """``<official repo>:<version tag>``; an unknown version gives ``latest``."""
    kind = normalize_db_type(db_type)
    repo = OFFICIAL_REPOS.get(kind)
    if repo is None:
        raise VerifyError(
            f"dbType {db_type!r} cannot be verified in a container; verification supports "
            f"{', '.join(sorted(OFFICIAL_REPOS))} (turn verification off for this schedule)",
            code=VERIFY_UNSUPPORTED,
        )
    return f"{repo}:{version_tag(kind, server_version) or 'latest'}"


def host_images(settings_extra: Optional[Mapping[str, Any]]) -> Dict[str, str]:
    """The host's ``verification.images`` mapping (dbType -> image), validated."""
    section = (settings_extra or {}).get("verification") or {}
    if not isinstance(section, Mapping):
        raise VerifyError(
            "host settings: 'verification' must be a mapping such as "
            "{images: {postgresql: 'registry.local/postgres:{version}'}}",
            code="SETTINGS_INVALID",
        )
    images = section.get("images") or {}
    if not isinstance(images, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in images.items()
    ):
        raise VerifyError(
            "host settings: 'verification.images' must map a dbType to an image name, "
            "e.g. {postgresql: 'registry.local/postgres:{version}'}",
            code="SETTINGS_INVALID",
        )
    return {normalize_db_type(k): v.strip() for k, v in images.items()}


def select_image(
    db_type: str,
    server_version: Optional[str],
    *,
    schedule_image: Optional[str] = None,
    settings_extra: Optional[Mapping[str, Any]] = None,
) -> ImageChoice:
    """The image for one verification: schedule, then host settings, then official."""
    kind = normalize_db_type(db_type)
    if schedule_image and schedule_image.strip():
        return ImageChoice(schedule_image.strip(), "schedule")
    default = default_image(kind, server_version)
    mapped = host_images(settings_extra).get(kind)
    if mapped:
        tag = version_tag(kind, server_version) or "latest"
        return ImageChoice(mapped.replace("{version}", tag), "host settings")
    return ImageChoice(default, "default")


def split_image(image: str) -> tuple[str, Optional[str]]:
    """``repo[:tag]`` or ``repo@digest`` -> (repository, tag or digest)."""
    if "@" in image:
        repo, digest = image.split("@", 1)
        return repo, digest
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = image.rsplit(":", 1)
        return repo, tag
    return image, None


def _missing(image: str, choice_source: str, why: str) -> VerifyError:
    return VerifyError(
        f"verification image {image!r} (from {choice_source}) is not on this host and could "
        f"not be pulled: {why}. Provide it: `docker pull {image}` where a registry is "
        f"reachable, `docker load -i image.tar` on an air-gapped host, or point the host "
        "settings' verification.images.<dbType> (or the schedule's verification.image) at "
        "an image in a reachable registry",
        code=VERIFY_IMAGE_MISSING,
    )


def ensure_image(
    client: Any,
    choice: ImageChoice,
    *,
    timeout: float = DEFAULT_PULL_TIMEOUT,
) -> str:
    """Make sure ``choice.image`` is present (pulling it if not); return its id.

    The pull runs in a helper thread so a registry that accepts the connection
    and then stalls cannot hold the job past ``timeout``.
    """
    import docker.errors

    image = choice.image
    try:
        return str(client.images.get(image).id)
    except docker.errors.ImageNotFound:
        pass
    except docker.errors.APIError as exc:
        raise VerifyError(
            f"Docker could not look up image {image!r}: {exc}", code=VERIFY_DOCKER_UNAVAILABLE
        ) from None
    repo, tag = split_image(image)
    outcome: Dict[str, Any] = {}

    def pull() -> None:
        try:
            outcome["image"] = client.images.pull(repo, tag=tag or "latest")
        except BaseException as exc:  # reported by the caller's thread
            outcome["error"] = exc

    worker = threading.Thread(target=pull, name="verify-pull", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise _missing(image, choice.source, f"the pull did not finish within {timeout:.0f}s")
    if "error" in outcome:
        err = str(outcome["error"]).strip().splitlines()
        raise _missing(image, choice.source, err[0] if err else type(outcome["error"]).__name__)
    try:
        return str(client.images.get(image).id)
    except docker.errors.ImageNotFound:
        raise _missing(image, choice.source, "the pull finished but the tag is absent") from None
