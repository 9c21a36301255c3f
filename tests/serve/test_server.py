"""``zodbsession serve`` as a real process on loopback, driven over HTTP."""

from __future__ import annotations

import json
import os
import textwrap
import threading
import time

import pytest
from serverproc import Client, ServerProcess, free_port, run_cli


def test_counter_persists_across_requests_and_restarts(tmp_path, env):
    with ServerProcess(tmp_path, env) as server:
        client = Client(server.url)
        assert client.json("POST", "/api/counter") == (200, {"count": 1})
        assert client.json("POST", "/api/counter") == (200, {"count": 2})
        cookie = client.cookie()
        assert cookie
    assert server.process.returncode == 0, server.log()
    with ServerProcess(tmp_path, env) as server:
        client.base_url = server.url
        assert client.json("POST", "/api/counter") == (200, {"count": 3})
        assert client.cookie() == cookie


def test_failing_request_leaves_no_trace(tmp_path, env):
    with ServerProcess(tmp_path, env) as server:
        client = Client(server.url)
        client.json("POST", "/api/counter")
        status, body = client.json("POST", "/api/fail")
        assert status == 500
        assert "Traceback" not in str(body)
        status, session = client.json("GET", "/api/session")
    assert status == 200
    assert session["data"]["count"] == 1
    assert "aborted" in server.log()


def test_reading_the_session_sets_no_cookie(tmp_path, env):
    with ServerProcess(tmp_path, env) as server:
        client = Client(server.url)
        status, headers, _body = client.request("GET", "/api/session")
    assert status == 200
    assert "Set-Cookie" not in headers


def test_janitor_removes_expired_sessions(tmp_path, env):
    env = {**env, "ZODBSESSION_SESSIONS_IDLE_TIMEOUT": "1",
           "ZODBSESSION_SESSIONS_ACCESS_RESOLUTION": "0",
           "ZODBSESSION_JANITOR_INTERVAL": "0.5"}
    with ServerProcess(tmp_path, env) as server:
        for _ in range(3):
            Client(server.url).json("POST", "/api/counter")
        deadline = time.monotonic() + 40
        while "janitor expired 3 session(s)" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.25)
    assert "janitor expired 3 session(s)" in server.log()
    result = run_cli("stats", "--json", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["stored_sessions"] == 0


def test_sigterm_lets_the_request_in_flight_finish(tmp_path, env):
    (tmp_path / "slowapp.py").write_text(textwrap.dedent('''
        import time

        def app(environ, start_response):
            session = environ["zodbsession.session"]
            session["n"] = session.get("n", 0) + 1
            time.sleep(1.5)
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [str(session["n"]).encode()]
    '''))
    env = {**env, "PYTHONPATH": str(tmp_path)}
    server = ServerProcess(tmp_path, env, "--app", "slowapp:app").start()
    try:
        result = {}
        client = Client(server.url)
        worker = threading.Thread(target=lambda: result.update(r=client.request("GET", "/")))
        worker.start()
        time.sleep(0.5)  # the request is now inside the application
        assert server.stop() == 0
        worker.join(30)
    finally:
        server.kill()
    status, _headers, body = result["r"]
    assert (status, body) == (200, b"1")
    assert "finishing requests in flight" in server.log()
    assert "database closed" in server.log()


def test_bad_config_value_exits_2_naming_the_key(tmp_path, env):
    result = run_cli("serve", env={**env, "ZODBSESSION_SERVER_THREADS": "0"}, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "server.threads" in lines[0]


def test_bad_config_file_exits_2_naming_the_key(tmp_path, env):
    config = tmp_path / "bad.toml"
    config.write_text('[sessions]\nidle_timout = 60\n')
    result = run_cli("stats", "--config", str(config), env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert "sessions.idle_timout" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_app_exits_2_naming_it(tmp_path, env):
    result = run_cli("serve", "--app", "no_such_module:app", env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert "no_such_module" in result.stderr
    assert "Traceback" not in result.stderr


def test_command_on_a_database_held_by_another_process_says_so(tmp_path, env):
    """A process that is not a server (no control socket) holds the file: one line, exit 2."""
    from ZODB.FileStorage import FileStorage

    storage = FileStorage(str(tmp_path / "Data.fs"))
    (tmp_path / "Data.fs").chmod(0o600)  # private, as zodbsession makes it: no warning about it
    try:
        result = run_cli("stats", env=env, cwd=tmp_path)
    finally:
        storage.close()
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "in use by another process" in lines[0]


def test_stats_on_a_database_held_by_the_server_asks_the_server(tmp_path, env):
    with ServerProcess(tmp_path, env) as server:
        Client(server.url).json("POST", "/api/counter")
        result = run_cli("stats", "--json", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["stored_sessions"] == 1


def test_on_start_hook_lets_the_app_subscribe_to_session_events(tmp_path, env):
    """``server.on_start`` runs before serving with (db, manager): an audit log sees a login."""
    audit = tmp_path / "audit.log"
    (tmp_path / "audithook.py").write_text(textwrap.dedent(f'''
        def subscribe(db, manager):
            def record(event):
                with open({str(audit)!r}, "a") as log:
                    log.write(f"{{event.kind}} {{event.user_id}}\\n")
            manager.observers.on_session_event(record)
    '''))
    env = {**env, "PYTHONPATH": str(tmp_path), "ZODBSESSION_SERVER_ON_START": "audithook:subscribe"}
    with ServerProcess(tmp_path, env) as server:
        client = Client(server.url)
        assert client.json("POST", "/api/counter")[0] == 200
        assert client.json("POST", "/api/login", {"user": "alice"})[0] == 200
    lines = audit.read_text().splitlines()
    assert lines[0] == "created None"
    assert "rotated alice" in lines


def test_bad_on_start_hook_exits_2_naming_the_key(tmp_path, env):
    result = run_cli("serve", env={**env, "ZODBSESSION_SERVER_ON_START": "nowhere:hook"},
                     cwd=tmp_path)
    assert result.returncode == 2
    assert "server.on_start" in result.stderr
    assert "Traceback" not in result.stderr


def test_app_from_the_current_directory_without_pythonpath(tmp_path, env):
    """As under gunicorn, ``--app hello:app`` finds ``./hello.py`` with no PYTHONPATH."""
    (tmp_path / "hello.py").write_text(textwrap.dedent('''
        def app(environ, start_response):
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"hello from cwd"]
    '''))
    env = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    with ServerProcess(tmp_path, env, "--app", "hello:app") as server:
        status, _headers, body = Client(server.url).request("GET", "/")
    assert (status, body) == (200, b"hello from cwd")


FACTORY_APP = '''
import json

created = []


def create_app():
    created.append(1)

    def app(environ, start_response):
        session = environ["zodbsession.session"]
        session["n"] = session.get("n", 0) + 1
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({"n": session["n"], "factories": len(created)}).encode()]

    return app
'''


def test_factory_is_called_once_and_its_app_has_sessions(tmp_path, env):
    (tmp_path / "factoryapp.py").write_text(FACTORY_APP)
    with ServerProcess(tmp_path, env, "--app", "factoryapp:create_app()") as server:
        client = Client(server.url)
        assert client.json("GET", "/") == (200, {"n": 1, "factories": 1})
        assert client.json("GET", "/") == (200, {"n": 2, "factories": 1})


def test_uncalled_factory_exits_2_saying_how_to_call_it(tmp_path, env):
    (tmp_path / "factoryapp.py").write_text(FACTORY_APP)
    result = run_cli("serve", "--app", "factoryapp:create_app", env=env, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "factoryapp:create_app()" in lines[0]


def test_host_and_port_options_choose_the_address(tmp_path, env):
    port = free_port()
    with ServerProcess(tmp_path, env, "--host", "127.0.0.1", "--port", str(port),
                       port=port) as server:
        assert Client(server.url).json("POST", "/api/counter") == (200, {"count": 1})
    assert f"on http://127.0.0.1:{port}/" in server.log()


def test_version_is_the_installed_distribution_s(tmp_path, env):
    from importlib.metadata import version

    result = run_cli("--version", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"zodbsession {version('zodbsession')}"


def test_a_new_database_is_announced_with_its_path(tmp_path, env):
    with ServerProcess(tmp_path, env) as first:
        pass
    with ServerProcess(tmp_path, env) as second:
        pass
    assert f"created a new, empty database at {tmp_path}/Data.fs" in first.log()
    assert "created a new" not in second.log()


def test_verify_refuses_the_file_a_running_server_holds(tmp_path, env):
    with ServerProcess(tmp_path, env) as server:
        Client(server.url).json("POST", "/api/counter")
        result = run_cli("verify", env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "in use by another process" in lines[0] and "verify a copy" in lines[0]
    after = run_cli("verify", env=env, cwd=tmp_path)  # stopped: verified, and sound
    assert after.returncode == 0, after.stdout + after.stderr
    assert "the storage is sound" in after.stdout


@pytest.mark.parametrize(("setting", "value", "named"), [
    ("ZODBSESSION_SERVER_HOST", "no-such-host.invalid", "server.host: cannot resolve"),
    ("ZODBSESSION_ADMIN_HOST", "no-such-host.invalid", "admin.host: cannot resolve"),
    ("ZODBSESSION_STORAGE_URI", "file://{tmp}/a-file/var/Data.fs", "cannot create the directory"),
    ("ZODBSESSION_STORAGE_URI", "file:///sys/kernel/Data.fs", "writable"),
], ids=["server-host", "admin-host", "directory-not-creatable", "directory-read-only"])
def test_serve_start_up_failures_are_one_line_naming_the_fix(tmp_path, env, setting, value, named):
    (tmp_path / "a-file").write_text("not a directory")
    value = value.format(tmp=tmp_path)
    if value == "file:///sys/kernel/Data.fs" and not os.path.isdir("/sys/kernel"):
        pytest.skip("no read-only /sys/kernel here")
    env = {**env, setting: value, "ZODBSESSION_ADMIN_TOKEN": "a-token-long-enough-for-admin",
           "ZODBSESSION_SERVER_PORT": "0", "ZODBSESSION_ADMIN_PORT": "0"}
    result = run_cli("serve", env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert named in lines[0]


def test_read_only_var_directory_is_one_line(tmp_path, env):
    """As a user without write access (not root), ``var/`` read-only refuses in one line."""
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only directories; the /sys case above stands in")
    var = tmp_path / "var"
    var.mkdir()
    var.chmod(0o555)
    try:
        result = run_cli("serve", env={**env, "ZODBSESSION_STORAGE_URI": f"file://{var}/Data.fs"},
                         cwd=tmp_path)
    finally:
        var.chmod(0o755)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize(("trusted", "secure"), [("127.0.0.1", True), ("", False)],
                         ids=["trusted-proxy", "no-proxy-trusted"])
def test_secure_auto_follows_x_forwarded_proto_only_from_a_trusted_proxy(tmp_path, env, trusted, secure):
    env = {**env, "ZODBSESSION_SERVER_TRUSTED_PROXY": trusted}
    with ServerProcess(tmp_path, env) as server:
        status, headers, _body = Client(server.url).request(
            "POST", "/api/counter", b"", headers={"X-Forwarded-Proto": "https"})
    assert status == 200
    attributes = [a.strip().lower() for a in headers["Set-Cookie"].split(";")]
    assert ("secure" in attributes) is secure


def test_a_busy_server_does_not_log_a_line_per_queued_request(tmp_path, env):
    """More connections than threads queue requests; waitress would warn for each one."""
    with ServerProcess(tmp_path, {**env, "ZODBSESSION_SERVER_THREADS": "1"}) as server:
        clients = [Client(server.url) for _ in range(8)]
        answers: list[tuple[int, object]] = []

        def post_ten(client: Client) -> None:
            answers.extend(client.json("POST", "/api/counter") for _ in range(10))

        threads = [threading.Thread(target=post_ten, args=(c,)) for c in clients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        log = server.log()
    assert sorted(answers, key=str) == sorted(((200, {"count": n}) for n in range(1, 11)
                                               for _ in clients), key=str)
    assert "Task queue depth" not in log
