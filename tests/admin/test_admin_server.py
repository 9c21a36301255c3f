"""The admin listener and the metrics inside a real ``zodbsession serve``, driven over loopback.

Every figure is read the way Prometheus reads it: a scrape of ``/metrics``
with the bearer token, parsed by prometheus_client's own parser. The
application and the admin listener are separate ports of one process (or,
with ``--workers``, of a supervisor and its workers on a ZEO server).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time

import pytest
from adminkit import TIMEOUT, TOKEN, admin_request, requests_total, scrape, value
from serverproc import (
    Client,
    ServerProcess,
    free_port,
    pid_app_env,
    port_open,
    post_until_pids,
    run_cli,
    wait_for,
)

# -- one process ----------------------------------------------------------------------------


def test_metrics_need_the_token_and_count_every_request_to_the_app(tmp_path, env):
    with ServerProcess(tmp_path, env, admin_token=TOKEN) as server:
        for credentials in (None, "not-the-admin-token", ""):
            status, headers, body = admin_request(server, "GET", "/metrics", token=credentials)
            assert status == 401, credentials
            assert headers["WWW-Authenticate"].startswith("Bearer")
            assert b"zodbsession_" not in body

        client = Client(server.url)
        for _ in range(5):
            assert client.json("POST", "/api/counter")[0] == 200
        assert client.json("GET", "/api/session")[0] == 200
        assert client.json("POST", "/api/fail")[0] == 500
        found = scrape(server)
    assert requests_total(found) == 7
    assert value(found, "zodbsession_requests_total", outcome="aborted_exception") == 1
    assert value(found, "zodbsession_requests_total", outcome="committed") == 6
    assert value(found, "zodbsession_commit_seconds_count") == 5  # the read had nothing to commit
    assert value(found, "zodbsession_sessions_created_total") == 1
    assert value(found, "zodbsession_live_sessions") == 1
    size = (tmp_path / "Data.fs").stat().st_size
    assert value(found, "zodbsession_storage_size_bytes", database="main") == size
    assert value(found, "zodbsession_pool_size", database="main") == 4
    assert server.process.returncode == 0
    log = server.log()
    assert f"admin listener on http://127.0.0.1:{server.admin_port}/" in log
    assert TOKEN not in log


@pytest.mark.parametrize("how", ["id", "user"], ids=["revoke-one", "revoke-user"])
def test_a_revoke_through_the_admin_listener_ends_the_session_on_the_app_listener(tmp_path, env, how):
    with ServerProcess(tmp_path, env, admin_token=TOKEN) as server:
        alice, bob = Client(server.url), Client(server.url)
        assert alice.json("POST", "/api/login", {"user": "alice"})[1]["user"] == "alice"
        assert bob.json("POST", "/api/counter") == (200, {"count": 1})
        path, form = (("/revoke", {"id": alice.cookie()}) if how == "id"
                      else ("/revoke-user", {"user": "alice"}))

        # Without the token the POST changes nothing.
        assert admin_request(server, "POST", path, token=None, form=form)[0] == 401
        assert alice.json("GET", "/api/session")[1]["user"] == "alice"

        status, headers, _body = admin_request(server, "POST", path, form=form)
        assert status == 303
        assert headers["Location"].endswith("revoked=1")
        session = alice.json("GET", "/api/session")[1]
        assert (session["user"], session["new"]) == (None, True)
        assert bob.json("GET", "/api/session")[1]["data"] == {"count": 1}
        found = scrape(server)
    assert value(found, "zodbsession_sessions_revoked_total") == 1
    assert value(found, "zodbsession_live_sessions") == 1


BAD_ADMIN = {
    "token-too-short": ({"ZODBSESSION_ADMIN_TOKEN": "short-secret"}, "admin.token",
                        "use at least 16"),
    "token-blank": ({"ZODBSESSION_ADMIN_TOKEN": "   "}, "admin.token", "is blank"),
    "port-out-of-range": ({"ZODBSESSION_ADMIN_TOKEN": TOKEN, "ZODBSESSION_ADMIN_PORT": "70000"},
                          "admin.port", "from 0 (any free port) to 65535"),
    "port-not-a-number": ({"ZODBSESSION_ADMIN_TOKEN": TOKEN, "ZODBSESSION_ADMIN_PORT": "eighty"},
                          "admin.port", "must be an integer"),
    "port-of-the-server": ({"ZODBSESSION_ADMIN_TOKEN": TOKEN, "ZODBSESSION_ADMIN_PORT": "SERVER"},
                           "admin.port", "must differ from server.port"),
    "port-taken": ({"ZODBSESSION_ADMIN_TOKEN": TOKEN, "ZODBSESSION_ADMIN_PORT": "TAKEN"},
                   "admin.port", "cannot listen on 127.0.0.1:"),
}


@pytest.mark.parametrize(("settings", "key", "problem"), BAD_ADMIN.values(), ids=BAD_ADMIN.keys())
def test_a_bad_admin_setting_exits_2_in_one_line_naming_the_key(tmp_path, env, settings, key, problem):
    port = free_port()
    with socket.create_server(("127.0.0.1", 0)) as taken:  # a port someone else listens on
        replace = {"SERVER": str(port), "TAKEN": str(taken.getsockname()[1])}
        settings = {name: replace.get(text, text) for name, text in settings.items()}
        result = run_cli("serve", env={**env, **settings, "ZODBSESSION_SERVER_PORT": str(port)},
                         cwd=tmp_path, timeout=60)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"zodbsession: {key}: "), lines[0]
    assert problem in lines[0]
    assert TOKEN not in result.stderr and "short-secret" not in result.stderr
    assert not port_open(port)  # the application never started serving


def test_without_a_token_the_admin_port_stays_closed_and_the_log_says_why(tmp_path, env):
    admin_port = free_port()
    with ServerProcess(tmp_path, {**env, "ZODBSESSION_ADMIN_PORT": str(admin_port)}) as server:
        assert Client(server.url).json("POST", "/api/counter") == (200, {"count": 1})
        assert not port_open(admin_port)
    lines = [line for line in server.log().splitlines() if "admin listener" in line]
    assert len(lines) == 1, lines
    assert "admin listener off: admin.token is not set" in lines[0]
    assert "ZODBSESSION_ADMIN_TOKEN" in lines[0]


def test_the_session_limits_from_the_config_reach_the_server(tmp_path, env):
    env = {**env, "ZODBSESSION_SESSIONS_MAX_SESSIONS": "2",
           "ZODBSESSION_SESSIONS_NEW_PER_ADDRESS_PER_MINUTE": "2",
           "ZODBSESSION_SESSIONS_MAX_SESSION_BYTES": "1000"}
    (tmp_path / "bigapp.py").write_text(
        "def app(environ, start_response):\n"
        "    environ['zodbsession.session']['blob'] = 'x' * 5000\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [b'stored']\n")
    with ServerProcess(tmp_path, env, admin_token=TOKEN) as server:
        for user in ("ann", "bob"):  # this address's budget of two new sessions a minute
            assert Client(server.url).json("POST", "/api/login", {"user": user})[0] == 200
        status, _headers, _body = Client(server.url).request("POST", "/api/counter")
        assert status == 503
        found = scrape(server)
    assert value(found, "zodbsession_requests_total", outcome="session_limit") == 1
    assert value(found, "zodbsession_live_sessions") == 2

    env = {**env, "ZODBSESSION_SESSIONS_MAX_SESSIONS": "0", "PYTHONPATH": str(tmp_path)}
    with ServerProcess(tmp_path, env, "--app", "bigapp:app", admin_token=TOKEN) as server:
        status, _headers, _body = Client(server.url).request("GET", "/")
        assert status == 500
        found = scrape(server)
    assert value(found, "zodbsession_requests_total", outcome="aborted_invalid") == 1


# -- zodbsession stats ----------------------------------------------------------------------------


def test_stats_shows_the_database_figures_and_reads_counters_only_from_a_metrics_directory(tmp_path, env):
    """Offline, ``stats`` has the database's figures; the counters come from the server's directory.

    A single-process server started with ``PROMETHEUS_MULTIPROC_DIR`` keeps
    its counters there, and they outlive it (a FileStorage cannot be read
    while the server holds it).
    """
    directory = tmp_path / "metrics"
    with ServerProcess(tmp_path, {**env, "PROMETHEUS_MULTIPROC_DIR": str(directory)}) as server:
        client = Client(server.url)
        for _ in range(3):
            client.json("POST", "/api/counter")

    offline = run_cli("stats", "--json", env=env, cwd=tmp_path)
    assert offline.returncode == 0, offline.stderr
    figures = json.loads(offline.stdout)
    assert (figures["stored_sessions"], figures["live_sessions"]) == (1, 1)
    metrics = figures["metrics"]
    assert metrics["multiprocess_dir"] is None and "requests" not in metrics
    assert metrics["live_sessions"] == 1
    assert metrics["storage_bytes"] == {"main": figures["databases"][0]["size_bytes"]}
    text = run_cli("stats", env=env, cwd=tmp_path).stdout
    assert "server counters   not here: scrape /metrics" in text

    env = {**env, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    metrics = json.loads(run_cli("stats", "--json", env=env, cwd=tmp_path).stdout)["metrics"]
    assert (metrics["requests"]["committed"], metrics["sessions"]["created"]) == (3, 1)
    assert metrics["commit_seconds"]["count"] == 3
    text = run_cli("stats", env=env, cwd=tmp_path).stdout
    assert f"server counters (since the server started, from {directory}):" in text
    assert "  requests        3 (committed 3)" in text
    assert sorted(p.name for p in directory.iterdir() if not p.name.endswith(".db")) == ["lock"]

    bad = run_cli("stats", env={**env, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "nowhere")},
                  cwd=tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.startswith("zodbsession: PROMETHEUS_MULTIPROC_DIR: must name")
    assert len(bad.stderr.strip().splitlines()) == 1


# -- several workers on ZEO -------------------------------------------------------------------


def worker_pid(server: ServerProcess, index: int, after: int = 0) -> int:
    """The pid of the latest worker *index*, from its "serving" log line (after *after* chars)."""
    serving = rf"\[(\d+)\] zodbsession\.serve\.server: worker {index}: serving"
    found = re.findall(serving, server.log()[after:])
    assert found, f"worker {index} has not logged yet"
    return int(found[-1])


def test_workers_figures_are_summed_in_one_scrape_and_outlive_a_dead_worker(tmp_path, zeo):
    """Requests spread over two workers all count; a killed worker's counts stay, its pool goes.

    Also ``zodbsession stats`` reads the same counters from the metrics
    directory, and only worker 0 serves the admin listener.
    """
    env = {"ZODBSESSION_STORAGE_URI": zeo.uri(wait_timeout=2), "ZODBSESSION_SERVER_THREADS": "4",
           "ZODBSESSION_STORAGE_POOL_SIZE": "4", **pid_app_env(tmp_path)}
    with ServerProcess(tmp_path, env, "--workers", "2", admin_token=TOKEN) as server:
        client = Client(server.url)
        assert client.json("POST", "/")[0] == 200
        pids: set[int] = set()
        posted = 1 + len(post_until_pids(client, pids))
        assert len(pids) == 2
        found = scrape(server)
        assert requests_total(found) == posted
        assert value(found, "zodbsession_requests_total", outcome="committed") == posted
        assert value(found, "zodbsession_sessions_created_total") == 1
        assert value(found, "zodbsession_live_sessions") == 1
        wait_for(lambda: value(scrape(server), "zodbsession_pool_size", database="main") == 8,
                 what="both workers' pool gauges")  # each refreshes its own every 5 s

        stats = run_cli("stats", "--json", cwd=tmp_path, env={
            "ZODBSESSION_STORAGE_URI": env["ZODBSESSION_STORAGE_URI"],
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "var" / "metrics")})
        assert stats.returncode == 0, stats.stderr
        metrics = json.loads(stats.stdout)["metrics"]
        assert metrics["requests"]["committed"] == posted
        assert metrics["live_sessions"] == 1

        mark = len(server.log())
        victim = worker_pid(server, 1)
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: re.search(r"worker 1: serving", server.log()[mark:]), what="worker 1's restart")
        assert worker_pid(server, 1, mark) != victim
        found = scrape(server)
        assert requests_total(found) == posted  # the dead worker's requests still count
        wait_for(lambda: value(scrape(server), "zodbsession_pool_size", database="main") == 8,
                 what="the pool gauges without the dead worker's")
    assert server.process.returncode == 0
    assert len(re.findall(r"admin listener on", server.log())) == 1
    assert TOKEN not in server.log()


def test_the_admin_listener_survives_a_restart_of_worker_0(tmp_path, zeo):
    env = {"ZODBSESSION_STORAGE_URI": zeo.uri(wait_timeout=2), "ZODBSESSION_SERVER_THREADS": "2",
           "ZODBSESSION_STORAGE_POOL_SIZE": "2", **pid_app_env(tmp_path)}
    with ServerProcess(tmp_path, env, "--workers", "2", admin_token=TOKEN) as server:
        Client(server.url).json("POST", "/")
        wait_for(lambda: "worker 1: serving" in server.log(), what="both workers")
        before = requests_total(scrape(server))
        os.kill(worker_pid(server, 0), signal.SIGKILL)
        began = time.monotonic()
        found = scrape(server)  # waits in the parent's listening socket for the new worker 0
        assert time.monotonic() - began < TIMEOUT
        assert requests_total(found) == before
    assert len(re.findall(r"admin listener on", server.log())) == 2
