"""SessionPublisher end to end, commit and abort: a real application through WebTest on a real ZODB.

The helpers (``publisherkit``) validate every request twice and read what was
committed from a fresh connection. Retries, outcome-unknown commits, cookies,
the pool, streaming and the outer transaction have files of their own
(tests/web/test_publisher_*.py).
"""

from __future__ import annotations

from wsgiref.validate import validator

import pytest
from publisherkit import (
    COOKIE,
    TEXT,
    Recorder,
    app_from,
    app_value,
    client,
    create_session,
    environ_for,
    issued_id,
    open_connections,
    publisher,
    request,
    stored,
    stored_user,
    writer_app,
)
from transaction.interfaces import NoTransaction

from zodbsession import (
    PublishError,
    Redirect,
    SessionPublisher,
)

# -- commit and abort ----------------------------------------------------------


def test_success_commits_session_and_application_data(database):
    def action(environ):
        environ["zodbsession.session"]["cart"] = ["apple"]
        environ["zodbsession.connection"].root()["app"] = 42
        return "ok"

    response = client(publisher(app_from(action), database)).get("/")
    assert response.status_int == 200
    session_id = issued_id(response)
    assert stored(database) == {session_id: {"cart": ["apple"]}}
    assert app_value(database) == 42


def test_exception_aborts_session_and_application_data_with_generic_500(database):
    testapp = client(publisher(app_from(writer_app), database))
    session_id = create_session(testapp, cart="apple")
    before = database.storage.lastTransaction()

    def action(environ):
        environ["zodbsession.session"]["cart"] = "pear"
        environ["zodbsession.session"].login("mallory")
        environ["zodbsession.connection"].root()["app"] = 99
        raise RuntimeError("secret-detail of the failure")

    testapp.publisher.app = validator(app_from(action))
    response = request(testapp, cookie=f"{COOKIE}={session_id}")
    assert response.status_int == 500
    assert response.body == b"internal server error"
    assert b"Traceback" not in response.body and b"secret-detail" not in response.body
    assert response.headers.getall("Set-Cookie") == []
    assert stored(database) == {session_id: {"cart": "apple"}}
    assert stored_user(database, session_id) is None
    assert app_value(database) == 0
    assert database.storage.lastTransaction() == before


def test_publish_error_commits_session_changes(database):
    def action(environ):
        environ["zodbsession.session"]["failed_logins"] = 1
        environ["zodbsession.connection"].root()["app"] = 7
        raise PublishError("wrong password", status="403 Forbidden")

    response = request(client(publisher(app_from(action), database)))
    assert response.status_int == 403
    assert response.body == b"wrong password"
    session_id = issued_id(response)
    assert stored(database) == {session_id: {"failed_logins": 1}}
    assert app_value(database) == 7


def test_redirect_commits_flash_message_set_before_it(database):
    def action(environ):
        session = environ["zodbsession.session"]
        if environ["PATH_INFO"] == "/save":
            session["flash"] = "saved!"
            raise Redirect("/next")
        return session.pop("flash", "no flash")

    testapp = client(publisher(app_from(action), database))
    response = testapp.post("/save")
    assert response.status_int == 303
    assert response.headers["Location"].endswith("/next")
    assert testapp.get("/next").text == "saved!"
    assert testapp.get("/next").text == "no flash"


def test_5xx_returned_by_application_aborts(database):
    def action(environ):
        environ["zodbsession.session"]["x"] = 1
        environ["zodbsession.connection"].root()["app"] = 5
        return "maintenance"

    pub = publisher(app_from(action, status="503 Service Unavailable"), database)
    response = request(client(pub))
    assert response.status_int == 503
    assert response.text == "maintenance"
    assert response.headers.getall("Set-Cookie") == []
    assert stored(database) == {}
    assert app_value(database) == 0


@pytest.mark.parametrize("send_header", [True, False], ids=["vetoed", "not-vetoed"])
def test_custom_commit_veto_decides_on_header(database, send_header):
    calls = []

    def veto(environ, status, headers):
        calls.append(status)
        return any(name.lower() == "x-no-commit" for name, _ in headers)

    def action(environ):
        environ["zodbsession.session"]["x"] = 1
        environ["zodbsession.connection"].root()["app"] = 3
        return "ok"

    headers = [("X-No-Commit", "1")] if send_header else []
    pub = publisher(app_from(action, headers=headers), database, commit_veto=veto)
    response = request(client(pub))
    assert response.status_int == 200
    assert calls == ["200 OK"]
    if send_header:
        assert response.headers.getall("Set-Cookie") == []
        assert stored(database) == {}
        assert app_value(database) == 0
    else:
        assert stored(database) == {issued_id(response): {"x": 1}}
        assert app_value(database) == 3


def test_commit_failing_before_vote_answers_500_and_stores_nothing(database):
    """An unpicklable value fails in the commit itself: a plain abort, not a retry."""
    calls = []

    def action(environ):
        calls.append(1)
        environ["zodbsession.session"]["callback"] = lambda: None
        environ["zodbsession.connection"].root()["app"] = 11
        return "ok"

    response = request(client(publisher(app_from(action), database)))
    assert response.status_int == 500
    assert response.body == b"internal server error"
    assert calls == [1]
    assert response.headers.getall("Set-Cookie") == []
    assert stored(database) == {}
    assert app_value(database) == 0
    assert open_connections(database) == []


def test_forget_changes_mid_request_goes_on_in_a_fresh_transaction(database):
    """``forget_changes`` aborts what came before it; the request still succeeds."""

    def action(environ):
        session = environ["zodbsession.session"]
        session["early"] = 1
        environ["zodbsession.connection"].root()["app"] = 1
        session.forget_changes()
        session["late"] = 2
        return ",".join(sorted(session))

    response = request(client(publisher(app_from(action), database)))
    assert response.status_int == 200
    assert response.text == "late"
    assert stored(database) == {issued_id(response): {"late": 2}}
    assert app_value(database) == 0


@pytest.mark.parametrize("streaming", [False, True], ids=["buffered", "streaming"])
def test_write_callable_output_comes_before_the_iterable(database, streaming):
    def app(environ, start_response):
        write = start_response("200 OK", TEXT)
        write(b"written;")
        environ["zodbsession.session"]["x"] = 1
        return [b"returned"]

    response = client(publisher(app, database, streaming=streaming)).get("/")
    assert response.body == b"written;returned"
    assert stored(database) == {issued_id(response): {"x": 1}}


def test_app_that_never_calls_start_response_gets_500_and_aborts(database):
    def app(environ, start_response):
        environ["zodbsession.session"]["x"] = 1
        return [b"forgot the status"]

    response = request(client(SessionPublisher(app, database)))
    assert response.status_int == 500
    assert response.body == b"internal server error"
    assert stored(database) == {}

# -- construction ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "match"),
    [({"retry_attempts": -1}, "retry_attempts: must be at least 0"),
     ({"retry_deadline": -1}, "retry_deadline: must be at least 0"),
     ({"retry_attempts": 0, "retry_deadline": 0}, "cannot both be 0")],
    ids=["attempts-negative", "deadline-negative", "no-limit-at-all"],
)
def test_retry_limits_that_bound_nothing_are_refused(database, options, match):
    with pytest.raises(ValueError, match=match):
        SessionPublisher(app_from(lambda env: ""), database, **options)


def test_explicit_manager_per_request_refuses_work_outside_the_transaction(database):
    """The per-request manager is explicit: after the publisher's commit there is
    no implicit transaction to write into by accident."""
    managers = []

    def action(environ):
        managers.append(environ["zodbsession.connection"].transaction_manager)
        return "ok"

    request(client(publisher(app_from(action), database)))
    with pytest.raises(NoTransaction):
        managers[0].get()


# -- the read path: nothing to commit, managers reused ----------------------------------


def test_request_that_changed_nothing_is_aborted_not_committed(database):
    """No vote, no witness: a read costs an abort. What it registered for an abort runs."""
    seen = []

    def action(environ):
        txn = environ["zodbsession.connection"].transaction_manager.get()
        txn.addAfterAbortHook(lambda: seen.append("aborted"))
        seen.append(environ["zodbsession.session"].get("x"))
        return "ok"

    testapp = client(publisher(app_from(action), database))
    before = database.storage.lastTransaction()
    response = request(testapp)
    assert response.status_int == 200
    assert seen == [None, "aborted"]
    assert database.storage.lastTransaction() == before


@pytest.mark.parametrize("what", ["after-commit-hook", "before-commit-hook"])
def test_request_with_a_commit_hook_still_commits(database, what):
    """A hook is a promise of work at commit time: it must run, even if nothing was written."""
    seen = []

    def action(environ):
        txn = environ["zodbsession.connection"].transaction_manager.get()
        if what == "after-commit-hook":
            txn.addAfterCommitHook(lambda status: seen.append(status))
        else:
            txn.addBeforeCommitHook(lambda: seen.append("before"))
        return "ok"

    assert request(client(publisher(app_from(action), database))).status_int == 200
    assert seen == ([True] if what == "after-commit-hook" else ["before"])


def test_doomed_request_that_changed_nothing_still_fails_its_commit(database):
    def action(environ):
        environ["zodbsession.connection"].transaction_manager.doom()
        return "ok"

    assert request(client(publisher(app_from(action), database))).status_int == 500


def test_transaction_managers_are_reused_clean_across_requests(database):
    managers = []

    def action(environ):
        tm = environ["zodbsession.connection"].transaction_manager
        managers.append(tm)
        assert tm.explicit
        environ["zodbsession.session"]["n"] = len(managers)
        return "ok"

    testapp = client(publisher(app_from(action), database))
    for _ in range(3):
        assert request(testapp, method="POST").status_int == 200
    assert managers[0] is managers[1] is managers[2]
    # Kept with its connection for the thread's next request, then given back clean.
    assert testapp.publisher._idle_managers == []
    assert testapp.publisher.release_connections() == 1
    assert testapp.publisher._idle_managers == [managers[0]]
    with pytest.raises(NoTransaction):
        managers[0].get()
    assert not managers[0].registeredSynchs()


def test_a_streaming_response_keeps_its_manager_until_closed(database):
    """Another request meanwhile gets a manager of its own; the stream's comes back at close."""
    managers = []

    def app(environ, start_response):
        managers.append(environ["zodbsession.connection"].transaction_manager)
        start_response("200 OK", TEXT)
        return iter([b"a", b"b"])

    pub = SessionPublisher(app, database, streaming=True)
    first = pub(environ_for(), Recorder())
    second = pub(environ_for(), Recorder())
    assert managers[0] is not managers[1]
    assert pub._idle_managers == []
    assert b"".join(second) == b"ab"
    second.close()
    assert pub._idle_managers == [managers[1]]
    assert b"".join(first) == b"ab"
    first.close()
    assert set(map(id, pub._idle_managers)) == {id(managers[0]), id(managers[1])}
    pub(environ_for(), Recorder()).close()
    assert managers[2] in managers[:2]


def test_a_manager_left_with_a_transaction_is_not_reused(database):
    """An application that keeps a synchronizer on its manager gets it dropped, not pooled."""
    class Synch:
        def beforeCompletion(self, txn): ...  # noqa: N802

        def afterCompletion(self, txn): ...  # noqa: N802

        def newTransaction(self, txn): ...  # noqa: N802

    synch = Synch()

    def action(environ):
        environ["zodbsession.connection"].transaction_manager.registerSynch(synch)
        return "ok"

    pub = publisher(app_from(action), database)
    assert request(client(pub)).status_int == 200
    assert pub._idle_managers == []
