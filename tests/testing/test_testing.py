"""Tests for the test kit, ``zodbsession.testing``, through its own fixtures (the plugin is installed).

The application here is a small raw WSGI app; the ASGI client is in
``tests/testing/test_testing_asgi.py``, the docs' example in ``tests/testing/test_testing_docs.py``.
"""

from __future__ import annotations

import json
from importlib.metadata import entry_points

import pytest
from ZODB.FileStorage import FileStorage
from ZODB.MappingStorage import MappingStorage

from zodbsession.core.errors import NoActiveRequest, NoUnitOfWork, Redirect, ZodbSessionError
from zodbsession.core.registry import current_connection, current_session
from zodbsession.testing import EPOCH, ManualClock, as_request, as_script, make_client
from zodbsession.web.wsgi.publisher import SessionPublisher

if "zodbsession" not in {point.name for point in entry_points(group="pytest11")}:
    pytest.fail("the zodbsession pytest plugin is not registered in this environment: reinstall the "
                "package (pip install -e .) so that its pytest11 entry point is", pytrace=False)


def shop(environ, start_response):
    """/add/<item> appends to the cart (in place: settle saves it); /whoami; /fail raises."""
    session = environ["zodbsession.session"]
    path = environ["PATH_INFO"]
    if path.startswith("/add/"):
        session.setdefault("cart", []).append(path[5:])
    elif path == "/fail":
        session["cart"] = ["lost"]
        raise RuntimeError("boom")
    elif path == "/flash":
        session.flash("hello")
    body = json.dumps({"cart": session.get("cart", []), "user": session.user_id,
                       "flash": session.pop_flash()}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


@pytest.fixture
def zodbsession_app():
    return shop


# -- the database, the clock, the manager ----------------------------------------------


def test_db_is_in_memory_by_default(zodbsession_db):
    assert isinstance(zodbsession_db.storage, MappingStorage)


@pytest.mark.zodbsession_filestorage
def test_db_is_a_temporary_filestorage_under_the_marker(zodbsession_db, tmp_path):
    assert isinstance(zodbsession_db.storage, FileStorage)
    assert (tmp_path / "Data.fs").exists()


def test_file_db_fixture_is_a_filestorage(zodbsession_file_db):
    assert isinstance(zodbsession_file_db.storage, FileStorage)


def test_clock_starts_at_the_epoch_and_moves_only_when_told(zodbsession_clock):
    assert zodbsession_clock() == EPOCH
    assert zodbsession_clock.advance(90) == EPOCH + 90
    assert zodbsession_clock() == EPOCH + 90


def test_manager_runs_on_the_clock(zodbsession_manager, zodbsession_clock):
    assert zodbsession_manager.clock is zodbsession_clock


@pytest.mark.zodbsession_manager(idle_timeout=60, access_resolution=0)
def test_manager_takes_options_from_the_marker(zodbsession_manager):
    assert zodbsession_manager.idle_timeout == 60


# -- the client --------------------------------------------------------------------------


def test_client_keeps_the_cookie_like_a_browser(zodbsession_client):
    assert zodbsession_client.session_id is None
    assert zodbsession_client.post("/add/apple").json()["cart"] == ["apple"]
    first = zodbsession_client.session_id
    assert first is not None
    assert zodbsession_client.post("/add/pear").json()["cart"] == ["apple", "pear"]
    assert zodbsession_client.session_id == first


def test_client_reads_the_server_side_session(zodbsession_client):
    assert zodbsession_client.session == {}
    zodbsession_client.post("/add/apple")
    assert zodbsession_client.session == {"cart": ["apple"]}


def test_a_failing_request_leaves_the_session_as_it_was(zodbsession_client):
    zodbsession_client.post("/add/apple")
    assert zodbsession_client.post("/fail").status == 500
    assert zodbsession_client.session == {"cart": ["apple"]}


def test_session_transaction_seeds_what_the_app_sees(zodbsession_client):
    with zodbsession_client.session_transaction() as session:
        session["cart"] = ["seeded"]
        session.flash("hello from the test")
    assert zodbsession_client.session_id is not None
    body = zodbsession_client.get("/").json()
    assert body["cart"] == ["seeded"] and body["flash"] == ["hello from the test"]


def test_session_transaction_that_raises_changes_nothing(zodbsession_client):
    zodbsession_client.post("/add/apple")
    with pytest.raises(KeyError), zodbsession_client.session_transaction() as session:
        session["cart"] = ["changed"]
        raise KeyError("the test changed its mind")
    assert zodbsession_client.session == {"cart": ["apple"]}


def test_login_binds_the_session_and_rotates_its_id(zodbsession_client):
    zodbsession_client.post("/add/apple")
    before = zodbsession_client.session_id
    zodbsession_client.login("alice")
    assert zodbsession_client.session_id != before
    assert zodbsession_client.user_id == "alice"
    assert zodbsession_client.get("/").json() == {"cart": ["apple"], "user": "alice", "flash": []}


def test_login_without_a_session_starts_one(zodbsession_client):
    zodbsession_client.login("bob")
    assert zodbsession_client.get("/").json()["user"] == "bob"


def test_logout_ends_the_session_and_forgets_the_cookie(zodbsession_client, zodbsession_script):
    zodbsession_client.login("alice")
    old = zodbsession_client.session_id
    zodbsession_client.logout()
    assert zodbsession_client.session_id is None
    assert zodbsession_client.get("/").json()["user"] is None
    with zodbsession_script.unit_of_work():
        assert zodbsession_script.session(old) is None


@pytest.mark.zodbsession_manager(idle_timeout=600, max_lifetime=3600, access_resolution=0)
def test_advancing_the_clock_expires_the_session(zodbsession_client, zodbsession_clock):
    zodbsession_client.post("/add/apple")
    zodbsession_clock.advance(599)
    assert zodbsession_client.get("/").json()["cart"] == ["apple"]
    zodbsession_clock.advance(600)
    assert zodbsession_client.get("/").json()["cart"] == []


def test_each_client_is_its_own_browser(zodbsession_app, zodbsession_db, zodbsession_manager):
    with make_client(zodbsession_app, zodbsession_db, manager=zodbsession_manager) as first, \
            make_client(zodbsession_app, zodbsession_db, manager=zodbsession_manager) as second:
        first.post("/add/apple")
        assert second.get("/").json()["cart"] == []


def test_make_client_uses_an_already_wrapped_app_as_it_is(zodbsession_db, zodbsession_manager):
    publisher = SessionPublisher(shop, zodbsession_db, manager=zodbsession_manager)
    client = make_client(publisher)
    client.post("/add/apple")
    assert client.session == {"cart": ["apple"]}
    assert client.manager is zodbsession_manager


def test_make_client_of_a_bare_app_needs_the_database():
    with pytest.raises(TypeError, match="make_client"):
        make_client(shop)


def test_client_sends_forms_json_and_query_strings(zodbsession_db, zodbsession_manager):
    def echo(environ, start_response):
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"{environ['QUERY_STRING']}|{environ.get('CONTENT_TYPE')}|".encode() + body]

    client = make_client(echo, zodbsession_db, manager=zodbsession_manager)
    assert client.post("/?q=1", json={"a": 1}).text == 'q=1|application/json|{"a": 1}'
    assert client.post("/", data={"b": "2"}).text == "|application/x-www-form-urlencoded|b=2"


# -- as a request -------------------------------------------------------------------------


def test_as_request_makes_current_session_and_connection_work(zodbsession_db, zodbsession_manager):
    with as_request(zodbsession_db, zodbsession_manager) as request:
        current_session["n"] = 1
        assert current_connection is not None and current_connection.root() is not None
        assert request.session["n"] == 1
    with pytest.raises(NoActiveRequest):
        current_session["n"]
    with as_request(zodbsession_db, zodbsession_manager, session_id=request.session_id) as again:
        assert again.session["n"] == 1


def test_as_request_commits_the_apps_own_objects_with_the_session(zodbsession_db, zodbsession_manager):
    with as_request(zodbsession_db, zodbsession_manager) as request:
        request.root["orders"] = ["#1"]
        request.session["last_order"] = "#1"
    with as_request(zodbsession_db, zodbsession_manager, session_id=request.session_id) as again:
        assert again.root["orders"] == ["#1"] and again.session["last_order"] == "#1"


def test_as_request_aborts_when_the_block_raises(zodbsession_db, zodbsession_manager):
    with pytest.raises(RuntimeError), as_request(zodbsession_db, zodbsession_manager) as request:
        request.root["orders"] = ["#1"]
        request.session["n"] = 1
        raise RuntimeError("boom")
    assert request.session_id is None
    with as_request(zodbsession_db, zodbsession_manager) as again:
        assert "orders" not in again.root


def test_as_request_commits_a_publish_error_and_reraises_it(zodbsession_db, zodbsession_manager):
    with pytest.raises(Redirect), as_request(zodbsession_db, zodbsession_manager) as request:
        request.session.flash("saved")
        raise Redirect("/next")
    with as_request(zodbsession_db, zodbsession_manager, session_id=request.session_id) as again:
        assert again.session.pop_flash() == ["saved"]


def test_as_request_with_a_5xx_status_aborts(zodbsession_db, zodbsession_manager):
    with as_request(zodbsession_db, zodbsession_manager, status="503 Service Unavailable") as request:
        request.root["x"] = 1
    assert not request.ending.committed
    with as_request(zodbsession_db, zodbsession_manager) as again:
        assert "x" not in again.root


def test_as_request_runs_the_after_commit_hooks(zodbsession_db, zodbsession_manager):
    sent = []
    with as_request(zodbsession_db, zodbsession_manager) as request:
        request.scope.after_commit(sent.append, "mail")
        request.root["x"] = 1
    assert sent == ["mail"]


# -- as a script ----------------------------------------------------------------------------


def test_unit_of_work_commits_and_gives_the_connection_back(zodbsession_script, zodbsession_db):
    with zodbsession_script.unit_of_work() as connection:
        connection.root()["x"] = 1
        session = zodbsession_script.new_session(cart=["apple"])
    assert not zodbsession_script.in_unit_of_work
    assert not connection.opened
    with zodbsession_script.unit_of_work():
        assert zodbsession_script.root["x"] == 1
        assert zodbsession_script.session(session.id)["cart"] == ["apple"]


def test_unit_of_work_aborts_when_the_block_raises(zodbsession_script):
    with pytest.raises(ValueError), zodbsession_script.unit_of_work() as connection:
        connection.root()["x"] = 1
        raise ValueError("no")
    with zodbsession_script.unit_of_work():
        assert "x" not in zodbsession_script.root


def test_script_handle_outside_a_unit_of_work_says_how_to_fix_it(zodbsession_script):
    with pytest.raises(NoUnitOfWork) as info:
        _ = zodbsession_script.root
    assert "with handle.unit_of_work():" in str(info.value)
    assert isinstance(info.value, ZodbSessionError)
    with zodbsession_script.unit_of_work():
        pass
    with pytest.raises(NoUnitOfWork):
        zodbsession_script.session("x" * 43)


def test_units_of_work_do_not_nest(zodbsession_script):
    with (zodbsession_script.unit_of_work(), pytest.raises(ZodbSessionError, match="nest"),
          zodbsession_script.unit_of_work()):
        pass


@pytest.mark.zodbsession_manager(idle_timeout=60, max_lifetime=60, access_resolution=0)
def test_script_sweeps_expired_sessions_on_the_clock(zodbsession_script, zodbsession_clock):
    with zodbsession_script.unit_of_work():
        session_id = zodbsession_script.new_session(n=1).id
    zodbsession_clock.advance(60 + 10)
    assert zodbsession_script.expire() == 1
    with zodbsession_script.unit_of_work():
        assert zodbsession_script.session(session_id) is None
        with pytest.raises(ZodbSessionError, match="between units of work"):
            zodbsession_script.expire()


def test_as_script_without_fixtures(zodbsession_db):
    handle = as_script(zodbsession_db)
    with handle.unit_of_work() as connection:
        connection.root()["y"] = 2
    with handle.unit_of_work():
        assert handle.root["y"] == 2


def test_manual_clock_set():
    clock = ManualClock(10.0)
    assert clock.set(20.0) == 20.0 and clock() == 20.0
