"""SessionPublisher when the commit fails: after every vote (outcome unknown: 503, never
retried) or in a vote.
"""

from __future__ import annotations

from wsgiref.validate import validator

import pytest
from commitkit import FinishFails, VoteFails
from publisherkit import (
    app_from,
    client,
    create_session,
    open_connections,
    publisher,
    request,
    stored,
    writer_app,
)
from ZODB.POSException import ConflictError

from zodbsession import (
    registry,
)

# -- commit outcome unknown -----------------------------------------------------


@pytest.mark.parametrize("key", ["\x00 finishes first", "~ finishes after the connection"],
                         ids=["before-connection", "after-connection"])
def test_failure_after_vote_answers_503_and_is_not_retried(database, key):
    calls = []

    def action(environ):
        calls.append(environ["zodbsession.attempt"])
        environ["zodbsession.session"]["x"] = 1
        environ["zodbsession.connection"].transaction_manager.get().join(
            FinishFails(OSError("storage went away during the finish"), key))
        return "ok"

    testapp = client(publisher(app_from(action), database))
    response = request(testapp)
    assert response.status_int == 503
    assert response.headers["Retry-After"] == "1"
    assert b"unknown" in response.body
    assert calls == [1]
    assert registry.has() is False
    assert open_connections(database) == []
    # the publisher and its pool are still healthy afterwards
    testapp.publisher.app = validator(app_from(writer_app))
    session_id = create_session(testapp, y=2)
    assert stored(database)[session_id] == {"y": "2"}


@pytest.mark.parametrize(("error", "status", "calls_expected"), [
    (ValueError("refused"), 500, 1),
    (ConflictError("refused"), 200, 2),
], ids=["plain-error", "conflict"])
def test_failure_in_vote_is_a_plain_abort_not_outcome_unknown(database, error, status,
                                                              calls_expected):
    calls = []

    def action(environ):
        calls.append(1)
        environ["zodbsession.session"]["x"] = 1
        if len(calls) == 1:
            tm = environ["zodbsession.connection"].transaction_manager
            tm.get().join(VoteFails(error, "\x00 votes first"))
        return "ok"

    response = request(client(publisher(app_from(action), database)))
    assert response.status_int == status
    assert len(calls) == calls_expected
    assert len(stored(database)) == (1 if status == 200 else 0)
