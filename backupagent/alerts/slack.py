"""The Slack channel: an incoming-webhook message with a plain-text fallback.

``text`` is what notifications and old clients show; ``blocks`` is the
readable layout. Slack's limits (header 150 chars, section 3000, field
2000) are applied here, because Slack rejects an oversized message outright
and the alert would be lost.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from backupagent.alerts.event import AlertEvent, AlertSendError
from backupagent.alerts.httppost import post_json
from backupagent.config.model import AlertChannel

SEVERITY_EMOJI = {
    "info": ":information_source:",
    "warning": ":warning:",
    "critical": ":rotating_light:",
}


def _escape(text: str) -> str:
    # Slack's mrkdwn treats these three as control characters.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def slack_payload(ev: AlertEvent) -> Dict[str, Any]:
    emoji = SEVERITY_EMOJI.get(ev.severity, ":grey_question:")
    fallback = f"{emoji} [{ev.severity}] {ev.title} ({ev.hostname}"
    fallback += f", {ev.database})" if ev.database else ")"
    fields = [
        ("Event", ev.label),
        ("Severity", ev.severity),
        ("Host", ev.hostname),
    ]
    if ev.database:
        fields.append(("Database", ev.database))
    if ev.job_id:
        fields.append(("Job", ev.job_id))
    for key, value in list(ev.details.items())[: 10 - len(fields)]:
        fields.append((str(key), str(value)))
    blocks: List[Dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _cut(ev.title, 150)}},
    ]
    if ev.description:
        blocks.append(
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": _cut(_escape(ev.description), 3000)},
            }
        )
    blocks.append(
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": _cut(f"*{_escape(k)}*\n{_escape(v)}", 2000)}
                for k, v in fields
            ],
        }
    )
    blocks.append(
        {
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": f"{emoji} backupagent \u00b7 {ev.timestamp}"}],
        }
    )
    return {"text": _cut(_escape(fallback), 3000), "blocks": blocks}


def send_slack(channel: AlertChannel, ev: AlertEvent, *, timeout: Tuple[float, float]) -> None:
    if not channel.webhook_url:
        raise AlertSendError(
            f"alert channel {channel.id!r} (slack) has no webhook_url: "
            "set alertChannels[].webhookUrl",
            transient=False,
        )
    post_json(channel.webhook_url, slack_payload(ev), timeout=timeout, what=f"slack {channel.id!r}")
