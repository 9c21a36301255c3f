"""The cookie parser and the Set-Cookie policy, as units.

``read_cookies`` faces whatever a client sends: it must never raise, find only
the cookie it was asked for, and do work linear in the header's length (the
linearity is checked by counting the parser's executed lines, not by timing).
``CookiePolicy`` refuses, when made, what browsers would drop.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zodbsession.core.errors import ConfigError
from zodbsession.core.session import new_session_id
from zodbsession.web.cookies import (
    MAX_COOKIE_HEADER,
    MAX_SESSION_COOKIES,
    CookiePolicy,
    read_cookie,
    read_cookies,
    session_cookie_ids,
)

NAME = "zodbsession"
ID = "Ab0_-" * 8 + "xyz"  # the shape of an issued id: 43 URL-safe characters

# -- read_cookie: examples -----------------------------------------------------------

EXAMPLES = {
    "only": (f"{NAME}={ID}", ID),
    "among-others": (f"theme=dark; {NAME}={ID}; lang=en", ID),
    "no-spaces": (f"a=1;{NAME}={ID};b=2", ID),
    "extra-whitespace": (f"  a=1 ;   {NAME} =  {ID}  ; b=2", ID),
    "first-wins": (f"{NAME}={ID}; {NAME}=second", ID),
    "quoted": (f'{NAME}="{ID}"', ID),
    "lone-quote": (f'{NAME}="', '"'),
    "empty-quotes": (f'{NAME}=""', ""),
    "empty-value": (f"{NAME}=", ""),
    "value-with-equals": (f"{NAME}=a=b==", "a=b=="),
    "absent": ("theme=dark; lang=en", None),
    "name-as-value": (f"other={NAME}", None),
    "name-without-equals": (f"{NAME}; a=1", None),
    "prefix-name": (f"x{NAME}={ID}", None),
    "suffix-name": (f"{NAME}2={ID}", None),
    "case-differs": (f"{NAME.upper()}={ID}", None),
    # Two Cookie headers as waitress joins them: ", " separates pairs too.
    "comma-separates-joined-headers": (f"a=1, {NAME}={ID}", ID),
    "comma-without-space": (f"a=1,{NAME}={ID}", ID),
    "comma-ends-a-value": (f"{NAME}={ID},junk", ID),
    "empty": ("", None),
    "separators-only": (";;;; ; ;", None),
}


@pytest.mark.parametrize(("header", "expected"), EXAMPLES.values(), ids=EXAMPLES.keys())
def test_read_cookie_examples(header, expected):
    assert read_cookie(header, NAME) == expected


def test_read_cookie_of_no_header_is_none():
    assert read_cookie(None, NAME) is None


def test_header_at_the_limit_is_read_and_one_byte_more_is_ignored_whole():
    tail = f"; {NAME}={ID}"
    at_limit = "a=" + "x" * (MAX_COOKIE_HEADER - len(tail) - 2) + tail
    assert len(at_limit) == MAX_COOKIE_HEADER
    assert read_cookie(at_limit, NAME) == ID
    assert read_cookie("a" + at_limit, NAME) is None


def test_oversized_header_of_100kb_is_ignored():
    assert read_cookie(f"{NAME}={ID}; junk=" + "j" * 100_000, NAME) is None


# -- read_cookie: hostile input, linear work -------------------------------------------


def executed_lines(function: Callable, *args: object) -> int:
    """How many lines of *function*'s own code ran for this call (no timing)."""
    count = 0
    code = function.__code__

    def local(frame, event, arg):
        nonlocal count
        if event == "line":
            count += 1
        return local

    def global_(frame, event, arg):
        return local if frame.f_code is code else None

    previous = sys.gettrace()
    sys.settrace(global_)
    try:
        function(*args)
    finally:
        sys.settrace(previous)
    return count


PATHOLOGICAL = {
    # CVE-2024-7592 made SimpleCookie quadratic on backslashes in quoted values
    "backslashes": lambda n: f'{NAME}="' + "\\" * (n - len(NAME) - 3) + '"',
    "escaped-quotes": lambda n: 'a="' + '\\"' * ((n - 4) // 2) + '"',
    "semicolons": lambda n: ";" * n,
    "equals": lambda n: "=" * n,
    "tiny-pairs": lambda n: "a=;" * (n // 3),
    "whitespace": lambda n: " " * (n - 1) + "=",
    "near-miss-names": lambda n: f"{NAME[:-1]}=1;" * (n // (len(NAME) + 2)),
    "commas": lambda n: "," * n,
    "many-of-our-name": lambda n: f"{NAME}=x," * (n // (len(NAME) + 3)),
}


@pytest.mark.parametrize("make", PATHOLOGICAL.values(), ids=PATHOLOGICAL.keys())
def test_parser_work_is_linear_in_header_length(make):
    """Each line runs a bounded number of times per ';'- or ','-separated pair, and the
    builtins it calls (split, partition, strip) are linear: so is the whole."""
    for size in (4096, 8192, MAX_COOKIE_HEADER):
        header = make(size)
        assert len(header) <= MAX_COOKIE_HEADER
        pairs = header.count(";") + header.count(",") + 1
        assert executed_lines(read_cookies, header, NAME) <= 7 * pairs + 12


def test_executed_lines_counter_sees_the_loop():
    """The measurement itself: more pairs, more lines."""
    assert executed_lines(read_cookies, "a=1;" * 100, NAME) > executed_lines(
        read_cookies, "a=1;" * 10, NAME)


def test_pathological_16k_headers_parse_correctly():
    backslashes = "\\" * (MAX_COOKIE_HEADER - len(NAME) - 3)
    assert read_cookie(f'{NAME}="{backslashes}"', NAME) == backslashes
    head = 'a="' + '\\"' * 8000 + '"'
    assert read_cookie(f"{head}; {NAME}={ID}", NAME) == ID
    semicolons = ";" * (MAX_COOKIE_HEADER - len(NAME) - len(ID) - 1)
    assert read_cookie(f"{semicolons}{NAME}={ID}", NAME) == ID
    near_misses = f"{NAME[:-1]}=1; " * 1000
    assert len(near_misses) < MAX_COOKIE_HEADER - 60
    assert read_cookie(f"{near_misses}{NAME}={ID}", NAME) == ID
    assert read_cookie(near_misses, NAME) is None


# -- read_cookie: properties ---------------------------------------------------------------

names = st.sampled_from([NAME, NAME + "2", "x" + NAME, NAME.upper(), NAME[:-1], "a", "theme"])
# RFC 6265 allows neither ';' nor ',' in a cookie value.
values = st.text(st.characters(exclude_characters=";,", codec="latin-1"), max_size=60).map(
    str.strip)


@settings(max_examples=300, deadline=None)
@given(header=st.text(max_size=400), name=st.one_of(st.just(NAME), st.text(max_size=12)))
def test_read_cookie_never_raises_and_returns_only_a_named_value(header, name):
    value = read_cookie(header, name)
    assert value is None or isinstance(value, str)
    if value is not None:
        pairs = [pair.partition("=") for pair in header.replace(",", ";").split(";")]
        assert any(sep and key.strip() == name for key, sep, _ in pairs)
        assert ";" not in value and "," not in value


@settings(max_examples=300, deadline=None)
@given(cookies=st.lists(st.tuples(names, values), max_size=12),
       separator=st.sampled_from([";", "; ", " ;  "]))
def test_read_cookie_finds_the_first_cookie_of_that_name_and_no_other(cookies, separator):
    header = separator.join(f"{name}={value}" for name, value in cookies)
    expected = next((value for name, value in cookies if name == NAME), None)
    if expected is not None and len(expected) >= 2 and expected[0] == expected[-1] == '"':
        expected = expected[1:-1]
    assert read_cookie(header, NAME) == expected


@settings(max_examples=300, deadline=None)
@given(cookies=st.lists(st.tuples(names, values), max_size=12),
       separator=st.sampled_from([";", "; ", ", ", ","]), headers=st.integers(1, 3))
def test_read_cookies_finds_every_cookie_of_that_name_in_order(cookies, separator, headers):
    """However the pairs are split over headers and whichever separator joins them."""
    pairs = [f"{name}={value}" for name, value in cookies]
    split = [separator.join(pairs[i::headers]) for i in range(headers)]
    ordered = [pair for i in range(headers) for pair in pairs[i::headers]]
    expected = [value.partition("=")[2] for value in ordered if value.partition("=")[0] == NAME]
    expected = [v[1:-1] if len(v) >= 2 and v[0] == v[-1] == '"' else v for v in expected]
    assert read_cookies(split, NAME) == expected
    assert read_cookies(separator.join(ordered), NAME) == expected


@settings(max_examples=200, deadline=None)
@given(cookies=st.lists(st.tuples(names.filter(lambda n: n != NAME), values), max_size=12))
def test_read_cookie_ignores_every_other_name(cookies):
    header = "; ".join(f"{name}={value}" for name, value in cookies)
    assert read_cookie(header, NAME) is None


# -- several cookies of our name, several headers -----------------------------------------


def test_a_malformed_first_cookie_does_not_hide_a_valid_second():
    other = new_session_id()
    assert session_cookie_ids(f"{NAME}=garbage; {NAME}={other}", NAME) == [other]


def test_session_cookie_ids_keep_the_order_once_each():
    first, second = new_session_id(), new_session_id()
    header = f"{NAME}={first}; {NAME}=x; {NAME}={second}; {NAME}={first}"
    assert session_cookie_ids(header, NAME) == [first, second]


def test_session_cookie_ids_are_capped():
    ids = [new_session_id() for _ in range(MAX_SESSION_COOKIES + 3)]
    header = "; ".join(f"{NAME}={i}" for i in ids)
    assert session_cookie_ids(header, NAME) == ids[:MAX_SESSION_COOKIES]


@pytest.mark.parametrize("joined", [
    lambda a, b: f"{a}, {b}", lambda a, b: f"{a}; {b}", lambda a, b: [a, b],
    lambda a, b: [a.encode(), b.encode()], lambda a, b: f"{a},{b}".encode(),
], ids=["waitress-comma", "semicolon", "list", "asgi-bytes", "bytes"])
def test_two_cookie_headers_are_one_list(joined):
    """Two headers count as one list however the server hands them over."""
    session_id = new_session_id()
    header = joined("theme=dark; lang=en", f"{NAME}={session_id}")
    assert read_cookie(header, NAME) == session_id
    assert session_cookie_ids(header, NAME) == [session_id]


def test_headers_over_the_limit_together_are_ignored():
    half = "a=" + "x" * (MAX_COOKIE_HEADER // 2)
    assert read_cookies([half, half, f"{NAME}={ID}"], NAME) == []


@pytest.mark.parametrize("header", [None, "", [], ";", b""], ids=["none", "empty", "no-headers",
                                                              "separator", "empty-bytes"])
def test_no_cookie_gives_no_ids(header):
    assert read_cookies(header, NAME) == []
    assert session_cookie_ids(header, NAME) == []
    assert read_cookie(header, NAME) is None


# -- CookiePolicy ------------------------------------------------------------------------------

REFUSED = {
    "space-in-name": ({"name": "my session"}, "name"),
    "semicolon-in-name": ({"name": "a;b"}, "name"),
    "equals-in-name": ({"name": "a=b"}, "name"),
    "empty-name": ({"name": ""}, "name"),
    "non-ascii-name": ({"name": "sessión"}, "name"),
    "samesite-none-auto": ({"samesite": "None"}, "samesite"),
    "samesite-none-insecure": ({"samesite": "None", "secure": False}, "samesite"),
    "samesite-lowercase": ({"samesite": "lax"}, "samesite"),
    "host-not-secure": ({"name": "__Host-sid"}, "name"),
    "host-other-path": ({"name": "__Host-sid", "secure": True, "path": "/app"}, "name"),
    "host-with-domain": ({"name": "__Host-sid", "secure": True, "domain": "example.org"}, "name"),
    "host-lowercase-prefix": ({"name": "__host-sid"}, "name"),
    "secure-prefix-auto": ({"name": "__Secure-sid"}, "secure"),
    "secure-prefix-off": ({"name": "__Secure-sid", "secure": False}, "secure"),
    "relative-path": ({"path": "app"}, "path"),
    "path-injection": ({"path": "/; Domain=evil.example"}, "path"),
    "domain-injection": ({"domain": "example.org; Secure"}, "domain"),
    "empty-domain": ({"domain": ""}, "domain"),
    "secure-word": ({"secure": "yes"}, "secure"),
    "zero-max-age": ({"max_age": 0}, "max_age"),
    "negative-max-age": ({"max_age": -5}, "max_age"),
}


@pytest.mark.parametrize(("options", "key"), REFUSED.values(), ids=REFUSED.keys())
def test_policy_refuses_a_cookie_browsers_would_drop(options, key):
    with pytest.raises(ConfigError) as info:
        CookiePolicy(**options)
    assert info.value.key == key
    assert isinstance(info.value, ValueError)


ACCEPTED = {
    "default": {},
    "token-punctuation": {"name": "s!#$%&'*+-.^_`|~1"},
    "samesite-none-secure": {"samesite": "None", "secure": True},
    "host-prefix": {"name": "__Host-sid", "secure": True},
    "secure-prefix": {"name": "__Secure-sid", "secure": True, "path": "/app", "domain": "example.org"},
    "no-samesite": {"samesite": None},
    "persistent": {"max_age": 3600},
}


@pytest.mark.parametrize("options", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_policy_accepts_cookies_browsers_keep(options):
    policy = CookiePolicy(**options)
    assert attributes(policy.set_header(ID, https=True))[0] == f"{policy.name}={ID}"



def attributes(header: tuple[str, str]) -> list[str]:
    name, value = header
    assert name == "Set-Cookie"
    return [part.strip() for part in value.split(";")]


def test_default_policy_is_a_lax_httponly_browser_session_cookie():
    assert attributes(CookiePolicy().set_header(ID, https=False)) == [
        f"{NAME}={ID}", "Path=/", "HttpOnly", "SameSite=Lax"]


@pytest.mark.parametrize(("secure", "https", "expected"), [
    ("auto", True, True), ("auto", False, False), (True, False, True), (False, True, False),
], ids=["auto-https", "auto-http", "always", "never"])
def test_secure_attribute(secure, https, expected):
    policy = CookiePolicy(secure=secure)
    assert ("Secure" in attributes(policy.set_header(ID, https=https))) is expected
    assert ("Secure" in attributes(policy.delete_header(https=https))) is expected


def test_every_option_shows_in_the_header():
    policy = CookiePolicy(name="sid", path="/app", domain="example.org", secure=True,
                          httponly=False, samesite="None", max_age=600)
    assert attributes(policy.set_header(ID, https=True)) == [
        f"sid={ID}", "Max-Age=600", "Path=/app", "Domain=example.org", "Secure",
        "SameSite=None"]


def test_samesite_none_value_omits_the_attribute():
    assert not any(part.startswith("SameSite")
                   for part in attributes(CookiePolicy(samesite=None).set_header(ID, https=True)))


def test_delete_header_expires_the_cookie_with_the_same_scope():
    policy = CookiePolicy(name="sid", path="/app", domain="example.org", max_age=600)
    parts = attributes(policy.delete_header(https=False))
    assert parts[:3] == ["sid=", "Max-Age=0", "Expires=Thu, 01 Jan 1970 00:00:00 GMT"]
    assert {"Path=/app", "Domain=example.org", "HttpOnly", "SameSite=Lax"} <= set(parts)
    assert "Max-Age=600" not in parts


def test_policy_is_immutable():
    with pytest.raises(AttributeError):
        CookiePolicy().name = "other"  # type: ignore[misc]


# -- set_header's max_age: what one session asks for ------------------------------------


@pytest.mark.parametrize(("policy_age", "max_age", "expected"), [
    (None, None, None), (600, None, "Max-Age=600"), (None, 3600, "Max-Age=3600"),
    (600, 3600, "Max-Age=3600"), (600, "session", None), (None, 1, "Max-Age=1"),
    (None, 90.7, "Max-Age=90"),
], ids=["policy-none", "policy-default", "session-asks", "session-overrides", "browser-session",
        "one-second", "float"])
def test_set_header_max_age(policy_age, max_age, expected):
    parts = attributes(CookiePolicy(max_age=policy_age).set_header(ID, https=False, max_age=max_age))
    ages = [part for part in parts if part.startswith("Max-Age")]
    assert ages == ([expected] if expected else [])


@pytest.mark.parametrize("max_age", [0, -1, 0.5, True, "forever", "Session"],
                         ids=["zero", "negative", "under-a-second", "bool", "word", "wrong-case"])
def test_set_header_refuses_a_max_age_that_would_delete_or_is_nonsense(max_age):
    with pytest.raises(ValueError, match="max_age"):
        CookiePolicy().set_header(ID, https=False, max_age=max_age)
