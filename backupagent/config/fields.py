"""Typed field readers that collect problems instead of stopping at the first.

A config arrives from a server or a hand-written file; a user fixing it wants
every mistake in one message, each naming its path, what was found and what is
expected. So each reader records a problem and returns ``None`` rather than
raising, and the parser raises once at the end. Values are shown JSON-escaped
and truncated (a newline in a value must not forge a log line), and secret
values are never shown at all.
"""

from __future__ import annotations

import json
import math
import unicodedata
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple

MAX_STRING = 1024
MAX_ITEMS = 1000
SHOW_LIMIT = 80
# Bidirectional overrides and isolates: they make a name display as something else.
_BIDI = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))}
_MISSING = object()


class Problems:
    def __init__(self) -> None:
        self.items: List[str] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(f"{path or 'document'}: {message}")

    def __bool__(self) -> bool:
        return bool(self.items)

    def __len__(self) -> int:
        return len(self.items)


def kind(value: Any) -> str:
    """How a value's type reads in a message ("a list", "a boolean", ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return type(value).__name__


def show(value: Any) -> str:
    """A value as it may appear in a message: JSON-escaped, short, one line."""
    if isinstance(value, str):
        if len(value) <= SHOW_LIMIT:
            return json.dumps(value, ensure_ascii=True)
        head = json.dumps(value[:SHOW_LIMIT], ensure_ascii=True)[:-1]
        return f'{head}..." ({len(value)} characters)'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        digits = len(str(abs(value))) if abs(value) < 10**60 else 61
        return str(value) if digits <= 20 else f"a {digits}+ digit number"
    if isinstance(value, float):
        return repr(value)
    return kind(value)


def bad_char(text: str) -> Optional[str]:
    """Name the first character no config string may hold, or None.

    Control characters (NUL, newlines, escapes), lone surrogates, line and
    paragraph separators and bidi overrides: each can truncate a C string,
    forge a log line, or disguise a name.
    """
    for i, ch in enumerate(text):
        if ch in _BIDI or unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp"):
            return f"a control character (U+{ord(ch):04X}) at position {i}"
    return None


def dotdot(text: str) -> bool:
    """True when ``text`` has a ``..`` path segment (``/`` or ``\\`` separated)."""
    return ".." in text.replace("\\", "/").split("/")


class Fields:
    """Reads one mapping of the config, recording problems under ``path``."""

    def __init__(self, data: Mapping[Any, Any], path: str, problems: Problems) -> None:
        self.data = data
        self.path = path
        self.problems = problems

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def raw(self, key: str) -> Any:
        """The value under ``key``; absent and ``null`` both read as missing."""
        value = self.data.get(key, _MISSING)
        return _MISSING if value is None else value

    def has(self, key: str) -> bool:
        return self.raw(key) is not _MISSING

    def problem(self, key: str, message: str) -> None:
        self.problems.add(self.at(key), message)

    def string(
        self,
        key: str,
        *,
        required: bool = False,
        default: Optional[str] = None,
        max_len: int = MAX_STRING,
        secret: bool = False,
        multiline: bool = False,
        allow_dotdot: bool = False,
        expected: str = "a non-empty string",
    ) -> Optional[str]:
        value = self.raw(key)
        if value is _MISSING or (value == "" and not required):
            # An optional "" is how many servers say "not set": same as absent.
            if required:
                self.problem(key, f"is required; expected {expected}")
            return default
        problem = string_problem(
            value,
            max_len=max_len,
            secret=secret,
            multiline=multiline,
            allow_dotdot=allow_dotdot,
            expected=expected,
        )
        if problem:
            self.problem(key, problem)
            return None
        return value

    def checked(
        self,
        key: str,
        check: Callable[[str], Optional[str]],
        *,
        required: bool = False,
        default: Optional[str] = None,
        max_len: int = MAX_STRING,
        expected: str = "a non-empty string",
    ) -> Optional[str]:
        """A string that must also pass ``check`` (which returns a problem or None)."""
        value = self.string(
            key, required=required, default=default, max_len=max_len, expected=expected
        )
        if value is None or value == default:
            return value  # defaults are valid by construction
        problem = check(value)
        if problem:
            self.problem(key, f"{show(value)} {problem}")
            return None
        return value

    def choice(
        self,
        key: str,
        choices: Sequence[str],
        *,
        required: bool = False,
        default: Optional[str] = None,
        extra: Optional[Mapping[str, str]] = None,
    ) -> Optional[str]:
        """One of ``choices``; ``extra`` maps known-but-refused values to a reason."""
        expected = "one of: " + ", ".join(choices)
        value = self.string(key, required=required, default=default, expected=expected)
        if value is None or value in choices:
            return value
        if extra and value in extra:
            self.problem(key, f"{show(value)} {extra[value]}")
        else:
            self.problem(key, f"{show(value)} is not {expected}")
        return None

    def boolean(self, key: str, default: bool) -> Optional[bool]:
        value = self.raw(key)
        if value is _MISSING:
            return default
        if not isinstance(value, bool):
            self.problem(key, f"{show(value)} is not a boolean; expected true or false")
            return None
        return value

    def integer(
        self, key: str, *, lo: int, hi: int, default: Optional[int] = None, required: bool = False
    ) -> Optional[int]:
        value = self.raw(key)
        if value is _MISSING:
            if required:
                self.problem(key, f"is required; expected an integer from {lo} to {hi}")
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(key, f"{show(value)} is not an integer; expected {lo} to {hi}")
            return None
        if not lo <= value <= hi:
            self.problem(key, f"{show(value)} is out of range; expected {lo} to {hi}")
            return None
        return value

    def number(self, key: str, *, lo: float, hi: float) -> Optional[float]:
        value = self.raw(key)
        if value is _MISSING:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.problem(key, f"{show(value)} is not a number; expected {lo:g} to {hi:g}")
            return None
        if isinstance(value, float) and not math.isfinite(value):
            self.problem(key, f"{show(value)} is not a finite number; expected {lo:g} to {hi:g}")
            return None
        if not lo <= value <= hi:
            self.problem(key, f"{show(value)} is out of range; expected {lo:g} to {hi:g}")
            return None
        return float(value)

    def mapping(self, key: str, *, required: bool = False) -> Optional[Fields]:
        value = self.raw(key)
        if value is _MISSING:
            if required:
                self.problem(key, "is required; expected a mapping")
            return None
        if not isinstance(value, Mapping):
            self.problem(key, f"expected a mapping, got {kind(value)}")
            return None
        return Fields(value, self.at(key), self.problems)

    def items(
        self, key: str, *, required: bool = False, max_items: int = MAX_ITEMS
    ) -> List[Tuple[str, Any]]:
        """The entries of a list, each with its path (``key[i]``)."""
        value = self.raw(key)
        if value is _MISSING:
            if required:
                self.problem(key, "is required; expected a list")
            return []
        if not isinstance(value, (list, tuple)):
            self.problem(key, f"expected a list, got {kind(value)}")
            return []
        if len(value) > max_items:
            self.problem(key, f"has {len(value)} entries; at most {max_items} are allowed")
            return []
        return [(f"{self.at(key)}[{i}]", item) for i, item in enumerate(value)]


def string_problem(
    value: Any,
    *,
    max_len: int = MAX_STRING,
    secret: bool = False,
    multiline: bool = False,
    allow_dotdot: bool = False,
    expected: str = "a non-empty string",
) -> Optional[str]:
    """Why ``value`` is not an acceptable config string, or None."""
    shown = "the value" if secret else show(value)
    if not isinstance(value, str):
        return f"expected {expected}, got {kind(value)}" + ("" if secret else f" {shown}")
    if not value:
        return f"must not be empty; expected {expected}"
    if len(value) > max_len:
        return f"is too long ({len(value)} characters; at most {max_len})"
    text = value.replace("\n", "").replace("\t", "").replace("\r", "") if multiline else value
    bad = bad_char(text)
    if bad:
        return f"{shown} contains {bad}; use printable text"
    if not allow_dotdot and not secret and dotdot(value):
        return f"{shown} contains a '..' path segment, which is not allowed"
    return None
