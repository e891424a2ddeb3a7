"""Standard 5-field cron, validated with field-level messages and run with cron's meaning.

APScheduler 3's ``CronTrigger.from_crontab`` differs from cron in two ways
that would silently move backups: it numbers weekdays from Monday (cron's
``0`` is Sunday, so ``0 3 * * 0`` would run on Mondays), and it ANDs
day-of-month with day-of-week where cron ORs them when both are restricted.
:func:`cron_trigger` gives APScheduler a trigger with cron's meaning; the
daemon should build its triggers with it rather than ``from_crontab``.
"""

from __future__ import annotations

from typing import Any, List, Optional, Set

from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger

try:  # Python 3.9+
    from zoneinfo import ZoneInfo
except ImportError:  # pragma: no cover
    from backports.zoneinfo import ZoneInfo  # type: ignore[no-redef]

MAX_CRON = 256
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# (label, APScheduler field, lowest, highest, names mapped to numbers, range as shown)
_FIELDS = (
    ("minute", "minute", 0, 59, {}, "0-59"),
    ("hour", "hour", 0, 23, {}, "0-23"),
    ("day-of-month", "day", 1, 31, {}, "1-31"),
    ("month", "month", 1, 12, {n: i + 1 for i, n in enumerate(_MONTHS)}, "1-12 or jan-dec"),
    ("day-of-week", "day_of_week", 0, 7, {n: i for i, n in enumerate(_DAYS)}, "0-7 or sun-sat"),
)
_SYNTAX = "use numbers, names, *, ranges a-b, steps */n or a-b/n, and lists a,b"


class _FieldError(ValueError):
    pass


def _value(token: str, lo: int, hi: int, names: dict, label: str, shown: str) -> int:
    if token.lower() in names:
        return int(names[token.lower()])
    if not token.isdigit() or not token.isascii() or len(token) > 4:
        raise _FieldError(f"{label} {token!r} is not a number or name; {label} must be {shown}")
    number = int(token)
    if not lo <= number <= hi:
        raise _FieldError(f"{label} must be {shown}")
    return number


def _expand(text: str, lo: int, hi: int, names: dict, label: str, shown: str) -> Set[int]:
    """The set of values a cron field selects, or _FieldError saying why it is bad."""
    out: Set[int] = set()
    for part in text.split(","):
        span, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or not step_text.isascii() or len(step_text) > 4:
                raise _FieldError(f"{label} step {step_text!r} is not a number; {_SYNTAX}")
            step = int(step_text)
            if step < 1:
                raise _FieldError(f"{label} step must be at least 1")
        if span == "*":
            start, end = lo, (6 if label == "day-of-week" else hi)
        elif "-" in span:
            first, _, last = span.partition("-")
            start = _value(first, lo, hi, names, label, shown)
            end = _value(last, lo, hi, names, label, shown)
            if start > end:
                raise _FieldError(f"{label} range {span!r} runs backwards; write it low-high")
        elif span:
            start = _value(span, lo, hi, names, label, shown)
            end = hi if slash else start
        else:
            raise _FieldError(f"{label} field {text!r} has an empty part; {_SYNTAX}")
        out.update(range(start, end + 1, step))
    return out


def cron_problem(expr: str) -> Optional[str]:
    """Why ``expr`` is not a valid 5-field cron expression (a short reason), or None."""
    if len(expr) > MAX_CRON:
        return f"is too long; at most {MAX_CRON} characters"
    fields = expr.split()
    if len(fields) != 5:
        return f"must have 5 fields (minute hour day-of-month month day-of-week), got {len(fields)}"
    for text, (label, aps_name, lo, hi, names, shown) in zip(fields, _FIELDS):
        try:
            _expand(text, lo, hi, names, label, shown)
        except _FieldError as exc:
            return str(exc)
        if aps_name != "day_of_week":
            try:
                CronTrigger(**{aps_name: text}, timezone="UTC")
            except ValueError as exc:
                return f"{label}: {exc}"
    try:
        cron_trigger(expr, "UTC")
    except ValueError as exc:  # pragma: no cover - the checks above should catch it all
        return f"rejected by the scheduler: {exc}"
    return None


def _dow_for_apscheduler(text: str) -> str:
    """cron's weekdays (0 or 7 = Sunday) as names, which APScheduler reads unambiguously."""
    if text == "*":
        return "*"
    label, _, lo, hi, names, shown = _FIELDS[4]
    days = {d % 7 for d in _expand(text, lo, hi, names, label, shown)}
    return ",".join(_DAYS[d] for d in sorted(days))


def _translated(fields: List[str]) -> List[str]:
    """The expression(s) APScheduler needs to fire exactly when cron would.

    Two when both day fields are restricted (Vixie cron counts a field starting
    with ``*`` as unrestricted): one per day field, ORed by the caller.
    """
    minute, hour, dom, month, dow = fields
    dow_names = _dow_for_apscheduler(dow)
    if dom.startswith("*") or dow.startswith("*"):
        return [" ".join((minute, hour, dom, month, dow_names))]
    return [
        " ".join((minute, hour, dom, month, "*")),
        " ".join((minute, hour, "*", month, dow_names)),
    ]


def cron_trigger(expr: str, timezone: str) -> Any:
    """An APScheduler trigger that fires when cron would fire ``expr`` in ``timezone``.

    The result has a ``timezone`` attribute in both cases (a CronTrigger, or an
    OrTrigger of two), so callers can compare triggers by ``str()`` and zone.
    Raises ValueError for an invalid expression; validated configs never do.
    """
    tz = ZoneInfo(timezone or "UTC")
    exprs = _translated(expr.split())
    triggers = [CronTrigger.from_crontab(e, timezone=tz) for e in exprs]
    if len(triggers) == 1:
        return triggers[0]
    return CronDaysTrigger(triggers, tz)


class CronDaysTrigger(OrTrigger):
    """cron's "day-of-month OR day-of-week": fires when either trigger would."""

    def __init__(self, triggers: List[CronTrigger], timezone: Any) -> None:
        super().__init__(triggers)
        self.timezone = timezone


def timezone_problem(name: str) -> Optional[str]:
    """Why ``name`` is not a usable IANA time zone, or None."""
    if name == "UTC":
        return None  # valid even on a host without tzdata
    try:
        ZoneInfo(name)
    except (KeyError, ValueError, OSError):
        return 'is not a known IANA time zone; expected a name such as "UTC" or "Europe/Berlin"'
    return None
