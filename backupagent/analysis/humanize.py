"""Numbers as people read them in an alert: "2.4 GB", "10,000 rows", "60%"."""

from __future__ import annotations

_UNITS = ("bytes", "kB", "MB", "GB", "TB", "PB")


def human_bytes(n: float) -> str:
    """Decimal (SI) units, the ones that match their labels: 1 GB = 10^9 bytes.

    Two significant digits below 10 ("2.4 GB"), whole numbers above ("312 MB"):
    enough to see the size of a problem without false precision.
    """
    value = float(n)
    sign = "-" if value < 0 else ""
    value = abs(value)
    if value < 1000:
        whole = round(value)
        return f"{sign}{whole} byte" if whole == 1 else f"{sign}{whole} bytes"
    for unit in _UNITS[1:]:
        value /= 1000.0
        if value < 999.5 or unit == _UNITS[-1]:
            text = f"{value:.1f}" if value < 9.95 else f"{value:.0f}"
            return f"{sign}{text} {unit}"
    raise AssertionError("unreachable")


def human_count(n: int) -> str:
    return f"{int(n):,}"


def percent(fraction: float) -> str:
    """0.6 -> "60%"; small but non-zero changes keep one decimal ("0.4%")."""
    pct = abs(fraction) * 100.0
    return f"{pct:.1f}%" if 0 < pct < 9.95 and round(pct, 1) != round(pct) else f"{pct:.0f}%"
