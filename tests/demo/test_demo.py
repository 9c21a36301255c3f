"""Tests for the demo application, run inside the real SessionPublisher through WebTest.

Each test drives a ``webtest.TestApp`` (which keeps cookies like a browser)
over a publisher on an in-memory ZODB; a second ``TestApp`` stands in for an
attacker or another browser holding some other cookie.
"""

from __future__ import annotations

import json

import pytest
from webtest import TestApp

from zodbsession.demo.app import INCREMENTS_KEY, MAX_BODY_BYTES, app
from zodbsession.web.wsgi.publisher import SessionPublisher

COOKIE = "zodbsession"


@pytest.fixture
def publisher(memory_db, manager) -> SessionPublisher:
    """The demo inside the real publisher, on a MappingStorage and the fake clock."""
    return SessionPublisher(app, memory_db, manager=manager)


@pytest.fixture
def browser(publisher) -> TestApp:
    """One browser: it keeps the session cookie between requests."""
    return TestApp(publisher)


def other_browser(publisher: SessionPublisher, cookie: str | None = None) -> TestApp:
    """A second browser, holding *cookie* as its session cookie if given."""
    client = TestApp(publisher)
    if cookie is not None:
        client.set_cookie(COOKIE, cookie)
    return client


def shown(page, element_id: str) -> str:
    """The text of the page element with this id."""
    element = page.html.find(id=element_id)
    assert element is not None, f"no element with id={element_id!r} on the page"
    return element.get_text(strip=True)


def increments_in_db(publisher: SessionPublisher) -> int:
    """The application's Length, read on a connection of its own."""
    with publisher.db.transaction() as connection:
        length = connection.root().get(INCREMENTS_KEY)
        return length() if length is not None else 0


def last_transaction(publisher: SessionPublisher) -> bytes:
    return publisher.db.storage.lastTransaction()


def set_cookie_headers(response) -> list[str]:
    return response.headers.getall("Set-Cookie")


# -- the counter -------------------------------------------------------------


def test_counter_increments_and_persists_across_requests(browser):
    for _ in range(3):
        browser.post("/counter").follow()
    page = browser.get("/")
    assert shown(page, "count") == "3"
    assert browser.get("/api/session").json["data"]["count"] == 3


def test_api_counter_answers_the_new_count_as_json(browser):
    assert browser.post("/api/counter").json == {"count": 1}
    response = browser.post("/api/counter")
    assert response.json == {"count": 2}
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"


def test_increments_by_everyone_are_shared_between_sessions(browser, publisher):
    """The app's Length counts every session's presses; each counter is its own."""
    browser.post("/counter")
    other = other_browser(publisher)
    other.post("/api/counter")
    other.post("/api/counter")
    page = browser.get("/")
    assert shown(page, "count") == "1"
    assert shown(page, "increments") == "3"
    assert shown(other.get("/"), "count") == "2"
    assert increments_in_db(publisher) == 3


@pytest.mark.parametrize(
    ("path", "form"),
    [("/counter", {}), ("/login", {"user": "alice"}), ("/logout", {})],
    ids=["counter", "login", "logout"],
)
def test_form_posts_answer_303_to_the_page(browser, path, form):
    response = browser.post(path, form)
    assert response.status == "303 See Other"
    assert response.headers["Location"].endswith("/")


# -- reads write nothing ----------------------------------------------------


@pytest.mark.parametrize("with_session", [False, True], ids=["no-session", "live-session"])
def test_api_session_sets_no_cookie_and_writes_nothing(browser, publisher, with_session):
    if with_session:
        browser.post("/api/counter")
    before = last_transaction(publisher)
    response = browser.get("/api/session")
    assert set_cookie_headers(response) == []
    assert last_transaction(publisher) == before
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    assert response.json["new"] is not with_session


def test_api_session_without_a_cookie_reports_a_new_empty_session(browser):
    assert browser.get("/api/session").json == {
        "id_prefix": None, "user": None, "data": {}, "new": True,
    }


def test_page_without_a_session_sets_no_cookie_and_writes_nothing(browser, publisher):
    before = last_transaction(publisher)
    page = browser.get("/")
    assert set_cookie_headers(page) == []
    assert last_transaction(publisher) == before
    assert shown(page, "session-id") == "none yet"
    assert shown(page, "count") == "0"


def test_page_is_not_cacheable(browser):
    assert browser.get("/").headers["Cache-Control"] == "no-store"


# -- failure rolls everything back --------------------------------------------


@pytest.mark.parametrize("path", ["/fail", "/api/fail"], ids=["form", "api"])
def test_fail_answers_500_and_rolls_back_session_and_app_data(browser, publisher, path):
    browser.post("/api/counter")
    before = last_transaction(publisher)
    response = browser.post(path, expect_errors=True)
    assert response.status == "500 Internal Server Error"
    assert last_transaction(publisher) == before
    assert browser.get("/api/session").json["data"]["count"] == 1
    assert increments_in_db(publisher) == 1
    page = browser.get("/")
    assert (shown(page, "count"), shown(page, "increments")) == ("1", "1")


def test_the_fail_button_answers_the_demo_page_with_the_message_and_the_counters_kept(browser, publisher):
    """Not the publisher's bare "internal server error": the page, the failure said, what stayed."""
    browser.post("/api/counter")
    response = browser.post("/fail", expect_errors=True)
    assert response.status == "500 Internal Server Error"
    assert response.content_type == "text/html"
    assert "zodbsession demo" in response.text
    error = response.html.find(id="error").get_text()
    assert "failing on purpose after incrementing the counter to 2" in error
    assert "rolled its transaction back" in error
    assert (shown(response, "count"), shown(response, "increments")) == ("1", "1")  # what stays
    assert browser.get("/api/session").json["data"]["count"] == 1


def test_fail_without_a_session_stores_none_and_sets_no_cookie(browser, publisher):
    response = browser.post("/fail", expect_errors=True)
    assert response.status_int == 500
    assert set_cookie_headers(response) == []
    with publisher.db.transaction() as connection:
        assert len(publisher.manager.container(connection)) == 0


# -- login and logout ---------------------------------------------------------


def test_login_rotates_the_session_id_and_kills_the_old_one(browser, publisher):
    browser.post("/counter")
    old_id = browser.cookies[COOKIE]
    browser.post("/login", {"user": "alice"})
    new_id = browser.cookies[COOKIE]
    assert new_id != old_id
    page = browser.get("/")
    assert shown(page, "user") == "alice"
    assert shown(page, "session-id") == new_id[:8]
    assert shown(page, "count") == "1", "the session's data survives the login"
    stale = other_browser(publisher, old_id).get("/api/session").json
    assert stale == {"id_prefix": None, "user": None, "data": {}, "new": True}


def test_api_login_rotates_the_session_id_and_answers_the_session(browser, publisher):
    browser.post("/api/counter")
    old_id = browser.cookies[COOKIE]
    answer = browser.post_json("/api/login", {"user": "bob"}).json
    new_id = browser.cookies[COOKIE]
    assert new_id != old_id
    assert answer == {"id_prefix": new_id[:8], "user": "bob", "data": {"count": 1},
                      "new": False}
    assert other_browser(publisher, old_id).get("/api/session").json["new"] is True


def test_login_without_a_session_stores_one_and_sets_its_cookie(browser):
    response = browser.post("/login", {"user": "carol"})
    assert [header.split("=")[0] for header in set_cookie_headers(response)] == [COOKIE]
    assert browser.get("/api/session").json["user"] == "carol"


@pytest.mark.parametrize("path", ["/logout", "/api/logout"], ids=["form", "api"])
def test_logout_kills_the_session_and_deletes_the_cookie(browser, publisher, path):
    browser.post("/login", {"user": "alice"})
    old_id = browser.cookies[COOKIE]
    response = browser.post(path)
    (header,) = set_cookie_headers(response)
    assert header.startswith(f"{COOKIE}=;")
    assert "Max-Age=0" in header
    assert COOKIE not in browser.cookies
    assert other_browser(publisher, old_id).get("/api/session").json["new"] is True
    assert shown(browser.get("/"), "user") == "nobody"


def test_api_logout_answers_a_new_empty_session(browser):
    browser.post_json("/api/login", {"user": "alice"})
    assert browser.post("/api/logout").json == {
        "id_prefix": None, "user": None, "data": {}, "new": True,
    }


# -- flash messages and escaping ----------------------------------------------


def test_flash_message_shows_once_after_the_redirect(browser):
    page = browser.post("/counter").follow()
    assert "counter is now 1" in shown(page, "flash")
    again = browser.get("/")
    assert again.html.find(id="flash") is None
    assert shown(again, "count") == "1"
    assert "flash" not in browser.get("/api/session").json["data"]


def test_user_name_is_html_escaped(browser):
    page = browser.post("/login", {"user": "<script>"}).follow()
    assert "&lt;script&gt;" in page.text
    assert "<script>" not in page.text
    assert shown(page, "user") == "<script>"


# -- error answers -------------------------------------------------------------


@pytest.mark.parametrize("path", ["/nowhere", "/api", "/api/session/x"])
def test_unknown_path_answers_404(browser, path):
    assert browser.get(path, expect_errors=True).status == "404 Not Found"


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [("GET", "/counter", "POST"), ("POST", "/", "GET"), ("DELETE", "/api/session", "GET"),
     ("GET", "/api/login", "POST")],
    ids=["get-counter", "post-page", "delete-api-session", "get-api-login"],
)
def test_wrong_method_answers_405_with_allow(browser, method, path, allow):
    response = browser.request(path, method=method, expect_errors=True)
    assert response.status == "405 Method Not Allowed"
    assert response.headers["Allow"] == allow


@pytest.mark.parametrize(
    "body",
    [b"{", b"[]", b'"alice"', b"\xff\xfe", b""],
    ids=["truncated", "array", "string", "not-utf8", "empty"],
)
def test_api_login_with_a_bad_json_body_answers_400(browser, body):
    response = browser.post("/api/login", body, content_type="application/json",
                            expect_errors=True)
    assert response.status == "400 Bad Request"
    assert COOKIE not in browser.cookies


BAD_USERS = ["", "   ", "x" * 65, "a\nb", "tab\there"]
BAD_USER_IDS = ["empty", "blank", "65-chars", "newline", "tab"]


@pytest.mark.parametrize("user", BAD_USERS, ids=BAD_USER_IDS)
def test_form_login_with_a_bad_user_name_answers_400(browser, user):
    response = browser.post("/login", {"user": user}, expect_errors=True)
    assert response.status == "400 Bad Request"
    assert browser.get("/api/session").json["user"] is None


@pytest.mark.parametrize("user", [*BAD_USERS, 42, None], ids=[*BAD_USER_IDS, "number", "null"])
def test_api_login_with_a_bad_user_name_answers_400(browser, user):
    response = browser.post_json("/api/login", {"user": user}, expect_errors=True)
    assert response.status == "400 Bad Request"
    assert browser.get("/api/session").json["user"] is None


def test_form_login_without_a_user_field_answers_400(browser):
    assert browser.post("/login", {}, expect_errors=True).status == "400 Bad Request"


def test_user_name_of_64_printable_chars_is_accepted(browser):
    user = "é" * 64
    assert browser.post_json("/api/login", {"user": user}).json["user"] == user


def test_body_over_64_kib_answers_413(browser):
    body = json.dumps({"user": "a", "pad": "x" * MAX_BODY_BYTES}).encode()
    response = browser.post("/api/login", body, content_type="application/json",
                            expect_errors=True)
    assert response.status_int == 413
    assert browser.get("/api/session").json["user"] is None


def test_api_login_accepts_a_form_body_too(browser):
    """``curl -d user=carol`` sends a form: it logs in like the JSON body does."""
    answer = browser.post("/api/login", {"user": "carol"}).json
    assert answer["user"] == "carol"
    assert browser.get("/api/session").json["user"] == "carol"


def test_deeply_nested_json_answers_400_not_a_traceback(browser):
    response = browser.post("/api/login", b"[" * 60_000, content_type="application/json", status=400)
    assert b"nested too deeply" in response.body
    assert b"Traceback" not in response.body


def test_api_login_reads_json_labelled_as_a_form(browser):
    """``curl -d '{"user": "dora"}'`` labels its JSON body a form: the body decides."""
    answer = browser.post("/api/login", b'{"user": "dora"}',
                          content_type="application/x-www-form-urlencoded").json
    assert answer["user"] == "dora"
