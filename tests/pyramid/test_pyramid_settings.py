"""``zodbsession.pyramid``'s configuration: the ini settings, the databases, and what it refuses.

Real Pyramid applications through WebTest, on real in-memory ZODB databases.
"""

from __future__ import annotations

from typing import Any

import pytest
from pyramid.exceptions import ConfigurationExecutionError
from pyramidkit import apps_fixture, counter_app, db_of, route, set_cookies

from zodbsession import SessionPublisher
from zodbsession.core.errors import ConfigError

apps = pytest.fixture(apps_fixture)


def test_a_session_outside_pyramid_tm_is_refused(apps):
    def setup(config: Any) -> None:
        config.get_settings()["tm.activate_hook"] = lambda request: False
        route(config, "/", lambda request: {"x": request.session.get("x")})

    app = apps(setup)
    with pytest.raises(ConfigError, match="outside pyramid_tm"):
        app.get("/")


def test_an_app_inside_a_session_publisher_is_refused(apps, caplog):
    import webtest

    app = apps(counter_app)
    wrapped = webtest.TestApp(SessionPublisher(app.app, db_of(app)))
    assert wrapped.get("/count", expect_errors=True).status_int == 500
    assert "would manage a second transaction" in caplog.text
    assert wrapped.cookies == {}


def test_a_session_first_used_after_the_transaction_is_refused(apps):
    from pyramid.events import NewResponse

    def setup(config: Any) -> None:
        def late(event: Any) -> None:
            event.response.headers["X-Count"] = str(event.request.session.get("n"))

        config.add_subscriber(late, NewResponse)
        route(config, "/", lambda request: {})

    with pytest.raises(ConfigError, match="after it ended"):
        apps(setup).get("/")


def test_ini_settings_reach_the_manager_and_the_cookie(apps):
    app = apps(counter_app, {"zodbsession.idle_timeout": "600", "zodbsession.max_lifetime": "3600",
                             "zodbsession.cookie_name": "shop", "zodbsession.samesite": "Strict",
                             "zodbsession.httponly": "false", "zodbsession.access_resolution": "5"})
    sessions = app.registry.zodbsession
    assert (sessions.manager.idle_timeout, sessions.manager.max_lifetime) == (600.0, 3600.0)
    assert sessions.manager.access_resolution == 5.0
    (header,) = set_cookies(app.get("/count"))
    assert header.startswith("shop=") and "SameSite=Strict" in header and "HttpOnly" not in header


@pytest.mark.parametrize(("key", "value", "message"), [
    ("zodbsession.idle_timeout", "soon", "must be a number"),
    ("zodbsession.max_lifetime", "60", "at least zodbsession.idle_timeout"),
    ("zodbsession.samesite", "Sometimes", "one of"),
    ("zodbsession.cookie_name", "a b", "cookie token"),
    ("zodbsession.uri", "nope://x", "unknown storage scheme"),
    ("zodbsession.secure", "maybe", "true or false"),
], ids=["type", "rule", "choice", "cookie-name", "uri", "bool"])
def test_a_bad_ini_value_is_refused_naming_the_ini_key(apps, key, value, message):
    with pytest.raises(ConfigError, match=message) as caught:
        apps(counter_app, {key: value})
    assert caught.value.key == key
    assert value in str(caught.value)


def test_a_misspelt_ini_key_is_refused_with_a_suggestion(apps):
    with pytest.raises(ConfigError, match="did you mean 'zodbsession.idle_timeout'") as caught:
        apps(counter_app, {"zodbsession.idle_timout": "600"})
    assert caught.value.key == "zodbsession.idle_timout"


def refusal(caught: pytest.ExceptionInfo) -> ConfigError:
    """The ``ConfigError`` a configuration action raised (Pyramid wraps those)."""
    assert isinstance(caught.value, ConfigurationExecutionError)
    assert isinstance(caught.value.evalue, ConfigError)
    return caught.value.evalue


def test_no_database_at_all_is_refused(apps):
    with pytest.raises(ConfigurationExecutionError) as caught:
        apps(counter_app, {"zodbsession.uri": None})
    assert str(refusal(caught)).startswith("zodbsession.uri: is not set")


def test_zodbsession_uri_beside_pyramid_zodbconn_is_refused(apps):
    with pytest.raises(ConfigurationExecutionError) as caught:
        apps(counter_app, {"zodbsession.uri": "memory://"}, mode="zodbconn")
    assert "pyramid_zodbconn is configured" in str(refusal(caught))


def test_a_database_name_pyramid_zodbconn_lacks_is_refused(apps):
    with pytest.raises(ConfigurationExecutionError) as caught:
        apps(counter_app, {"zodbsession.database": "sessions"}, mode="zodbconn")
    assert refusal(caught).key == "zodbsession.database"


def test_a_database_name_without_pyramid_zodbconn_is_refused(apps):
    with pytest.raises(ConfigurationExecutionError) as caught:
        apps(counter_app, {"zodbsession.database": "sessions"})
    assert refusal(caught).key == "zodbsession.database"
    assert "zodbsession.sessions_uri" in str(refusal(caught))


def test_typed_python_settings_are_accepted_too(apps):
    app = apps(counter_app, {"zodbsession.idle_timeout": 600, "zodbsession.httponly": False})
    assert app.registry.zodbsession.manager.idle_timeout == 600.0
    assert "HttpOnly" not in set_cookies(app.get("/count"))[0]


def test_sessions_uri_keeps_the_sessions_in_a_database_of_their_own(apps):
    app = apps(counter_app, {"zodbsession.sessions_uri": "memory://sessions"})
    assert app.get("/count").json == {"n": 1}
    db = db_of(app)
    with db.transaction() as connection:
        assert len(connection.root()) == 0
        assert len(connection.get_connection("sessions").root()) == 1
    assert app.get("/count").json == {"n": 2}


def test_sessions_can_live_in_a_named_zodbconn_database(apps):
    app = apps(counter_app, {"zodbconn.uri.sessions": "memory://", "zodbsession.database": "sessions"},
               mode="zodbconn")
    app.get("/count")
    main = db_of(app)
    with main.transaction() as connection:
        assert "zodbsession" not in str(list(connection.root().keys()))
        sessions_root = connection.get_connection("sessions").root()
        assert len(sessions_root) == 1
    assert app.get("/count").json == {"n": 2}


def test_the_janitor_runs_with_the_application(apps):
    app = apps(counter_app, {"zodbsession.janitor_interval": "3600"})
    janitor = app.registry.zodbsession.janitor
    assert janitor is not None and janitor.interval == 3600


def test_pyramid_tm_and_retry_included_by_the_app_too_are_set_up_once(apps):
    app = apps(counter_app, include_first=("pyramid_tm", "pyramid_retry"))
    assert app.get("/count").json == {"n": 1}
    assert app.get("/count").json == {"n": 2}
