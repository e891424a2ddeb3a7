"""Property tests: a database URL's password never comes back out.

``parse_database_url`` reads URLs typed by users (``backupagent backup URL``).
Whatever the URL, parseable or not, the password must not appear in the error
message, in the spec's repr or in its redacted URL. A password typed without
percent-encoding may hold URL delimiters (``/ ? # @ [ ] :``), which makes the
URL ambiguous; then no piece of it between delimiters may appear either,
because a parser's own error text echoes such pieces (urllib quotes the
"port" it could not read).
"""

from __future__ import annotations

import re
import urllib.parse

from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from backupagent.engines.base import EngineError, mask_url, parse_database_url

SCHEMES = ["postgresql", "postgres", "mysql", "mariadb", "redis", "sqlite", "ftp", ""]
DELIMITERS = r"[/?#@\[\]:]"
passwords = st.text(min_size=4, max_size=40).filter(lambda p: p.strip() != "")
names = st.text(alphabet="abcdefghij_0123456789", min_size=1, max_size=12)
hosts = st.sampled_from(["127.0.0.1", "db.example.com", "[::1]", "localhost", "h"])
ports = st.sampled_from(["", ":5432", ":0", ":99999", ":x", ":65535"])


SPEC_WORDS = repr(parse_database_url("postgresql://u@h/d"))


def pieces(password: str) -> list:
    found = {password, urllib.parse.unquote(password)}
    found.update(re.split(DELIMITERS, password))
    return [p for p in found if len(p) >= 4]


def outputs(url: str) -> str:
    """Everything parse_database_url lets a caller print about ``url``."""
    try:
        spec = parse_database_url(url)
    except EngineError as exc:
        assert exc.code == "CONFIG_INVALID"
        return str(exc) + "\n" + mask_url(url)
    return "\n".join((repr(spec), spec.redacted_url(), mask_url(url)))


def visible_elsewhere(piece: str, rest: str) -> bool:
    """A piece that also appears outside the password cannot be asked to vanish."""
    return piece in rest


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(SCHEMES), names, passwords, hosts, ports, names, st.booleans())
@example("postgresql", "u", "pa?ss", "h", "", "db", False)
@example("postgresql", "u", "pa/ss", "h", ":99999", "x", False)
@example("postgresql", "u", "ab@secret", "h", ":99999", "x", False)
@example("mysql", "u", "s3cr#t", "h", "", "db", False)
@example("postgresql", "u", "12345/xyzw", "h", "", "db", False)
@example("postgresql", "0", ":***", "127.0.0.1", "", "0", False)
def test_password_never_echoed(
    scheme: str, user: str, password: str, host: str, port: str, db: str, quoted: bool
) -> None:
    secret = urllib.parse.quote(password, safe="") if quoted else password
    url = f"{scheme}://{user}:{secret}@{host}{port}/{db}"
    # What the outputs show anyway: the URL with its password masked, and the
    # fixed words of a ConnectionSpec repr (a password "user" is not leaked
    # by the field name user=, nor a password ":***" by the mask).
    rest = f"{scheme}://{user}:***@{host}{port}/{db} {host}:5432 {SPEC_WORDS}"
    text = outputs(url)
    for piece in {password, secret, *pieces(password)}:
        if len(piece) < 4 or visible_elsewhere(piece, rest):
            continue
        assert piece not in text, (url, piece, text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80), passwords)
def test_password_in_arbitrary_text_never_echoed(junk: str, password: str) -> None:
    """Not even a well-formed URL: ``junk`` around ``user:password@``."""
    assume(re.search(DELIMITERS, password) is None and "%" not in password)
    url = f"{junk}u:{password}@{junk}"
    assume(password not in junk and password not in "u:@")
    assert password not in outputs(url)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=100))
def test_any_text_is_a_spec_or_a_config_invalid_error(text: str) -> None:
    try:
        spec = parse_database_url(text)
    except EngineError as exc:
        assert exc.code == "CONFIG_INVALID"
        assert str(exc).startswith("database URL ")
    else:
        assert spec.db_type in ("postgresql", "mysql", "mariadb", "redis", "sqlite")
        if spec.password:
            assert spec.password not in spec.redacted_url()
            assert spec.password not in repr(spec) or len(spec.password) < 4
