"""A lean botocore S3 client: the same client, a fraction of the memory.

Creating an S3 client the usual way (``boto3.session.Session().client``)
costs the agent ~25 MB of RSS (measured: 31 -> 56 MB), most of it data, not
code: botocore parses ``endpoints.json`` (1.3 MB, every AWS service in every
region) and the S3 service model (documentation included) into
``OrderedDict`` trees and keeps them for the life of the session. The agent
needs none of that beyond S3 itself, so this module builds the client from a
plain botocore session (boto3's resource layer is never imported) whose data
loader

- parses JSON into plain dicts (ordered since Python 3.7; ``OrderedDict``
  nodes cost about twice as much),
- keeps only the endpoint entries of S3 and of the services the AWS
  credential chain may call through the same session (STS for assume-role
  and web identity, SSO), every partition's metadata unchanged,
- drops the ``documentation`` strings from service models (used only to
  build docstrings, which nobody reads in a daemon).

Request building, signing, retries, endpoint rules and errors are botocore's
own and unchanged: only what the session remembers is smaller.
"""

from __future__ import annotations

import gzip
import json
import os
from typing import Any, Callable, Dict, Optional, Tuple

# endpoints.json entries kept: S3, and what the credential chain creates from
# the same session (AssumeRole/web identity -> sts, SSO -> sso and sso-oidc).
ENDPOINT_SERVICES = frozenset({"s3", "sts", "sso", "sso-oidc"})

_OPENERS: Tuple[Tuple[str, Callable[..., Any]], ...] = ((".json", open), (".json.gz", gzip.open))


def slim_endpoints(data: Dict[str, Any]) -> Dict[str, Any]:
    """endpoints.json with only ENDPOINT_SERVICES' entries in each partition."""
    for partition in data.get("partitions", []):
        services = partition.get("services")
        if isinstance(services, dict):
            partition["services"] = {k: v for k, v in services.items() if k in ENDPOINT_SERVICES}
    return data


def strip_documentation(model: Dict[str, Any]) -> Dict[str, Any]:
    """A service model without its documentation strings (shapes, members, operations)."""
    for section in ("operations", "shapes"):
        for entry in (model.get(section) or {}).values():
            if not isinstance(entry, dict):
                continue
            entry.pop("documentation", None)
            for member in (entry.get("members") or {}).values():
                if isinstance(member, dict):
                    member.pop("documentation", None)
    return model


def _slim(path: str, data: Any) -> Any:
    """Apply the reductions that fit the file at ``path`` (others pass as they are)."""
    if not isinstance(data, dict):
        return data
    name = os.path.basename(path)
    if name.startswith("endpoints.json"):
        return slim_endpoints(data)
    if name.startswith("service-2.json"):
        return strip_documentation(data)
    return data


def make_loader(extra_search_paths: Optional[str] = None) -> Any:
    """A botocore data loader that keeps less (see the module docstring).

    ``extra_search_paths``: botocore's ``data_path`` setting (AWS_DATA_PATH),
    honoured as botocore's own loader does.
    """
    from botocore.loaders import JSONFileLoader, Loader

    class _LeanJSONFileLoader(JSONFileLoader):  # type: ignore[misc]
        def load_file(self, file_path: str) -> Any:
            for ext, opener in _OPENERS:
                full = file_path + ext
                if os.path.isfile(full):
                    with opener(full, "rb") as fp:
                        payload = fp.read()
                    return _slim(full, json.loads(payload.decode("utf-8")))
            # a format this botocore knows and we do not: its own loader
            return super().load_file(file_path)

    paths = [os.path.expanduser(p) for p in (extra_search_paths or "").split(os.pathsep) if p]
    return Loader(extra_search_paths=paths, file_loader=_LeanJSONFileLoader())


def make_s3_client(
    *,
    region: Optional[str],
    endpoint_url: Optional[str],
    config: Any,
    credentials: Dict[str, Optional[str]],
) -> Any:
    """An S3 client from a lean session; ``credentials`` empty: the AWS chain.

    Equivalent to ``boto3.session.Session(region_name=region, **credentials)
    .client("s3", endpoint_url=endpoint_url, config=config)``.
    """
    import botocore.session

    session = botocore.session.Session()
    session.register_component("data_loader", make_loader(session.get_config_variable("data_path")))
    if credentials.get("aws_access_key_id"):
        session.set_credentials(
            credentials["aws_access_key_id"],
            credentials.get("aws_secret_access_key"),
            credentials.get("aws_session_token"),
        )
    return session.create_client(
        "s3", region_name=region, endpoint_url=endpoint_url or None, config=config
    )
