"""zodbsession.flask, the extension: one transaction per Flask request, through Flask's test client."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from flask import Flask, request, session
from flaskkit import commit_elsewhere, make_app, root_value
from persistent.mapping import PersistentMapping

from zodbsession import SessionPublisher
from zodbsession.core.errors import ConfigError, NoActiveRequest
from zodbsession.flask import ZODBSession, connection, root


def test_session_and_app_data_commit_together(client, db):
    response = client.get("/put/colour/blue")
    assert response.status_code == 200
    assert client.get("/get/colour").text == "blue|blue"
    assert root_value(db, "colour") == "blue"


@pytest.mark.parametrize("testing", [False, True], ids=["flask-500-page", "propagated"])
def test_an_exception_rolls_back_the_session_and_the_app_data(db, testing):
    client = make_app(db, testing=testing).test_client()
    client.get("/put/colour/blue")
    if testing:
        # As Flask does when testing: the view's exception reaches the test
        # client, raised again once the publisher has aborted.
        with pytest.raises(RuntimeError, match="the view broke"):
            client.get("/fail/colour/red")
    else:
        assert client.get("/fail/colour/red").status_code == 500
    assert client.get("/get/colour").text == "blue|blue"
    assert root_value(db, "colour") == "blue"


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
    assert root_value(db, "colour") == "green"


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


def test_a_real_conflict_is_retried_once_with_the_request_replayed(app, client, db):
    """A second connection commits the counter while the view holds it: the commit conflicts."""
    commit_elsewhere(db, lambda r: r.__setitem__("counter", PersistentMapping(n=0)))
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
    ZODBSession.state(app).close()  # the extension opened it, the extension closes it
    assert client.get("/").text == "1"  # and opens the URI again when asked: a fresh memory://


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
                                        ("SESSION_COOKIE_SAMESITE", "lax-ish"),
                                        ("ZODBSESSION_IDLE_TIMEOUT", 0)],
                         ids=["idle-timeout", "retry-attempts", "uri", "samesite", "idle-timeout-zero"])
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
    assert state.manager.access_resolution == 60
    assert (state.cookie.secure, state.cookie.samesite, state.cookie.path, state.cookie.domain) == (
        True, "Strict", "/shop", "example.org")


@pytest.mark.parametrize("config, propagates", [
    ({"DEBUG": True}, True),
    ({"PROPAGATE_EXCEPTIONS": True}, True),
    ({"TESTING": True, "PROPAGATE_EXCEPTIONS": False}, False),
], ids=["debug", "propagate", "testing-but-not-propagating"])
def test_exceptions_propagate_by_flasks_rule_after_the_abort(db, config, propagates):
    """Flask's debugger and test client see the view's exception; the transaction is aborted first."""
    app = make_app(db)
    app.config.update(config)
    client = app.test_client()
    client.get("/put/colour/blue")
    if propagates:
        with pytest.raises(RuntimeError):
            client.get("/fail/colour/red")
    else:
        assert client.get("/fail/colour/red").status_code == 500
    assert root_value(db, "colour") == "blue"
    assert len(db.pool.available) == len(db.pool.all)  # the connection went back


def test_a_conflict_retried_to_success_raises_nothing_when_propagating(db):
    app = make_app(db, testing=True)
    assert app.test_client().get("/conflict-in-view").text == "after the retry"


def test_a_short_idle_timeout_records_access_often_enough():
    app = Flask(__name__)
    app.config.update(ZODBSESSION_URI="memory://", ZODBSESSION_IDLE_TIMEOUT=30)
    ZODBSession(app)
    manager = ZODBSession.state(app).manager
    assert manager.idle_timeout == 30 and manager.access_resolution == 3


def test_transaction_outside_a_request_commits_and_makes_root_work(db):
    app = Flask(__name__)
    ext = ZODBSession(app, db)
    with app.app_context(), ext.transaction() as conn:  # as in a `flask` CLI command
        root()["seeded"] = "yes"
        assert connection() is conn
    assert root_value(db, "seeded") == "yes"
    with pytest.raises(NoActiveRequest):
        connection()  # the scope ended with the block


def test_transaction_outside_a_request_aborts_when_the_block_raises(db):
    app = Flask(__name__)
    ext = ZODBSession(app, db)
    with pytest.raises(ValueError), ext.transaction(app):
        root()["seeded"] = "no"
        raise ValueError("changed my mind")
    assert root_value(db, "seeded") == "-"
    assert len(db.pool.available) == len(db.pool.all)


def test_transaction_is_refused_inside_a_request(db):
    app = Flask(__name__)
    ext = ZODBSession(app, db)

    @app.get("/")
    def index() -> str:
        with pytest.raises(RuntimeError, match="inside a request"), ext.transaction():
            pass
        return "refused"

    assert app.test_client().get("/").text == "refused"


def test_the_extensions_own_publisher_sweeps_expired_sessions(db, manager, clock):
    """As zodbsession serve does: a janitor runs beside the extension's publisher."""
    app = make_app(db, manager=manager, ZODBSESSION_JANITOR_INTERVAL=0.05)
    state = ZODBSession.state(app)
    client = app.test_client()
    client.get("/put/colour/blue")
    assert state.janitor is not None
    clock.advance(manager.idle_timeout + 1)

    def stored() -> int:
        with db.transaction() as conn:
            return len(manager.container(conn))

    deadline = time.monotonic() + 30  # a bound for a loaded machine, not a timing assertion
    while stored() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stored() == 0
    state.close()
    assert state.janitor is None


def test_the_janitor_can_be_turned_off(db):
    app = make_app(db, ZODBSESSION_JANITOR_INTERVAL=0)
    app.test_client().get("/put/colour/blue")
    janitor = ZODBSession.state(app).janitor
    assert janitor is not None and janitor.interval == 0  # started, and so does nothing
