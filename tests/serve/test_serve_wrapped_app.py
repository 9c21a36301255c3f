"""``serve --app 'mymodule:make_application()'`` with the README's factory, which wraps the app itself.

The factory opens ``var/Data.fs`` and returns a ``SessionPublisher``; serve
then failed to open the same file with "var/Data.fs is in use by another
process" (the other process being itself). Now it says in one line what it
got and what to pass instead, and the bare app under the same name works.
"""

from __future__ import annotations

import textwrap
import urllib.request

import pytest
from serverproc import ServerProcess, free_port, run_cli

MYMODULE = textwrap.dedent('''
    from zodbsession import Redirect, SessionManager, SessionPublisher, open_db

    def app(environ, start_response):
        session = environ["zodbsession.session"]
        if environ["REQUEST_METHOD"] == "POST":
            session["count"] = session.get("count", 0) + 1
            raise Redirect("/")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"count: {session.get('count', 0)}".encode()]

    def make_application():
        db = open_db("file://var/Data.fs")
        return SessionPublisher(app, db, manager=SessionManager(idle_timeout=1800))

    async def asgi(scope, receive, send):
        pass

    def make_asgi():
        from zodbsession.asgi import SessionMiddleware
        return SessionMiddleware(asgi, open_db("file://var/Data.fs"))
''')


@pytest.mark.parametrize(("spec", "kind", "hint"), [
    ("mymodule:make_application()", "SessionPublisher", "waitress-serve --call mymodule:make_application"),
    ("mymodule:make_asgi()", "SessionMiddleware", "uvicorn --factory mymodule:make_asgi"),
])
def test_an_already_wrapped_app_is_one_line_saying_what_to_pass(tmp_path, spec, kind, hint):
    (tmp_path / "mymodule.py").write_text(MYMODULE)
    result = run_cli("serve", "--app", spec, "--port", str(free_port()), env={}, cwd=tmp_path)
    assert result.returncode == 2, result
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"zodbsession: server.app: {spec!r} is already a {kind} with a database "
                           "of its own"), result.stderr
    assert "--app mymodule:app" in last and hint in last
    assert "in use by another process" not in result.stderr
    assert "Traceback" not in result.stderr


def test_the_bare_app_of_the_same_module_is_served(tmp_path):
    (tmp_path / "mymodule.py").write_text(MYMODULE)
    with ServerProcess(tmp_path, {}, "--app", "mymodule:app") as server, \
            urllib.request.urlopen(f"{server.url}/", timeout=30) as answer:
        assert answer.read() == b"count: 0"
