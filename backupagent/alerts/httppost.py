"""POST a JSON document to an alert receiver and classify the outcome.

Shared by the webhook and Slack channels. Redirects are not followed (a 30x
on a POST becomes a GET in most clients and the alert silently vanishes);
4xx other than 408/429 is permanent, since sending the same body again
cannot succeed; 5xx, timeouts and connection errors are worth retrying.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import requests

from backupagent import __version__
from backupagent.alerts.event import AlertSendError, safe_url, scrub_url

TRANSIENT_STATUSES = frozenset({408, 425, 429})


def post_json(
    url: str, payload: Dict[str, Any], *, timeout: Tuple[float, float], what: str
) -> None:
    headers = {"User-Agent": f"backupagent/{__version__}"}
    try:
        resp = requests.post(
            url, json=payload, headers=headers, timeout=timeout, allow_redirects=False
        )
    except requests.RequestException as exc:
        raise AlertSendError(
            f"{what}: could not reach {safe_url(url)}: {scrub_url(str(exc), url)}",
            transient=True,
        ) from None
    with resp:
        if 200 <= resp.status_code < 300:
            return
        body = scrub_url(resp.text[:200].strip(), url)
        raise AlertSendError(
            f"{what}: {safe_url(url)} answered HTTP {resp.status_code}"
            + (f" ({body})" if body else ""),
            transient=resp.status_code >= 500 or resp.status_code in TRANSIENT_STATUSES,
        )
