"""A Flask application for the zodbsession.flask tests: views that use the session and the root together."""

from __future__ import annotations

import transaction
from flask import Flask, abort, flash, get_flashed_messages, redirect, request, session
from persistent.mapping import PersistentMapping
from ZODB import DB
from ZODB.POSException import ConflictError

from zodbsession import PublishError, Redirect, SessionManager
from zodbsession.flask import ZODBSession, connection, root


def make_app(db: DB | None = None, *, testing: bool = False, manager: SessionManager | None = None,
             **config: object) -> Flask:
    """An app whose views touch the session and the database root together.

    Without *db* it is meant for ``zodbsession serve``, whose database it uses.
    """
    app = Flask(__name__)
    app.config.update(TESTING=testing, **config)
    ZODBSession(app, db, manager=manager)
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

    @app.post("/seed")
    def seed() -> str:
        root()["counter"] = PersistentMapping(n=0)
        return "seeded"

    @app.post("/bump")
    def bump() -> str:
        app.attempts.append(request.environ["zodbsession.attempt"])  # type: ignore[attr-defined]
        counter = root()["counter"]
        counter["n"]  # loaded in this attempt's snapshot
        if request.environ["zodbsession.attempt"] == 1:
            commit_elsewhere(connection().db(), _add_hundred)
        counter["n"] += 1
        session["bumps"] = session.get("bumps", 0) + 1
        return str(counter["n"])

    @app.get("/conflict-in-view")
    def conflict_in_view() -> str:
        app.attempts.append(request.environ["zodbsession.attempt"])  # type: ignore[attr-defined]
        session["tries"] = len(app.attempts)  # type: ignore[attr-defined]
        if request.environ["zodbsession.attempt"] == 1:
            raise ConflictError("forced in the view")
        return "after the retry"

    return app


def _add_hundred(root: dict) -> None:
    root["counter"]["n"] += 100


def commit_elsewhere(db: DB, change) -> None:
    """Commit *change* to the root from a second connection, with a manager of its own."""
    tm = transaction.TransactionManager(explicit=True)
    other = db.open(transaction_manager=tm)
    try:
        tm.begin()
        change(other.root())
        tm.commit()
    finally:
        other.close()


def root_value(db: DB, key: str) -> object:
    with db.transaction() as conn:
        return conn.root().get(key, "-")


def set_cookies(response) -> list[str]:
    """The Set-Cookie headers of a test client response."""
    return response.headers.getlist("Set-Cookie")


#: The same views for ``zodbsession serve --app flaskkit:served`` (tests/ on PYTHONPATH).
served = make_app()
