"""Property tests on config parsing that tests/unit/test_config_hostile.py does not cover.

That module shows ``parse_config`` only ever raises ConfigInvalid and that an
accepted config is safe. This one adds: the YAML path (``load_config_file``
on arbitrary text and bytes) fails the same way; a rejection names the field
that was changed (the operator must be able to find it); a rejected secret is
never echoed; and a document at the size limits parses in bounded time.
"""

from __future__ import annotations

import copy
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Tuple

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backupagent.config import parse_config
from backupagent.config.load import load_config_file
from backupagent.config.parse import MAX_SECTION_ITEMS
from backupagent.errors import ConfigInvalid
from tests.unit.test_config_hostile import FIELD_PATHS, HOSTILE_STRINGS, set_path
from tests.unit.test_config_parse import full_doc

SECRET_FIELDS = [
    ("targets", 1, "credentials", "secretAccessKey"),
    ("targets", 1, "credentials", "sessionToken"),
    ("alertChannels", 2, "smtp", "password"),
    ("alertChannels", 1, "webhookUrl"),
    ("alertChannels", 0, "url"),
]
WRONG_TYPES = [None, True, 0, -1, 10**30, 1.5, [], ["x"], {}, {"a": 1}]


def dotted(path: Tuple[Any, ...]) -> str:
    """``("schedules", 0, "database", "port")`` -> ``schedules[0].database.port``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def named_in(problems: list, path: Tuple[Any, ...]) -> bool:
    """Some problem names the field, or (for a value that breaks its container,
    or a cross reference such as targetId) an ancestor or sibling of it."""
    want = dotted(path)
    entry = dotted(path[:2])  # e.g. schedules[0]: the entry holding the field
    if any(p.startswith(want) or p.startswith(entry) for p in problems):
        return True
    # A valid but different id, or a whole section emptied (``targets: null``),
    # breaks what refers to it (schedules[*].targetId ... "known: none defined").
    refers = path[-1] == "id" or len(path) == 1
    return refers and any("Id:" in p and "does not match" in p for p in problems)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(FIELD_PATHS),
    st.sampled_from(HOSTILE_STRINGS + WRONG_TYPES) | st.text(max_size=20),
)
def test_a_rejection_names_the_changed_field(path: Tuple[Any, ...], value: Any) -> None:
    doc = full_doc()
    set_path(doc, path, copy.deepcopy(value))
    try:
        parse_config(doc)
    except ConfigInvalid as exc:
        assert exc.code == "CONFIG_INVALID"
        assert named_in(exc.problems, path), (dotted(path), exc.problems)
        assert str(exc).count("\n") >= 1 or len(exc.problems) == 1


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(SECRET_FIELDS),
    st.sampled_from(["\x00", "\n", "\u202e", "\x7f", "\r\n", "x" * 9000]),
    st.sampled_from(["prefix", "suffix", "alone"]),
)
def test_a_rejected_secret_is_never_echoed(path: Tuple[Any, ...], bad: str, where: str) -> None:
    secret = "S3cr3t-Pl4nted-" + "q" * 8
    value = {"prefix": bad + secret, "suffix": secret + bad, "alone": secret}[where]
    if path[-1] in ("url", "webhookUrl"):
        value = f"ftp://hooks.example.com/{value}"  # not http(s): always rejected
    doc = full_doc()
    set_path(doc, path, value)
    try:
        parse_config(doc)
    except ConfigInvalid as exc:
        text = str(exc) + repr(exc.problems)
        assert secret not in text and secret[:12] not in text, text
        assert named_in(exc.problems, path), exc.problems
    else:
        assert where == "alone" and path[-1] not in ("url", "webhookUrl")


yaml_texts = st.text(max_size=300) | st.sampled_from(
    [
        "schedules: [*a]",
        "a: &a [*a]",
        "schedules: !!python/object/apply:os.system ['touch /tmp/pwned']",
        "schedules: !!binary aGVsbG8=",
        "targets: [{id: t, type: local, path: /x, path: /y}]",
        "? [a]\n: b",
        "x: 2001-01-01",
        "x: " + "9" * 5000,
        "[" * 5000,
        "a: .nan",
        "\ufeffschedules: []",
        'schedules:\n - id: "\\0"',
    ]
)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(yaml_texts | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_any_yaml_file_is_a_config_or_config_invalid(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        try:
            raw, config = load_config_file(path)
        except ConfigInvalid as exc:
            assert exc.problems and all("\n" not in p for p in exc.problems)
            assert str(path) in str(exc)
        else:
            json.dumps(raw)  # what is accepted is plain JSON: it can be cached and hashed
            assert config is not None
    assert not Path("/tmp/pwned").exists()


def test_yaml_round_trip_of_the_full_document(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(full_doc()))
    raw, config = load_config_file(path)
    assert raw == full_doc() and len(config.schedules) == 2


def _many_schedules(n: int) -> dict:
    doc = full_doc()
    template = doc["schedules"][1]
    doc["schedules"] = []
    for i in range(n):
        entry = copy.deepcopy(template)
        entry["id"] = f"s-{i}"
        doc["schedules"].append(entry)
    return doc


def test_ten_thousand_schedules_parse_in_bounded_time() -> None:
    doc = _many_schedules(MAX_SECTION_ITEMS)
    started = time.monotonic()
    config = parse_config(doc)
    elapsed = time.monotonic() - started
    assert len(config.schedules) == MAX_SECTION_ITEMS
    assert elapsed < 10.0, elapsed  # ~1 s here; the bound catches quadratic behaviour


def test_one_schedule_over_the_limit_is_refused_by_count_not_by_work() -> None:
    doc = _many_schedules(MAX_SECTION_ITEMS + 1)
    started = time.monotonic()
    with pytest.raises(ConfigInvalid) as info:
        parse_config(doc)
    assert time.monotonic() - started < 2.0
    assert info.value.problems == [
        f"schedules: has {MAX_SECTION_ITEMS + 1} entries; at most {MAX_SECTION_ITEMS} are allowed"
    ]
