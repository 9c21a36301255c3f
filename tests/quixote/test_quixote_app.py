"""``make_app``'s contract with Quixote's one publisher per process, and with a database to come."""

from __future__ import annotations

import io

import pytest
import quixote
from quixotekit import Site

from zodbsession import ConfigError
from zodbsession.quixote import ThreadSafePublisher, make_app


def environ(path: str = "/") -> dict:
    return {"REQUEST_METHOD": "GET", "PATH_INFO": path, "SCRIPT_NAME": "", "QUERY_STRING": "",
            "SERVER_NAME": "localhost", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.input": io.BytesIO(), "wsgi.url_scheme": "http", "wsgi.errors": io.StringIO()}


def test_a_second_make_app_is_refused_until_the_first_app_is_closed(database):
    first = make_app(Site(database), database)
    try:
        with pytest.raises(RuntimeError, match="one Publisher per process"):
            make_app(Site(database), database)
        assert isinstance(quixote.get_publisher(), ThreadSafePublisher)
    finally:
        first.close()
    assert quixote.get_publisher() is None
    make_app(Site(database), database).close()


def test_an_app_without_a_database_serves_only_inside_a_zodbsession_publisher(database):
    app = make_app(Site(database), None)
    try:
        with pytest.raises(ConfigError, match="only inside zodbsession serve"):
            app(environ(), lambda status, headers: None)
    finally:
        app.close()


def test_a_database_named_by_uri_is_opened_on_the_first_request_and_closed_with_the_app(tmp_path):
    uri = f"file://{tmp_path}/Data.fs"
    app = make_app(Site(None), uri)  # type: ignore[arg-type]  # this site's views need no db
    try:
        assert not (tmp_path / "Data.fs").exists()
        answers = []
        body = b"".join(app(environ(), lambda status, headers: answers.append(status)))
        assert (answers, body) == (["200 OK"], b"n=0 notes=0")
        assert (tmp_path / "Data.fs").exists()
    finally:
        app.close()
