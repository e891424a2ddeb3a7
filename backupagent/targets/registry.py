"""Pick a target implementation by URL scheme or from a config target.

URL forms (the CLI's ``--to`` and ``list`` arguments)::

    file:///var/backups/db
    s3://bucket
    s3://bucket/some/prefix?endpoint=http://127.0.0.1:8333&region=eu-west-1
        &path_style=true&storage_class=STANDARD_IA&sse=AES256

Credentials never come from a URL (URLs end up in logs, shell history and
``/proc``): pass them as the ``credentials`` option or use the AWS chain.
Backends are imported when used, so resolving a ``file://`` URL never
imports boto3.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Optional
from urllib.parse import parse_qsl, unquote, urlsplit

from backupagent.targets.base import Target, TargetError

Factory = Callable[..., Target]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_S3_QUERY = {
    "endpoint": "endpoint_url",
    "endpoint_url": "endpoint_url",
    "endpointUrl": "endpoint_url",
    "region": "region",
    "storage_class": "storage_class",
    "storageClass": "storage_class",
    "sse": "sse",
    "path_style": "path_style",
    "force_path_style": "path_style",
    "forcePathStyle": "path_style",
}


def _accepted(cls: Any, options: Dict[str, Any]) -> Dict[str, Any]:
    """The options ``cls`` takes: callers pass one set (say ``part_size``) for any backend."""
    params = inspect.signature(cls).parameters
    return {k: v for k, v in options.items() if k in params}


def _bool(name: str, value: str) -> bool:
    low = value.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise TargetError(f"URL option {name}={value!r} is not a boolean: use true or false")


def _open_file(url: str, **options: Any) -> Target:
    from backupagent.targets.local import LocalTarget

    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise TargetError(
            f"file URL {url!r} names host {parts.netloc!r}: use file:///absolute/path "
            "(three slashes)"
        )
    if parts.query or parts.fragment:
        raise TargetError(f"file URL {url!r} takes no query or fragment")
    path = unquote(parts.path)
    if not path.startswith("/"):
        raise TargetError(f"file URL {url!r} needs an absolute path: file:///absolute/path")
    return LocalTarget(path, **_accepted(LocalTarget, options))


def _open_s3(url: str, **options: Any) -> Target:
    from backupagent.targets.s3 import S3Target

    parts = urlsplit(url)
    if "@" in parts.netloc:
        # do not echo the URL: whatever is before the @ may be a secret
        raise TargetError(
            "s3 URL must not contain credentials (user:secret@bucket): pass them in the "
            "target's credentials or use the AWS credential chain"
        )
    bucket = parts.netloc
    if not bucket:
        raise TargetError(f"s3 URL {url!r} has no bucket: use s3://bucket/prefix")
    kwargs: Dict[str, Any] = {"prefix": unquote(parts.path).strip("/")}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        field = _S3_QUERY.get(name)
        if field is None:
            raise TargetError(
                f"unknown s3 URL option {name!r}: use one of endpoint, region, "
                "storage_class, sse, path_style"
            )
        kwargs[field] = _bool(name, value) if field == "path_style" else (value or None)
    kwargs.update(_accepted(S3Target, options))
    return S3Target(bucket, **kwargs)


_SCHEMES: Dict[str, Factory] = {"file": _open_file, "s3": _open_s3}


def register_scheme(scheme: str, factory: Factory) -> None:
    """Add a backend (a plugin or a test double for a URL scheme)."""
    _SCHEMES[scheme.lower()] = factory


def open_target_url(url: str, **options: Any) -> Target:
    """A target for ``url``; ``options`` go to the backend's constructor.

    Options the chosen backend does not take (``part_size`` for a local
    directory) are dropped, so a caller need not know the backend.
    """
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    factory = _SCHEMES.get(scheme)
    if factory is None:
        shown = url if "@" not in url else "<url with credentials>"
        raise TargetError(
            f"target URL {shown!r} has an unsupported scheme: use one of "
            + ", ".join(f"{s}://" for s in sorted(_SCHEMES))
        )
    return factory(url, **options)


def target_from_config(target_config: Any, **options: Any) -> Target:
    """A target for a ``backupagent.config.model.Target``.

    ``options`` (for example ``part_size``, ``spool_dir``) go to the backend.
    """
    kind = getattr(target_config, "type", None)
    tid = getattr(target_config, "id", "?")
    if kind == "local":
        local = getattr(target_config, "local", None)
        if local is None or not getattr(local, "path", None):
            raise TargetError(f"target {tid!r}: type local needs a path")
        from backupagent.targets.local import LocalTarget

        return LocalTarget(local.path, **_accepted(LocalTarget, options))
    if kind == "s3":
        s3: Optional[Any] = getattr(target_config, "s3", None)
        if s3 is None or not getattr(s3, "bucket", None):
            raise TargetError(f"target {tid!r}: type s3 needs a bucket")
        from backupagent.targets.s3 import S3Target

        kwargs: Dict[str, Any] = {
            "prefix": s3.prefix or "",
            "region": s3.region,
            "endpoint_url": s3.endpoint_url,
            "storage_class": s3.storage_class,
            "sse": s3.server_side_encryption,
            "credentials": s3.credentials,
            # False means "not asked for": S3Target then picks path style
            # whenever an endpoint is set, which is what S3-compatible stores need.
            "path_style": True if s3.force_path_style else None,
        }
        kwargs.update(_accepted(S3Target, options))
        return S3Target(s3.bucket, **kwargs)
    raise TargetError(f"target {tid!r} has unsupported type {kind!r}: use 's3' or 'local'")
