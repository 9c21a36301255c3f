"""``zodbsession.pyramid``: ``request.session`` is an ISession on pyramid_tm's transaction.

Real Pyramid applications through WebTest, on real in-memory ZODB databases.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from persistent.mapping import PersistentMapping
from pyramid.csrf import SessionCSRFStoragePolicy, check_csrf_token
from pyramid.exceptions import BadCSRFToken, ConfigurationExecutionError
from pyramid.interfaces import ISession
from pyramid.request import Request
from pyramid.response import Response
from zope.interface.verify import verifyObject

from pyramidkit import MODES, apps_fixture, db_of, route, set_cookies
from zodbsession import SessionPublisher, UnstorableSessionValue, current_session
from zodbsession.errors import ConfigError
from zodbsession.pyramid import PyramidSession, get_connection

apps = pytest.fixture(apps_fixture)


def counter_app(config: Any) -> None:
    """``/count`` adds one to a session counter; ``/peek`` reads it; ``/boom`` adds one and raises."""

    def count(request: Request) -> dict[str, Any]:
        request.session["n"] = request.session.get("n", 0) + 1
        return {"n": request.session["n"]}

    def peek(request: Request) -> dict[str, Any]:
        return {"n": request.session.get("n"), "new": request.session.new}

    def boom(request: Request) -> None:
        request.session["n"] = request.session.get("n", 0) + 1
        raise RuntimeError("boom")

    route(config, "/count", count)
    route(config, "/peek", peek)
    route(config, "/boom", boom)


# -- the ISession -------------------------------------------------------------------


def test_request_session_provides_all_of_isession(apps):
    seen = {}

    def view(request: Request) -> dict[str, Any]:
        seen["ok"] = verifyObject(ISession, request.session)
        seen["type"] = type(request.session)
        return {}

    apps(lambda config: route(config, "/", view)).get("/")
    assert seen == {"ok": True, "type": PyramidSession}


@pytest.mark.parametrize("mode", list(MODES), ids=list(MODES))
def test_session_is_kept_across_requests_by_its_cookie(apps, mode):
    app = apps(counter_app, mode=mode)
    first = app.get("/count")
    assert first.json == {"n": 1}
    assert len(set_cookies(first)) == 1
    second = app.get("/count")
    assert second.json == {"n": 2}
    assert set_cookies(second) == []  # the id did not change: nothing to tell the client


def test_reading_a_session_writes_nothing_and_sends_no_cookie(apps):
    app = apps(counter_app)
    response = app.get("/peek")
    assert response.json == {"n": None, "new": True}
    assert set_cookies(response) == []
    assert app.get("/peek").json == {"n": None, "new": True}


def test_new_and_created_describe_the_session(apps):
    seen: list[tuple[bool, float]] = []

    def view(request: Request) -> dict[str, Any]:
        request.session["x"] = 1
        seen.append((request.session.new, request.session.created))
        return {}

    app = apps(lambda config: route(config, "/", view))
    app.get("/")
    app.get("/")
    (new1, created1), (new2, created2) = seen
    assert (new1, new2) == (True, False)
    assert created1 == created2 > 0


def test_a_value_mutated_in_place_is_stored_marked_or_not(apps):
    def setup(config: Any) -> None:
        def start(request: Request) -> dict[str, Any]:
            request.session["cart"] = []
            return {}

        def append(request: Request) -> dict[str, Any]:
            request.session["cart"].append(request.params["item"])
            if "changed" in request.params:
                request.session.changed()
            return {}

        def show(request: Request) -> dict[str, Any]:
            return {"cart": request.session["cart"]}

        route(config, "/start", start)
        route(config, "/append", append)
        route(config, "/show", show)

    app = apps(setup)
    app.get("/start")
    app.get("/append", {"item": "marked", "changed": "1"})
    app.get("/append", {"item": "found"})  # not marked: the commit's settle() finds and saves it
    db_of(app).cacheMinimize()  # the next request reads what was committed, not a cached object
    assert app.get("/show").json == {"cart": ["marked", "found"]}


def test_flash_queues_keep_messages_until_popped(apps):
    def setup(config: Any) -> None:
        def add(request: Request) -> dict[str, Any]:
            session = request.session
            session.flash("saved")
            session.flash("saved", allow_duplicate=False)
            session.flash("careful", queue="warning")
            session.flash("careful", queue="warning")
            return {}

        def read(request: Request) -> dict[str, Any]:
            session = request.session
            return {"peek": session.peek_flash(), "pop": session.pop_flash(),
                    "warning": session.pop_flash("warning"), "after": session.peek_flash(),
                    "empty": session.pop_flash("none")}

        route(config, "/add", add)
        route(config, "/read", read)

    app = apps(setup)
    app.get("/add")
    assert app.get("/read").json == {"peek": ["saved"], "pop": ["saved"],
                                     "warning": ["careful", "careful"], "after": [], "empty": []}
    assert app.get("/read").json["pop"] == []


# -- CSRF -------------------------------------------------------------------------------


def csrf_app(policy: Any = None) -> Any:
    def setup(config: Any) -> None:
        if policy is not None:
            config.set_csrf_storage_policy(policy)
        config.set_default_csrf_options(require_csrf=True)

        def token(request: Request) -> dict[str, Any]:
            return {"token": request.session.get_csrf_token()}

        def post(request: Request) -> dict[str, Any]:
            return {"ok": True}

        def rotate(request: Request) -> dict[str, Any]:
            return {"token": request.session.new_csrf_token()}

        route(config, "/token", token)
        route(config, "/post", post, request_method="POST")
        route(config, "/rotate", rotate)

    return setup


POLICIES = {"legacy-default": None, "session-policy": SessionCSRFStoragePolicy()}


@pytest.mark.parametrize("policy", list(POLICIES.values()), ids=list(POLICIES))
def test_pyramid_checks_the_session_csrf_token(apps, policy):
    app = apps(csrf_app(policy))
    token = app.get("/token").json["token"]
    assert app.get("/token").json["token"] == token  # stable across requests
    assert app.post("/post", {"csrf_token": token}).json == {"ok": True}
    assert app.post("/post", {}, headers={"X-CSRF-Token": token}).json == {"ok": True}
    assert app.post("/post", {"csrf_token": "forged"}, expect_errors=True).status_int == 400
    fresh = app.get("/rotate").json["token"]
    assert fresh != token
    assert app.post("/post", {"csrf_token": token}, expect_errors=True).status_int == 400
    assert app.post("/post", {"csrf_token": fresh}).json == {"ok": True}


def test_check_csrf_token_accepts_the_session_token_only(apps):
    seen = {}

    def view(request: Request) -> dict[str, Any]:
        token = request.session.get_csrf_token()
        request.POST["csrf_token"] = token
        seen["good"] = check_csrf_token(request)
        request.POST["csrf_token"] = token + "x"
        seen["bad"] = check_csrf_token(request, raises=False)
        with pytest.raises(BadCSRFToken):
            check_csrf_token(request)
        return {}

    apps(lambda config: route(config, "/", view)).post("/")
    assert seen == {"good": True, "bad": False}


# -- login, logout and the cookie ------------------------------------------------------


def login_app(config: Any) -> None:
    def login(request: Request) -> dict[str, Any]:
        before = request.session.get_csrf_token()
        request.session.login(request.params["user"])
        return {"token_before": before, "token_after": request.session.get_csrf_token()}

    def whoami(request: Request) -> dict[str, Any]:
        return {"user": request.session.user_id, "n": request.session.get("n")}

    def logout(request: Request) -> dict[str, Any]:
        request.session.invalidate()
        if "again" in request.params:
            request.session["n"] = "fresh"
        return {}

    def login_then_fail(request: Request) -> None:
        request.session.login(request.params["user"])
        raise RuntimeError("after the login")

    route(config, "/login", login)
    route(config, "/whoami", whoami)
    route(config, "/logout", logout)
    route(config, "/login_then_fail", login_then_fail)
    counter_app(config)


def test_login_rotates_the_session_id_and_the_csrf_token(apps):
    app = apps(login_app)
    app.get("/count")
    before = app.cookies["sid"]
    response = app.get("/login", {"user": "alice"})
    assert len(set_cookies(response)) == 1
    assert app.cookies["sid"] != before
    assert response.json["token_before"] != response.json["token_after"]
    assert app.get("/whoami").json == {"user": "alice", "n": 1}


def test_invalidate_deletes_the_cookie_and_ends_the_session(apps):
    app = apps(login_app)
    app.get("/login", {"user": "alice"})
    old = app.cookies["sid"]
    response = app.get("/logout")
    (header,) = set_cookies(response)
    assert header.startswith("sid=;") and "Max-Age=0" in header
    app.set_cookie("sid", old)  # a client that kept it finds nothing
    assert app.get("/whoami").json == {"user": None, "n": None}


def test_a_session_used_after_invalidate_is_a_new_one(apps):
    app = apps(login_app)
    app.get("/login", {"user": "alice"})
    old = app.cookies["sid"]
    app.get("/logout", {"again": "1"})
    assert app.cookies["sid"] != old
    assert app.get("/whoami").json == {"user": None, "n": "fresh"}


def test_an_exception_rolls_the_session_back_and_sends_no_cookie(apps):
    app = apps(counter_app)
    app.get("/count")
    with pytest.raises(RuntimeError):
        app.get("/boom")
    assert app.get("/peek").json == {"n": 1, "new": False}
    fresh = apps(counter_app)
    with pytest.raises(RuntimeError):
        fresh.get("/boom")
    assert fresh.cookies == {}


def test_a_failed_login_keeps_the_old_cookie_and_user(apps):
    app = apps(login_app)
    app.get("/count")
    before = app.cookies["sid"]
    with pytest.raises(RuntimeError):
        app.get("/login_then_fail", {"user": "mallory"})
    assert app.cookies["sid"] == before
    assert app.get("/whoami").json == {"user": None, "n": 1}


def test_a_doomed_transaction_keeps_nothing(apps):
    def doomed(request: Request) -> dict[str, Any]:
        request.session["x"] = 1
        request.tm.doom()
        return {}

    app = apps(lambda config: route(config, "/", doomed))
    assert set_cookies(app.get("/")) == []
    assert app.cookies == {}


def test_an_unstorable_value_aborts_naming_its_key(apps):
    def view(request: Request) -> dict[str, Any]:
        request.session["callback"] = lambda: None
        return {}

    app = apps(lambda config: route(config, "/", view))
    with pytest.raises(UnstorableSessionValue, match="callback"):
        app.get("/")
    assert app.cookies == {}


def test_a_persistent_cookie_carries_max_age(apps):
    app = apps(counter_app, {"zodbsession.persistent": "true", "zodbsession.max_lifetime": "7200",
                             "zodbsession.secure": "true"})
    (header,) = set_cookies(app.get("/count", extra_environ={"wsgi.url_scheme": "https"}))
    assert "Max-Age=7200" in header and "Secure" in header


# -- the request's transaction: session and app data together ------------------------


def data_app(config: Any) -> None:
    def write(request: Request) -> dict[str, Any]:
        root = get_connection(request).root()
        root.setdefault("log", PersistentMapping())[request.params["key"]] = True
        request.session[request.params["key"]] = True
        if "fail" in request.params:
            raise RuntimeError("fail")
        return {}

    def read(request: Request) -> dict[str, Any]:
        root = get_connection(request).root()
        return {"app": sorted(root.get("log", {})), "session": sorted(request.session)}

    route(config, "/write", write)
    route(config, "/read", read)


@pytest.mark.parametrize("mode", list(MODES), ids=list(MODES))
def test_session_and_app_data_commit_and_abort_together(apps, mode):
    app = apps(data_app, mode=mode)
    app.get("/write", {"key": "a"})
    with pytest.raises(RuntimeError):
        app.get("/write", {"key": "b", "fail": "1"})
    assert app.get("/read").json == {"app": ["a"], "session": ["a"]}


def test_the_connection_is_pyramid_zodbconns_when_configured(apps):
    import pyramid_zodbconn

    seen = {}

    def view(request: Request) -> dict[str, Any]:
        request.session["x"] = 1
        seen["same"] = get_connection(request) is pyramid_zodbconn.get_connection(request)
        seen["tm"] = get_connection(request).transaction_manager is request.tm
        return {}

    apps(lambda config: route(config, "/", view), mode="zodbconn").get("/")
    assert seen == {"same": True, "tm": True}


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


def test_current_session_is_the_requests_session(apps):
    seen = {}

    def view(request: Request) -> dict[str, Any]:
        request.session["x"] = 1
        seen["x"] = current_session["x"]
        return {}

    apps(lambda config: route(config, "/", view)).get("/")
    assert seen == {"x": 1}


def test_pyramid_tm_and_retry_included_by_the_app_too_are_set_up_once(apps):
    app = apps(counter_app, include_first=("pyramid_tm", "pyramid_retry"))
    assert app.get("/count").json == {"n": 1}
    assert app.get("/count").json == {"n": 2}


def test_the_janitor_runs_with_the_application(apps):
    app = apps(counter_app, {"zodbsession.janitor_interval": "3600"})
    janitor = app.registry.zodbsession.janitor
    assert janitor is not None and janitor.interval == 3600


# -- refusals ----------------------------------------------------------------------------


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


# -- settings ----------------------------------------------------------------------------


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


def test_typed_python_settings_are_accepted_too(apps):
    app = apps(counter_app, {"zodbsession.idle_timeout": 600, "zodbsession.httponly": False})
    assert app.registry.zodbsession.manager.idle_timeout == 600.0
    assert "HttpOnly" not in set_cookies(app.get("/count"))[0]


def test_views_returning_plain_responses_get_the_cookie(apps):
    def view(request: Request) -> Response:
        request.session["x"] = 1
        return Response("ok")

    app = apps(lambda config: route(config, "/", view, renderer=None))
    assert len(set_cookies(app.get("/"))) == 1


def test_remember_me_sets_the_cookies_max_age(apps):
    def remember(request: Request) -> dict[str, Any]:
        request.session["x"] = 1
        request.session.set_expiry(int(request.params["seconds"]))
        return {"age": request.session.get_expiry_age(),
                "browser": request.session.get_expire_at_browser_close()}

    app = apps(lambda config: route(config, "/remember", remember))
    response = app.get("/remember", {"seconds": "3600"})
    assert response.json == {"age": 3600, "browser": False}
    (header,) = set_cookies(response)
    # An idle timeout of its own: the cookie outlives the whole possible session (the core's rule).
    max_age = re.search(r"Max-Age=(\d+)", header)
    assert max_age is not None and int(max_age.group(1)) > 3600
    response = app.get("/remember", {"seconds": "0"})
    assert response.json["browser"] is True
    (header,) = set_cookies(response)
    assert "Max-Age" not in header


def test_a_stale_cookie_before_the_live_one_does_not_hide_it(apps):
    app = apps(counter_app)
    app.get("/count")
    live = app.cookies["sid"]
    app.cookies.clear()
    stale = "A" * 43
    response = app.get("/count", headers={"Cookie": f"sid={stale}; sid={live}"})
    assert response.json == {"n": 2}


def test_the_scopes_hooks_run_on_pyramid_tms_transaction_and_the_cookie_follows_them(apps):
    from zodbsession import registry

    events: list[str] = []

    def view(request: Request) -> dict[str, Any]:
        request.session.get("x")  # the scope exists once the session has been used
        scope = registry()
        scope.before_commit(request.session.login, "late")  # after the view: the cookie must follow
        scope.after_commit(events.append, "committed")
        scope.after_abort(events.append, "aborted")
        if "fail" in request.params:
            raise RuntimeError("fail")
        return {}

    def whoami(request: Request) -> dict[str, Any]:
        return {"user": request.session.user_id}

    def setup(config: Any) -> None:
        route(config, "/", view)
        route(config, "/whoami", whoami)

    app = apps(setup)
    with pytest.raises(RuntimeError):
        app.get("/", {"fail": "1"})
    assert events == ["aborted"] and app.cookies == {}
    assert len(set_cookies(app.get("/"))) == 1
    assert events == ["aborted", "committed"]
    assert app.get("/whoami").json == {"user": "late"}


def test_a_response_that_used_the_session_varies_by_cookie(apps):
    def setup(config: Any) -> None:
        counter_app(config)
        route(config, "/plain", lambda request: {"hello": "world"})

    app = apps(setup)
    assert app.get("/peek").headers.get("Vary") == "Cookie"
    assert app.get("/count").headers.get("Vary") == "Cookie"
    assert "Vary" not in app.get("/plain").headers


class SessionSecurityPolicy:
    """A Pyramid 2 security policy keeping the user id in the session, as Pyramid's docs show."""

    def __init__(self) -> None:
        from pyramid.authentication import SessionAuthenticationHelper

        self.helper = SessionAuthenticationHelper()

    def identity(self, request: Request) -> Any:
        return self.helper.authenticated_userid(request)

    def authenticated_userid(self, request: Request) -> Any:
        return self.helper.authenticated_userid(request)

    def permits(self, request: Request, context: Any, permission: str) -> bool:
        return self.identity(request) is not None

    def remember(self, request: Request, userid: str, **kw: Any) -> list:
        return self.helper.remember(request, userid, **kw)

    def forget(self, request: Request, **kw: Any) -> list:
        return self.helper.forget(request, **kw)


def test_pyramids_session_authentication_works_with_a_rotated_login(apps):
    from pyramid.security import forget, remember

    def login(request: Request) -> dict[str, Any]:
        request.session.login(request.params["user"])  # a new id: no session fixation
        remember(request, request.params["user"])
        return {}

    def me(request: Request) -> dict[str, Any]:
        return {"userid": request.authenticated_userid, "user_id": request.session.user_id}

    def logout(request: Request) -> dict[str, Any]:
        forget(request)
        request.session.invalidate()
        return {}

    def setup(config: Any) -> None:
        config.set_security_policy(SessionSecurityPolicy())
        route(config, "/login", login)
        route(config, "/me", me)
        route(config, "/secret", lambda request: {"secret": 42}, permission="view")
        route(config, "/logout", logout)

    app = apps(setup)  # pyramid_tm asks for authenticated_userid before the view: inside its transaction
    assert app.get("/secret", expect_errors=True).status_int == 403
    app.get("/login", {"user": "alice"})
    assert app.get("/me").json == {"userid": "alice", "user_id": "alice"}
    assert app.get("/secret").json == {"secret": 42}
    app.get("/logout")
    assert app.get("/me").json == {"userid": None, "user_id": None}


@pytest.mark.parametrize("mode", list(MODES), ids=list(MODES))
def test_forget_changes_starts_over_in_a_new_transaction_that_pyramid_tm_commits(apps, mode):
    def redo(request: Request) -> dict[str, Any]:
        root = get_connection(request).root()
        root["app"] = "forgotten"
        request.session["first"] = True
        request.session.forget_changes()  # aborts both; the request goes on in a new transaction
        root = get_connection(request).root()
        root["later"] = "kept"
        request.session["second"] = True
        return {}

    def show(request: Request) -> dict[str, Any]:
        root = get_connection(request).root()
        return {"session": sorted(request.session), "app": root.get("app"), "later": root.get("later")}

    def setup(config: Any) -> None:
        route(config, "/redo", redo)
        route(config, "/show", show)

    app = apps(setup, mode=mode)
    assert len(set_cookies(app.get("/redo"))) == 1  # decided by the second transaction's commit
    assert app.get("/show").json == {"session": ["second"], "app": None, "later": "kept"}


def test_a_session_first_used_after_the_transaction_is_refused(apps):
    from pyramid.events import NewResponse

    def setup(config: Any) -> None:
        def late(event: Any) -> None:
            event.response.headers["X-Count"] = str(event.request.session.get("n"))

        config.add_subscriber(late, NewResponse)
        route(config, "/", lambda request: {})

    with pytest.raises(ConfigError, match="after it ended"):
        apps(setup).get("/")


@pytest.mark.parametrize(("veto", "kept"), [(None, False), ("pyramid_tm.default_commit_veto", True)],
                         ids=["no-veto", "default-veto"])
def test_a_raised_redirect_keeps_the_flash_only_with_a_commit_veto(apps, veto, kept):
    """pyramid_tm aborts when an exception view answered, unless a commit veto decides by status."""
    from pyramid.httpexceptions import HTTPSeeOther

    def save(request: Request) -> None:
        request.session.flash("saved")
        raise HTTPSeeOther("/read")

    def read(request: Request) -> dict[str, Any]:
        return {"flash": request.session.pop_flash()}

    def setup(config: Any) -> None:
        route(config, "/save", save)
        route(config, "/read", read)

    app = apps(setup, {"tm.commit_veto": veto} if veto else {})
    assert app.get("/save").status_int == 303
    assert app.get("/read").json == {"flash": ["saved"] if kept else []}


def test_a_database_name_without_pyramid_zodbconn_is_refused(apps):
    with pytest.raises(ConfigurationExecutionError) as caught:
        apps(counter_app, {"zodbsession.database": "sessions"})
    assert refusal(caught).key == "zodbsession.database"
    assert "zodbsession.sessions_uri" in str(refusal(caught))


def test_sessions_uri_keeps_the_sessions_in_a_database_of_their_own(apps):
    app = apps(counter_app, {"zodbsession.sessions_uri": "memory://sessions"})
    assert app.get("/count").json == {"n": 1}
    db = db_of(app)
    with db.transaction() as connection:
        assert len(connection.root()) == 0
        assert len(connection.get_connection("sessions").root()) == 1
    assert app.get("/count").json == {"n": 2}
