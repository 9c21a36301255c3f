"""One Quixote app under ``zodbsession serve`` and under waitress: one cookie, one database.

Under ``serve`` the server's publisher runs the request and the app joins
it; the server used to apply its own cookie name (``zodbsession``) and
database, so that moving a Quixote app between ``serve`` and waitress logged
everyone out (Quixote's cookie is ``QX_session``). Now the app's own
settings win, and one line at start-up says so.
"""

from __future__ import annotations

import textwrap

from serverproc import Client, ServerProcess
from wsgiproc import WSGIProcess

APP = textwrap.dedent('''
    from quixote import get_session
    from quixote.directory import Directory
    from zodbsession.quixote import make_app

    class Root(Directory):
        _q_exports = ["visit"]

        def visit(self):
            session = get_session()
            session["n"] = session.get("n", 0) + 1
            return str(session["n"])

    app = make_app(Root(), "file://shop.fs")
''')


def visit(client: Client) -> str:
    status, _headers, body = client.request("GET", "/visit")
    assert status == 200, body
    return body.decode()


def test_moving_between_serve_and_waitress_keeps_the_cookie_and_the_database(tmp_path):
    (tmp_path / "qxapp.py").write_text(APP)
    with ServerProcess(tmp_path, {}, "--app", "qxapp:app") as server:
        browser = Client(server.url)
        assert [visit(browser), visit(browser)] == ["1", "2"]
    assert [cookie.name for cookie in browser.jar] == ["QX_session"]
    log = server.log()
    assert "the Quixote app's own settings win over zodbsession's" in log
    assert "make_app's db 'file://shop.fs' over storage.uri 'file://var/Data.fs'" in log
    assert "Quixote's session_cookie_name 'QX_session' over cookie.name 'zodbsession'" in log
    assert (tmp_path / "shop.fs").exists() and not (tmp_path / "var" / "Data.fs").exists()

    with WSGIProcess(tmp_path, "qxapp:app") as waitress:
        browser.base_url = waitress.url  # the same browser: its cookie ignores the port
        assert visit(browser) == "3", "the same session, in the same database"
    with ServerProcess(tmp_path, {}, "--app", "qxapp:app") as server:
        browser.base_url = server.url
        assert visit(browser) == "4"


def test_settings_that_agree_are_not_mentioned(tmp_path):
    (tmp_path / "qxapp.py").write_text(APP)
    env = {"ZODBSESSION_STORAGE_URI": "file://shop.fs", "ZODBSESSION_COOKIE_NAME": "QX_session"}
    with ServerProcess(tmp_path, env, "--app", "qxapp:app") as server:
        assert visit(Client(server.url)) == "1"
    assert "win over zodbsession's" not in server.log()
