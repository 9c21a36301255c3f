"""The admin application through WebTest, on a real FileStorage database.

Access is tested from the outside: what a request without the token gets,
and that it changed nothing in the database (not even a transaction).
Revocations are checked through a fresh connection and ``SessionManager.get``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest
import webtest
from prometheus_client.parser import text_string_to_metric_families
from ZODB import DB

from zodbsession.admin import ADMIN_COOKIE, AdminAccess, AdminApp, Sample, Sampler
from zodbsession.admin.access import BEARER
from zodbsession.admin.sampler import rates, recent_rate
from zodbsession.core.errors import ConfigError
from zodbsession.core.manager import SessionManager
from zodbsession.core.session import new_session_id
from zodbsession.ops import maintenance
from zodbsession.ops.metrics import Metrics
from zodbsession.testing import ManualClock

TOKEN = "correct horse battery staple"
BEARER_HEADERS = {"Authorization": f"Bearer {TOKEN}"}
SECRET = "the-data-value-nobody-should-see"


def store(db: DB, manager: SessionManager, user: str | None = None) -> str:
    """Store one session (owned by *user*) holding SECRET; returns its id."""
    with db.transaction() as conn:
        session = manager.new(conn, user_id=user)
        session["secret"] = SECRET
        return session.id


def is_live(db: DB, manager: SessionManager, session_id: str) -> bool:
    """Whether a fresh connection still finds the session."""
    with db.transaction() as conn:
        return manager.get(conn, session_id) is not None


@pytest.fixture
def manager() -> SessionManager:
    return SessionManager()  # the real clock: the page compares with time.time()


@pytest.fixture
def metrics(db: DB, manager: SessionManager) -> Metrics:
    return Metrics.for_database(db, manager)


@pytest.fixture
def admin(db: DB, manager: SessionManager, metrics: Metrics) -> AdminApp:
    return AdminApp(db, manager, metrics, token=TOKEN)


@pytest.fixture
def app(admin: AdminApp) -> webtest.TestApp:
    return webtest.TestApp(admin)


@pytest.fixture
def logged_in(app: webtest.TestApp) -> Iterator[webtest.TestApp]:
    """The app with a login cookie in its jar, as a browser has after the form."""
    app.post("/login", {"token": TOKEN, "next": "/"}, status=303)
    yield app


def text_of(response: webtest.TestResponse, element_id: str) -> str:
    element = response.html.find(id=element_id)
    assert element is not None, f"no element #{element_id}"
    return element.get_text().strip()


# -- access ----------------------------------------------------------------------------------


@pytest.mark.parametrize("token", ["", "   ", None], ids=["empty", "blank", "none"])
def test_an_empty_token_refuses_to_start(db, manager, metrics, token):
    with pytest.raises(ConfigError) as info:
        AdminApp(db, manager, metrics, token=token)  # type: ignore[arg-type]
    assert info.value.key == "admin.token"
    assert "ZODBSESSION_ADMIN_TOKEN" in str(info.value)
    assert isinstance(info.value, ValueError)


URLS = [
    ("GET", "/", {}),
    ("GET", "/metrics", {}),
    ("GET", "/sessions", {"user": "alice"}),
    ("GET", "/session", {"id": "ID", "data": "1"}),
    ("GET", "/nowhere", {}),
    ("POST", "/revoke", {"id": "ID"}),
    ("POST", "/revoke-user", {"user": "alice"}),
    ("POST", "/logout", {}),
]
CREDENTIALS = {
    "nothing": {},
    "wrong bearer": {"Authorization": "Bearer not-the-token"},
    "token as basic": {"Authorization": f"Basic {TOKEN}"},
    "empty bearer": {"Authorization": "Bearer "},
    "token as cookie": {"Cookie": f"{ADMIN_COOKIE}={TOKEN}"},
    "forged cookie": {"Cookie": f"{ADMIN_COOKIE}=1700000000.{'0' * 64}"},
}


@pytest.mark.parametrize("credentials", CREDENTIALS.values(), ids=CREDENTIALS.keys())
@pytest.mark.parametrize(("method", "path", "params"), URLS, ids=[f"{m} {p}" for m, p, _ in URLS])
def test_every_url_answers_401_without_the_token_and_changes_nothing(
        app, db, manager, method, path, params, credentials):
    session_id = store(db, manager, "alice")
    last_transaction = db.lastTransaction()
    params = {k: session_id if v == "ID" else v for k, v in params.items()}
    if method == "GET":
        response = app.get(path, params, headers=credentials, status=401)
    else:
        response = app.post(path, params, headers=credentials, status=401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert SECRET not in response.text
    assert "Set-Cookie" not in response.headers
    assert db.lastTransaction() == last_transaction
    assert is_live(db, manager, session_id)


def test_the_401_page_is_a_login_form_that_comes_back_to_the_url(app):
    response = app.get("/sessions?user=alice", status=401)
    form = response.forms["login-form"]
    assert form.action == "/login"
    assert form["next"].value == "/sessions?user=alice"
    assert app.get("/metrics", status=401).content_type == "text/plain"


def test_a_wrong_token_at_the_login_form_sets_no_cookie(app):
    response = app.post("/login", {"token": "guess", "next": "/"}, status=401)
    assert "Set-Cookie" not in response.headers
    assert text_of(response, "login-error") == "That is not the admin token."
    app.get("/", status=401)


def test_the_login_cookie_is_strict_httponly_and_never_the_token(app):
    response = app.post("/login", {"token": TOKEN, "next": "/sessions?user=bob"}, status=303)
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith(f"{ADMIN_COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert TOKEN not in cookie and TOKEN.replace(" ", "+") not in cookie
    assert response.headers["Location"] == "/sessions?user=bob"
    assert app.get("/", status=200)


@pytest.mark.parametrize("next_url", ["//evil.example/", "https://evil.example/", "\\\\evil", "/\\evil"],
                         ids=["scheme-relative", "absolute", "backslashes", "slash-backslash"])
def test_the_login_redirect_stays_on_this_host(app, next_url):
    response = app.post("/login", {"token": TOKEN, "next": next_url}, status=303)
    assert response.headers["Location"] == "/"


def test_a_cookie_from_another_process_or_too_old_is_refused():
    clock = ManualClock(1_700_000_000.0)
    access = AdminAccess(TOKEN, lifetime=3600, clock=clock)
    cookie = access.login_cookie(https=False).split(";")[0]
    environ = {"HTTP_COOKIE": cookie}
    assert access.credential(environ) == cookie.split("=", 1)[1]
    assert AdminAccess(TOKEN).credential(environ) is None  # a restart draws a new key
    clock.advance(3601)
    assert access.credential(environ) is None
    assert "Secure" in access.login_cookie(https=True)


def test_logging_out_deletes_the_cookie(logged_in):
    page = logged_in.get("/")
    response = page.forms["logout-form"].submit(status=303)
    assert "Max-Age=0" in response.headers["Set-Cookie"]
    logged_in.get("/", status=401)


# -- CSRF -------------------------------------------------------------------------------------


def test_a_post_without_the_form_token_is_refused(logged_in, db, manager):
    session_id = store(db, manager)
    last_transaction = db.lastTransaction()
    logged_in.post("/revoke", {"id": session_id}, status=403)
    logged_in.post("/revoke", {"id": session_id, "csrf": "0" * 64}, status=403)
    assert db.lastTransaction() == last_transaction
    assert is_live(db, manager, session_id)


def test_a_post_from_another_origin_is_refused_even_with_the_form_token(logged_in, db, manager):
    session_id = store(db, manager, "alice")
    form = logged_in.get("/sessions", {"user": "alice"}).forms["revoke-user-form"]
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"},
                    {"Sec-Fetch-Site": "same-site"}):
        form.submit(headers=headers, status=403)
    assert is_live(db, manager, session_id)
    form.submit(headers={"Origin": "http://localhost:80", "Sec-Fetch-Site": "same-origin"}, status=303)
    assert not is_live(db, manager, session_id)


def test_the_form_token_of_one_login_does_not_fit_another(app, admin, db, manager):
    session_id = store(db, manager)
    other_login = admin.access.csrf_token(admin.access.login_cookie(https=False))
    app.post("/login", {"token": TOKEN}, status=303)
    app.post("/revoke", {"id": session_id, "csrf": other_login}, status=403)
    assert is_live(db, manager, session_id)


def test_a_bearer_post_needs_no_form_token(app, db, manager):
    session_id = store(db, manager)
    app.post("/revoke", {"id": session_id}, headers=BEARER_HEADERS, status=303)
    assert not is_live(db, manager, session_id)


# -- the pages ---------------------------------------------------------------------------------


def test_the_dashboard_shows_the_live_count(logged_in, db, manager):
    for user in ("alice", "alice", None):
        store(db, manager, user)
    page = logged_in.get("/", status=200)
    assert text_of(page, "live-sessions") == "3"
    assert "<script" not in page.text and "http://" not in page.text.replace('xmlns="http://www.w3.org', "")
    assert re.search(r"default-src 'none'", page.headers["Content-Security-Policy"])
    assert page.headers["Cache-Control"] == "no-store"


def test_the_dashboard_draws_charts_once_there_are_samples(db, manager, metrics):
    clock = ManualClock(1000.0)
    sampler = Sampler(metrics, interval=5, clock=clock)
    app = webtest.TestApp(AdminApp(db, manager, metrics, token=TOKEN, sampler=sampler))
    assert "collecting samples" in app.get("/", headers=BEARER_HEADERS).text
    for _ in range(3):
        store(db, manager)
        metrics.request_finished("committed", 1, 0.002)
        metrics.request_retried(Exception(), 1)
        clock.advance(5)
        page = app.get("/", headers=BEARER_HEADERS)
    assert len(sampler.samples()) == 4
    charts = page.html.find_all("svg")
    assert len(charts) == 3
    assert all(chart.find("polyline") is not None for chart in charts)
    assert text_of(page, "requests-rate") == "0.20"  # 3 requests in 15 s


def test_the_dashboard_shows_the_last_janitor_run_and_pack(logged_in, db, metrics):
    page = logged_in.get("/")
    assert "no sweep since this process started" in text_of(page, "janitor-last")
    assert "never packed" in text_of(page, "housekeeping")
    metrics.janitor_ran(4, 0.05)
    maintenance.pack(db)
    page = logged_in.get("/")
    assert "removed 4 in 50.0 ms" in text_of(page, "janitor-last")
    assert "never packed" not in text_of(page, "housekeeping")


def test_metrics_are_served_in_the_prometheus_format(app, db, manager):
    store(db, manager)
    response = app.get("/metrics", headers=BEARER_HEADERS, status=200)
    assert response.content_type == "text/plain"
    live = [s.value for family in text_string_to_metric_families(response.text) for s in family.samples
            if s.name == "zodbsession_live_sessions"]
    assert live == [1]


def test_search_by_prefix_lists_the_matching_sessions_only(logged_in, db, manager):
    ids = [store(db, manager) for _ in range(30)]
    prefix = ids[0][:1]
    page = logged_in.get("/sessions", {"prefix": prefix})
    shown = {field["value"] for field in page.html.select("#results input[name=id]")}
    assert shown == {i for i in ids if i.startswith(prefix)}
    assert SECRET not in page.text
    assert text_of(page, "found").startswith(f"{len(shown)} session")
    exact = logged_in.get("/sessions", {"prefix": ids[1]})
    assert {f["value"] for f in exact.html.select("#results input[name=id]")} == {ids[1]}


def test_a_prefix_no_id_can_have_finds_nothing(logged_in, db, manager):
    store(db, manager)
    page = logged_in.get("/sessions", {"prefix": "<script>"})
    assert page.html.select("#results input[name=id]") == []
    assert "<script>" not in page.text


def test_search_by_user_lists_that_users_sessions_only(logged_in, db, manager):
    alice = {store(db, manager, "alice") for _ in range(2)}
    store(db, manager, "bob")
    page = logged_in.get("/sessions", {"user": "alice"})
    assert {f["value"] for f in page.html.select("#results input[name=id]")} == alice
    assert SECRET not in page.text


def test_one_sessions_data_is_shown_only_when_asked(logged_in, db, manager):
    session_id = store(db, manager, "alice")
    page = logged_in.get("/session", {"id": session_id})
    assert "alice" in text_of(page, "bookkeeping")
    assert SECRET not in page.text
    page = page.click(linkid="show-data")
    assert SECRET in text_of(page, "data")
    logged_in.get("/session", {"id": new_session_id()}, status=404)


def test_revoking_one_session_through_the_page_ends_it(logged_in, db, manager):
    doomed, kept = store(db, manager, "alice"), store(db, manager, "alice")
    page = logged_in.get("/sessions", {"user": "alice"})
    response = page.forms[f"revoke-{doomed[:12]}-form"].submit(status=303)
    assert response.headers["Location"] == "/sessions?user=alice&revoked=1"
    assert text_of(response.follow(), "message") == "Revoked 1 session(s)."
    assert not is_live(db, manager, doomed)
    assert is_live(db, manager, kept)


def test_revoking_all_of_a_users_sessions_through_the_page(logged_in, db, manager):
    alice = [store(db, manager, "alice") for _ in range(3)]
    bob = store(db, manager, "bob")
    page = logged_in.get("/sessions", {"user": "alice"})
    page = page.forms["revoke-user-form"].submit(status=303).follow()
    assert text_of(page, "message") == "Revoked 3 session(s)."
    assert not any(is_live(db, manager, i) for i in alice)
    assert is_live(db, manager, bob)
    assert maintenance.stats(db, manager).live_sessions == 1


def test_unknown_urls_and_methods_with_the_token(app):
    app.get("/nowhere", headers=BEARER_HEADERS, status=404)
    response = app.post("/", headers=BEARER_HEADERS, status=405)
    assert response.headers["Allow"] == "GET"
    response = app.get("/revoke", headers=BEARER_HEADERS, status=405)
    assert response.headers["Allow"] == "POST"


def test_an_error_is_logged_and_never_shows_a_traceback(db, manager, caplog):
    class Broken(Metrics):
        def snapshot(self):
            raise RuntimeError("internal detail 1234")

    app = webtest.TestApp(AdminApp(db, manager, Broken(), token=TOKEN))
    response = app.get("/", headers=BEARER_HEADERS, status=500)
    assert "internal detail" not in response.text and "Traceback" not in response.text
    assert "internal detail 1234" in caplog.text


# -- the sampler ---------------------------------------------------------------------------------


def test_the_sampler_keeps_a_bounded_ring(metrics):
    clock = ManualClock(0.0)
    sampler = Sampler(metrics, interval=1, capacity=3, clock=clock)
    for _ in range(5):
        clock.advance(1)
        sampler.take_if_due()
        sampler.take_if_due()  # not due again at the same moment
    assert [s.at for s in sampler.samples()] == [3.0, 4.0, 5.0]


def test_the_sampler_thread_samples_until_stopped(metrics):
    sampler = Sampler(metrics, interval=0.02).start()
    try:
        for _ in range(200):
            if len(sampler.samples()) >= 3:
                break
            time.sleep(0.01)
    finally:
        sampler.stop()
    assert len(sampler.samples()) >= 3


def test_rates_are_per_second_differences_and_never_negative():
    samples = [Sample(0, 1, 0, 0, 0, 0), Sample(10, 1, 50, 5, 2, 0), Sample(20, 1, 40, 5, 2, 0)]
    assert rates(samples, "requests") == [(10, 5.0), (20, 0.0)]
    assert recent_rate(samples, "retries", window=60) == 0.25
    assert recent_rate(samples[:1], "retries") is None


def test_bearer_credential_is_not_a_cookie_value():
    """A request with a Bearer header is judged by it alone, even with a good cookie."""
    access = AdminAccess(TOKEN)
    cookie = access.login_cookie(https=False).split(";")[0]
    assert access.credential({"HTTP_COOKIE": cookie, "HTTP_AUTHORIZATION": "Bearer nope"}) is None
    assert access.credential({"HTTP_COOKIE": cookie, "HTTP_AUTHORIZATION": f"Bearer {TOKEN}"}) == BEARER


@pytest.mark.parametrize("value", ["9" * 5000, "-1", "1e9", "\u0661"], ids=["5000-digits", "negative",
                                                                             "float", "arabic-digit"])
def test_a_forged_revoked_count_answers_400(logged_in, value):
    response = logged_in.get("/", {"revoked": value}, status=400)
    assert b"Traceback" not in response.body


def test_an_honest_revoked_count_is_shown(logged_in):
    assert "Revoked 3 session(s)." in logged_in.get("/", {"revoked": "3"}).text
