"""One Flask app under ``zodbsession serve`` and under waitress: one cookie, one database.

Under ``serve`` the server's publisher runs the request and the extension
joins it; the server used to apply its own ``[cookie]`` and ``[storage]``
settings, so that moving the app between servers logged everyone out and
used another file, with ``app.config["ZODBSESSION_URI"]`` silently ignored.
Now the app's own settings win, and one line at start-up says so.
"""

from __future__ import annotations

import textwrap

from serverproc import Client, ServerProcess
from wsgiproc import WSGIProcess

APP = textwrap.dedent('''
    from flask import Flask, session
    from zodbsession.flask import ZODBSession

    app = Flask(__name__)
    app.config["ZODBSESSION_URI"] = "file://shop.fs"
    ZODBSession(app)

    @app.get("/visit")
    def visit():
        session["n"] = session.get("n", 0) + 1
        return str(session["n"])
''')


def visit(client: Client) -> str:
    status, _headers, body = client.request("GET", "/visit")
    assert status == 200, body
    return body.decode()


def test_moving_between_serve_and_waitress_keeps_the_cookie_and_the_database(tmp_path):
    (tmp_path / "flaskapp.py").write_text(APP)
    with ServerProcess(tmp_path, {}, "--app", "flaskapp:app") as server:
        browser = Client(server.url)
        assert [visit(browser), visit(browser)] == ["1", "2"]
    assert [cookie.name for cookie in browser.jar] == ["session"]  # Flask's SESSION_COOKIE_NAME
    log = server.log()
    assert "the Flask app's own settings win over zodbsession's" in log
    assert "ZODBSESSION_URI 'file://shop.fs' over storage.uri 'file://var/Data.fs'" in log
    assert "SESSION_COOKIE_NAME 'session' over cookie.name 'zodbsession'" in log
    assert (tmp_path / "shop.fs").exists() and not (tmp_path / "var" / "Data.fs").exists()

    with WSGIProcess(tmp_path, "flaskapp:app") as waitress:
        browser.base_url = waitress.url  # the same browser: its cookie ignores the port
        assert visit(browser) == "3", "the same session, in the same database"
    with ServerProcess(tmp_path, {}, "--app", "flaskapp:app") as server:
        browser.base_url = server.url
        assert visit(browser) == "4"


def test_settings_that_agree_are_not_mentioned(tmp_path):
    (tmp_path / "flaskapp.py").write_text(APP)
    env = {"ZODBSESSION_STORAGE_URI": "file://shop.fs", "ZODBSESSION_COOKIE_NAME": "session",
           "ZODBSESSION_COOKIE_SAMESITE": ""}  # Flask's default: no SameSite attribute
    with ServerProcess(tmp_path, env, "--app", "flaskapp:app") as server:
        assert visit(Client(server.url)) == "1"
    assert "win over zodbsession's" not in server.log()
