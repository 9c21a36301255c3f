"""``zodbsession.pyramid``: the session, the app's ZODB data and the cookie follow pyramid_tm's transaction.

Real Pyramid applications through WebTest, on real in-memory ZODB databases.
"""

from __future__ import annotations

from typing import Any

import pytest
from persistent.mapping import PersistentMapping
from pyramid.request import Request
from pyramidkit import MODES, apps_fixture, counter_app, login_app, route, set_cookies

from zodbsession import UnstorableSessionValue, current_session
from zodbsession.pyramid import get_connection

apps = pytest.fixture(apps_fixture)


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


def test_current_session_is_the_requests_session(apps):
    seen = {}

    def view(request: Request) -> dict[str, Any]:
        request.session["x"] = 1
        seen["x"] = current_session["x"]
        return {}

    apps(lambda config: route(config, "/", view)).get("/")
    assert seen == {"x": 1}


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
