"""An in-place change without ``save_changes()`` survives a real server restart.

Within one process ZODB's object cache masks the loss (the changed list is
read back from memory), so only a new process shows whether the change was
stored: the app runs under ``zodbsession serve --app`` on a FileStorage in
the test's directory, is stopped, and started again.
"""

from __future__ import annotations

import textwrap

from serverproc import Client, ServerProcess

CART_APP = textwrap.dedent('''
    import json


    def app(environ, start_response):
        session = environ["zodbsession.session"]
        path = environ["PATH_INFO"]
        if path == "/start":
            session["cart"] = []  # an assignment: marked changed, saved
        elif path.startswith("/add/"):
            session["cart"].append(path[len("/add/"):])  # in place, and no save_changes()
        body = json.dumps({"cart": session.get("cart")}).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]
''')


def test_cart_appended_in_place_survives_a_restart(tmp_path, env):
    (tmp_path / "cartapp.py").write_text(CART_APP)
    env = {**env, "PYTHONPATH": str(tmp_path)}
    with ServerProcess(tmp_path, env, "--app", "cartapp:app") as server:
        client = Client(server.url)
        assert client.json("POST", "/start") == (200, {"cart": []})
        assert client.json("POST", "/add/apple") == (200, {"cart": ["apple"]})
        assert client.json("POST", "/add/pear") == (200, {"cart": ["apple", "pear"]})
    assert server.process.returncode == 0, server.log()
    with ServerProcess(tmp_path, env, "--app", "cartapp:app") as server:
        client.base_url = server.url
        assert client.json("GET", "/") == (200, {"cart": ["apple", "pear"]}), server.log()
