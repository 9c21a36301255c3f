"""The publisher on a multi-database: sessions in their own file, one transaction for both."""

from __future__ import annotations

import pytest
import webtest

from zodbsession import SessionManager, SessionPublisher, open_db
from zodbsession.core.db import SESSIONS_DATABASE
from zodbsession.core.store import ROOT_KEY


def counting_app(environ, start_response):
    """Increments a session counter and an application counter; /fail then raises."""
    session = environ["zodbsession.session"]
    root = environ["zodbsession.connection"].root()
    session["n"] = session.get("n", 0) + 1
    root["app_count"] = root.get("app_count", 0) + 1
    if environ["PATH_INFO"] == "/fail":
        raise RuntimeError("fail after writing both databases")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(session["n"]).encode()]


@pytest.fixture
def multidb(tmp_path):
    db = open_db(f"file://{tmp_path}/Data.fs", sessions_uri=f"file://{tmp_path}/Sessions.fs")
    yield db
    db.close()


@pytest.fixture
def app(multidb):
    manager = SessionManager(database=SESSIONS_DATABASE)
    return webtest.TestApp(SessionPublisher(counting_app, multidb, manager=manager))


def read_both(db):
    with db.transaction() as conn:
        sessions_root = conn.get_connection(SESSIONS_DATABASE).root()
        container = sessions_root.get(ROOT_KEY)
        counts = [s["n"] for s in container.sessions.values()] if container is not None else []
        return conn.root().get("app_count"), counts, ROOT_KEY in conn.root()


def test_sessions_are_stored_in_their_own_database(app, multidb):
    app.get("/")
    app.get("/")
    app_count, session_counts, container_in_main = read_both(multidb)
    assert app_count == 2
    assert session_counts == [2]
    assert not container_in_main


def test_failed_request_rolls_back_both_databases(app, multidb):
    app.get("/")
    app.get("/fail", status=500)
    app_count, session_counts, _ = read_both(multidb)
    assert (app_count, session_counts) == (1, [1])


def test_sessions_file_grows_and_main_file_does_not_on_session_only_writes(tmp_path, multidb):
    def session_only(environ, start_response):
        environ["zodbsession.session"]["n"] = environ["zodbsession.session"].get("n", 0) + 1
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    publisher = SessionPublisher(session_only, multidb,
                                 manager=SessionManager(database=SESSIONS_DATABASE))
    client = webtest.TestApp(publisher)
    client.get("/")
    main_size = (tmp_path / "Data.fs").stat().st_size
    sessions_size = (tmp_path / "Sessions.fs").stat().st_size
    for _ in range(5):
        client.get("/")
    assert (tmp_path / "Data.fs").stat().st_size == main_size
    assert (tmp_path / "Sessions.fs").stat().st_size > sessions_size
