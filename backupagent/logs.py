"""Logging a human and a machine can read, with secrets scrubbed.

Text on a terminal, JSON lines otherwise (journald, log shippers). Every
record passes a redaction filter that knows the secrets loaded in this process
(API key, database and S3 passwords), so a secret that slips into an exception
message still never reaches a log.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
import threading
from typing import Iterable, Optional, Set

_secrets: Set[str] = set()
_secrets_lock = threading.Lock()
REDACTED = "***"
# Credentials embedded in URLs (scheme://user:password@host) and bearer tokens.
_URL_PASSWORD = re.compile(r"(?P<pre>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^@\s/]+(?=@)")
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
_BAK_KEY = re.compile(r"bak_[A-Za-z0-9_-]{8,}")
_AGE_SECRET = re.compile(r"AGE-SECRET-KEY-1[0-9A-Z]+")


def register_secret(value: Optional[str]) -> None:
    """Remember a secret so every later log line and error text is scrubbed of it."""
    if value and len(value) >= 4:
        with _secrets_lock:
            _secrets.add(value)


def redact(text: str) -> str:
    """Remove known secrets and secret-shaped substrings from ``text``."""
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for s in secrets:
        if s in text:
            text = text.replace(s, REDACTED)
    text = _URL_PASSWORD.sub(lambda m: m.group("pre") + REDACTED, text)
    text = _BEARER.sub(lambda m: m.group(1) + REDACTED, text)
    text = _BAK_KEY.sub("bak_" + REDACTED, text)
    return _AGE_SECRET.sub("AGE-SECRET-KEY-" + REDACTED, text)


def utc_timestamp(when: Optional[dt.datetime] = None) -> str:
    """RFC 3339 UTC with milliseconds and Z, the protocol's timestamp form."""
    when = when or dt.datetime.now(dt.timezone.utc)
    when = when.astimezone(dt.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        if clean != message or record.args:
            record.msg, record.args = clean, None
        return True


_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line; extra= fields are carried as keys."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": utc_timestamp(dt.datetime.fromtimestamp(record.created, dt.timezone.utc)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = (
                    value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
                )
        if record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")


def setup_logging(level: str = "info", fmt: Optional[str] = None, stream=None) -> None:
    """Configure the root logger once per process.

    ``fmt`` None picks text on a TTY and JSON otherwise, so the same command
    is readable by hand and parseable under systemd.
    """
    stream = stream or sys.stderr
    if fmt is None:
        fmt = "text" if getattr(stream, "isatty", lambda: False)() else "json"
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Third-party chatter stays at warning unless the user asks for debug.
    noisy: Iterable[str] = ("urllib3", "botocore", "boto3", "s3transfer", "apscheduler", "docker")
    for name in noisy:
        logging.getLogger(name).setLevel(
            logging.DEBUG if level.lower() == "debug" else logging.WARNING
        )
