"""zodbsession.flask through Flask's own test client: a real Flask app on a real ZODB."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
import transaction
from flask import Flask, abort, flash, get_flashed_messages, redirect, request, session
from persistent.mapping import PersistentMapping
from ZODB import DB
from ZODB.MappingStorage import MappingStorage
from ZODB.POSException import ConflictError

from zodbsession import PublishError, Redirect, SessionPublisher
from zodbsession.errors import ConfigError, NoActiveRequest
from zodbsession.flask import ZODBSession, connection, root


@pytest.fixture
def db() -> Iterator[DB]:
    database = DB(MappingStorage())
    yield database
    database.close()


def make_app(db: DB, *, testing: bool = False, **config: object) -> Flask:
    """An app whose views touch the session and the database root together."""
    app = Flask(__name__)
    app.config.update(TESTING=testing, **config)
    ZODBSession(app, db)
    app.attempts = []  # type: ignore[attr-defined]

    @app.get("/put/<key>/<value>")
    def put(key: str, value: str) -> str:
        session[key] = value
        root()[key] = value
        return "stored"

    @app.get("/get/<key>")
    def get(key: str) -> str:
        return f"{session.get(key, '-')}|{root().get(key, '-')}"

    @app.get("/peek")
    def peek() -> str:
        return "no session used"

    @app.get("/fail/<key>/<value>")
    def fail(key: str, value: str) -> str:
        session[key] = value
        root()[key] = value
        raise RuntimeError("the view broke")

    @app.get("/five/<key>/<value>")
    def five(key: str, value: str) -> tuple[str, int]:
        session[key] = value
        root()[key] = value
        return "unavailable", 503

    @app.get("/redirect/<key>/<value>")
    def go(key: str, value: str):
        session[key] = value
        root()[key] = value
        return redirect("/get/" + key)

    @app.get("/forbid/<key>/<value>")
    def forbid(key: str, value: str):
        session[key] = value
        root()[key] = value
        abort(403)

    @app.get("/raise-redirect/<key>/<value>")
    def raise_redirect(key: str, value: str):
        session[key] = value
        root()[key] = value
        raise Redirect("/get/" + key)

    @app.get("/publish-error")
    def publish_error():
        session["failed_logins"] = session.get("failed_logins", 0) + 1
        raise PublishError("wrong password", status="401 Unauthorized")

    @app.get("/flash/<message>")
    def flash_it(message: str):
        flash(message)
        return redirect("/messages")

    @app.get("/messages")
    def messages() -> str:
        return ",".join(get_flashed_messages()) or "none"

    @app.get("/permanent")
    def permanent() -> str:
        session.permanent = True
        session["remember"] = "me"
        return "remembered"

    @app.get("/logout")
    def logout() -> str:
        session.logout()
        return "bye"

    @app.get("/new")
    def new() -> str:
        return str(session.new)

    @app.get("/cart/add/<item>")
    def cart_add(item: str) -> str:
        session.setdefault("cart", []).append(item)  # in place: Flask's idiom needs `modified`
        session.modified = True
        return ",".join(session["cart"])

    @app.post("/bump")
    def bump() -> str:
        app.attempts.append(request.environ["zodbsession.attempt"])  # type: ignore[attr-defined]
        counter = root()["counter"]
        counter["n"]  # loaded in this attempt's snapshot
        if len(app.attempts) == 1:  # type: ignore[attr-defined]
            _commit_elsewhere(db, lambda r: r["counter"].__setitem__("n", r["counter"]["n"] + 100))
        counter["n"] += 1
        session["bumps"] = session.get("bumps", 0) + 1
        return str(counter["n"])

    @app.get("/conflict-in-view")
    def conflict_in_view() -> str:
        app.attempts.append(request.environ["zodbsession.attempt"])  # type: ignore[attr-defined]
        session["tries"] = len(app.attempts)  # type: ignore[attr-defined]
        if len(app.attempts) == 1:  # type: ignore[attr-defined]
            raise ConflictError("forced in the view")
        return "after the retry"

    return app


def _commit_elsewhere(db: DB, change) -> None:
    """Commit *change* to the root from a second connection, with a manager of its own."""
    tm = transaction.TransactionManager(explicit=True)
    other = db.open(transaction_manager=tm)
    try:
        tm.begin()
        change(other.root())
        tm.commit()
    finally:
        other.close()


def _root_value(db: DB, key: str) -> object:
    with db.transaction() as conn:
        return conn.root().get(key, "-")


def _set_cookies(response) -> list[str]:
    return response.headers.getlist("Set-Cookie")


@pytest.fixture
def app(db: DB) -> Flask:
    return make_app(db)


@pytest.fixture
def client(app: Flask):
    return app.test_client()


# -- the session across requests ------------------------------------------


def test_session_and_app_data_commit_together(client, db):
    response = client.get("/put/colour/blue")
    assert response.status_code == 200
    assert client.get("/get/colour").text == "blue|blue"
    assert _root_value(db, "colour") == "blue"


def test_cookie_is_named_by_session_cookie_name_and_sent_once(db):
    client = make_app(db, SESSION_COOKIE_NAME="basket").test_client()
    response = client.get("/put/a/1")
    cookies = _set_cookies(response)
    assert len(cookies) == 1
    assert cookies[0].startswith("basket=")
    assert "HttpOnly" in cookies[0] and "SameSite=Lax" in cookies[0]
    assert "Max-Age" not in cookies[0]  # not permanent: a browser-session cookie
    assert _set_cookies(client.get("/put/a/2")) == []  # same session: the cookie stays


def test_a_request_that_never_touches_the_session_writes_nothing(client, db):
    client.get("/peek")  # the first request makes the publisher, which makes the container
    before = db.lastTransaction()
    response = client.get("/peek")
    assert _set_cookies(response) == []
    assert "Cookie" not in response.headers.get("Vary", "")
    assert db.lastTransaction() == before


def test_new_is_true_only_for_the_first_request(client):
    assert client.get("/new").text == "True"
    client.get("/put/k/v")
    assert client.get("/new").text == "False"


def test_setting_modified_stores_an_in_place_change(client):
    client.get("/cart/add/apple")
    assert client.get("/cart/add/pear").text == "apple,pear"


def test_logout_ends_the_session_and_deletes_the_cookie(client):
    client.get("/put/user/alice")
    response = client.get("/logout")
    assert any("Max-Age=0" in cookie for cookie in _set_cookies(response))
    assert client.get("/get/user").text.startswith("-|")


# -- Vary ---------------------------------------------------------------------


def test_vary_cookie_is_sent_when_the_session_was_read(client):
    response = client.get("/get/anything")
    assert "Cookie" in response.headers["Vary"]


# -- commit and abort ---------------------------------------------------------


@pytest.mark.parametrize("testing", [False, True], ids=["flask-500-page", "propagated"])
def test_an_exception_rolls_back_the_session_and_the_app_data(db, testing):
    client = make_app(db, testing=testing).test_client()
    client.get("/put/colour/blue")
    # Propagated past Flask (TESTING), the publisher answers the 500 itself.
    assert client.get("/fail/colour/red").status_code == 500
    assert client.get("/get/colour").text == "blue|blue"
    assert _root_value(db, "colour") == "blue"


def test_a_5xx_response_rolls_back(client, db):
    client.get("/put/colour/blue")
    assert client.get("/five/colour/red").status_code == 503
    assert client.get("/get/colour").text == "blue|blue"


@pytest.mark.parametrize("path, status", [("/redirect", 302), ("/forbid", 403), ("/raise-redirect", 303)],
                         ids=["redirect", "abort-403", "raise-Redirect"])
def test_redirects_and_4xx_commit(client, db, path, status):
    response = client.get(f"{path}/colour/green")
    assert response.status_code == status
    assert client.get("/get/colour").text == "green|green"
    assert _root_value(db, "colour") == "green"


def test_raised_redirect_answers_with_its_location(client):
    response = client.get("/raise-redirect/k/v")
    assert response.status == "303 See Other"
    assert response.headers["Location"] == "/get/k"


def test_publish_error_answers_its_status_and_commits(client):
    response = client.get("/publish-error")
    assert response.status == "401 Unauthorized"
    assert response.text == "wrong password"
    client.get("/publish-error")
    with client.session_transaction() as s:
        assert s["failed_logins"] == 2


def test_flash_survives_the_redirect_and_is_shown_once(client):
    response = client.get("/flash/saved")
    assert response.status_code == 302
    assert client.get("/messages").text == "saved"
    assert client.get("/messages").text == "none"


# -- conflicts ---------------------------------------------------------------


def test_a_real_conflict_is_retried_once_with_the_request_replayed(app, client, db):
    """A second connection commits the counter while the view holds it: the commit conflicts."""
    _commit_elsewhere(db, lambda r: r.__setitem__("counter", PersistentMapping(n=0)))
    response = client.post("/bump", data={"x": "1"})
    assert response.status_code == 200
    assert app.attempts == [1, 2]
    assert response.text == "101"  # 100 from the other connection, then this request's 1
    with client.session_transaction() as s:
        assert s["bumps"] == 1  # the first attempt's write was rolled back


@pytest.mark.parametrize("testing", [False, True], ids=["flask-500-page", "propagated"])
def test_a_conflict_raised_in_a_view_is_retried_not_answered_500(db, testing):
    app = make_app(db, testing=testing)
    response = app.test_client().get("/conflict-in-view")
    assert response.status_code == 200
    assert response.text == "after the retry"
    assert app.attempts == [1, 2]


# -- permanent sessions --------------------------------------------------------


def test_permanent_session_cookie_has_max_age_of_permanent_session_lifetime(db):
    client = make_app(db, PERMANENT_SESSION_LIFETIME=timedelta(days=7)).test_client()
    cookies = _set_cookies(client.get("/permanent"))
    assert len(cookies) == 1
    assert f"Max-Age={7 * 86400}" in cookies[0]


def test_permanent_session_cookie_is_refreshed_each_request(db):
    client = make_app(db, PERMANENT_SESSION_LIFETIME=3600).test_client()
    first = _set_cookies(client.get("/permanent"))
    again = _set_cookies(client.get("/get/remember"))
    assert len(again) == 1
    assert "Max-Age=3600" in again[0]
    assert again[0].split(";")[0] == first[0].split(";")[0]  # the same session id


def test_refresh_each_request_off_sends_no_cookie_for_a_read(db):
    client = make_app(db, PERMANENT_SESSION_LIFETIME=3600, SESSION_REFRESH_EACH_REQUEST=False).test_client()
    client.get("/permanent")
    assert _set_cookies(client.get("/get/remember")) == []


# -- the test client's session_transaction -----------------------------------


def test_session_transaction_reads_what_a_request_stored(client):
    client.get("/put/colour/blue")
    with client.session_transaction() as s:
        assert s["colour"] == "blue"
        assert not s.new


def test_session_transaction_on_a_fresh_client_hands_it_a_cookie(client):
    with client.session_transaction() as s:
        s["colour"] = "violet"
    assert client.get("/get/colour").text.startswith("violet|")


def test_session_transaction_changes_an_existing_session(client):
    client.get("/put/colour/blue")
    with client.session_transaction() as s:
        s["colour"] = "red"
    assert client.get("/get/colour").text == "red|blue"


def test_session_transaction_gives_its_connection_back(client, db):
    for _ in range(3):
        with client.session_transaction() as s:
            s["n"] = 1
    assert len(db.pool.available) == len(db.pool.all)  # every connection is back in the pool


# -- configuration ------------------------------------------------------------


def test_memory_uri_configures_the_database(tmp_path):
    app = Flask(__name__)
    app.config["ZODBSESSION_URI"] = "memory://"
    ZODBSession().init_app(app)

    @app.get("/")
    def index() -> str:
        session["n"] = session.get("n", 0) + 1
        return str(session["n"])

    client = app.test_client()
    client.get("/")
    assert client.get("/").text == "2"


def test_no_uri_and_no_db_is_an_error_naming_the_key():
    app = Flask(__name__)
    ZODBSession(app)
    with pytest.raises(ConfigError, match="ZODBSESSION_URI"):
        app.test_client().get("/")


def test_partitioned_cookies_are_refused_at_init():
    app = Flask(__name__)
    app.config.update(ZODBSESSION_URI="memory://", SESSION_COOKIE_PARTITIONED=True)
    with pytest.raises(ConfigError, match="SESSION_COOKIE_PARTITIONED"):
        ZODBSession(app)


def test_connection_outside_a_request_raises():
    with pytest.raises(NoActiveRequest):
        connection()


# -- inside another publisher (zodbsession serve) ------------------------------


def test_inside_an_outer_publisher_the_app_joins_its_transaction(db):
    """As under ``zodbsession serve``: the server's publisher wraps the Flask app."""
    import webtest

    app = make_app(db)
    outer = webtest.TestApp(SessionPublisher(app, db))
    outer.get("/put/colour/blue")
    assert outer.get("/get/colour").text == "blue|blue"
    assert outer.get("/fail/colour/red", status=500)
    assert outer.get("/get/colour").text == "blue|blue"
    assert "zodbsession" in outer.cookies  # the server's cookie, not Flask's


def test_connection_in_a_bare_test_request_context_is_the_sessions_own(app, db):
    with app.test_request_context("/"):
        conn = connection()
        assert conn.db() is db
        assert conn is connection()  # the same one for the whole request


def test_the_extension_hands_out_the_requests_connection(db):
    app = Flask(__name__)
    ext = ZODBSession(app, db)
    seen = []

    @app.get("/")
    def index() -> str:
        seen.append((ext.connection, connection(), request.environ["zodbsession.connection"]))
        return "ok"

    app.test_client().get("/")
    ((from_ext, from_module, from_environ),) = seen
    assert from_ext is from_module is from_environ


def test_init_app_twice_is_refused(db):
    app = Flask(__name__)
    ext = ZODBSession(app, db)
    with pytest.raises(RuntimeError, match="already installed"):
        ext.init_app(app)


@pytest.mark.parametrize("key, value", [("ZODBSESSION_IDLE_TIMEOUT", "soon"),
                                        ("ZODBSESSION_RETRY_ATTEMPTS", 0),
                                        ("ZODBSESSION_URI", 42),
                                        ("SESSION_COOKIE_SAMESITE", "lax-ish")],
                         ids=["idle-timeout", "retry-attempts", "uri", "samesite"])
def test_bad_settings_are_refused_at_init_naming_the_key(key, value):
    app = Flask(__name__)
    app.config.update(ZODBSESSION_URI="memory://")
    app.config[key] = value
    with pytest.raises(ConfigError, match=key):
        ZODBSession(app)


def test_settings_reach_the_manager_and_the_cookie():
    app = Flask(__name__)
    app.config.update(ZODBSESSION_URI="memory://", ZODBSESSION_IDLE_TIMEOUT=timedelta(minutes=10),
                      SESSION_COOKIE_SECURE=True, SESSION_COOKIE_SAMESITE="Strict",
                      SESSION_COOKIE_PATH="/shop", SESSION_COOKIE_DOMAIN="example.org")
    ZODBSession(app)
    state = ZODBSession.state(app)
    assert state.manager.idle_timeout == 600
    assert (state.cookie.secure, state.cookie.samesite, state.cookie.path, state.cookie.domain) == (
        True, "Strict", "/shop", "example.org")


def test_secure_false_still_marks_the_cookie_secure_over_https(db):
    client = make_app(db).test_client()
    cookie = _set_cookies(client.get("/put/a/1", base_url="https://localhost"))[0]
    assert "Secure" in cookie
    cookie = _set_cookies(make_app(db).test_client().get("/put/a/1"))[0]
    assert "Secure" not in cookie


def test_a_permanent_session_keeps_its_max_age_when_login_rotates_it(db):
    app = make_app(db, PERMANENT_SESSION_LIFETIME=600)

    @app.get("/login/<user>")
    def login(user: str) -> str:
        session.login(user)
        return "in"

    client = app.test_client()
    first = _set_cookies(client.get("/permanent"))[0]
    rotated = _set_cookies(client.get("/login/alice"))
    assert len(rotated) == 1
    assert "Max-Age=600" in rotated[0]
    assert rotated[0].split(";")[0] != first.split(";")[0]


def test_clear_empties_the_session_in_one_write_and_keeps_it(client):
    client.get("/put/a/1")
    client.get("/put/b/2")
    with client.session_transaction() as s:
        session_id = s.id
        s.clear()
        assert len(s) == 0
    with client.session_transaction() as s:
        assert s.id == session_id and dict(s) == {}
