"""``zodbsession.pyramid``: ``request.session`` is an ISession on pyramid_tm's transaction.

Real Pyramid applications through WebTest, on real in-memory ZODB databases.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from pyramid.csrf import SessionCSRFStoragePolicy, check_csrf_token
from pyramid.exceptions import BadCSRFToken
from pyramid.interfaces import ISession
from pyramid.request import Request
from pyramid.response import Response
from pyramidkit import MODES, apps_fixture, counter_app, db_of, login_app, route, set_cookies
from zope.interface.verify import verifyObject

from zodbsession.pyramid import PyramidSession

apps = pytest.fixture(apps_fixture)




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


def test_a_persistent_cookie_carries_max_age(apps):
    app = apps(counter_app, {"zodbsession.persistent": "true", "zodbsession.max_lifetime": "7200",
                             "zodbsession.secure": "true"})
    (header,) = set_cookies(app.get("/count", extra_environ={"wsgi.url_scheme": "https"}))
    assert "Max-Age=7200" in header and "Secure" in header


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
