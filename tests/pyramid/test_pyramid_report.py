"""How Pyramid requests ended, as the session manager's observers hear it (``zodbsession.pyramid.report``)."""

from __future__ import annotations

from typing import Any

import pytest
from persistent.mapping import PersistentMapping
from pyramid.request import Request
from pyramidkit import apps_fixture, intrude, route

from zodbsession import UnstorableSessionValue
from zodbsession.core.observe import Observer
from zodbsession.pyramid import get_connection
from zodbsession.pyramid.report import outcome_of

apps = pytest.fixture(apps_fixture)


class Recorder(Observer):
    def __init__(self) -> None:
        self.finished: list[tuple[str, int, bool]] = []
        self.retried: list[tuple[str, int]] = []

    def request_finished(self, outcome: str, attempts: int, commit_seconds: float | None) -> None:
        self.finished.append((outcome, attempts, commit_seconds is not None))

    def request_retried(self, error: BaseException, attempt: int) -> None:
        self.retried.append((type(error).__name__, attempt))


def report_app(config: Any) -> None:
    def ok(request: Request) -> dict[str, Any]:
        request.session["x"] = 1
        return {}

    def boom(request: Request) -> None:
        raise RuntimeError("boom")

    def doom(request: Request) -> dict[str, Any]:
        request.tm.doom()
        return {}

    def bad(request: Request) -> dict[str, Any]:
        request.session["f"] = lambda: None
        return {}

    def seed(request: Request) -> dict[str, Any]:
        get_connection(request).root()["counter"] = PersistentMapping(n=0)
        return {}

    def contend(request: Request) -> dict[str, Any]:
        counter = get_connection(request).root()["counter"]
        counter["n"]  # loaded before the intruder commits
        times = int(request.params["times"])
        if request.environ["retry.attempt"] < times:
            intrude(request.registry.zodbsession.db, lambda other: other.root()["counter"].update(n=-1))
        counter["n"] += 1
        return {}

    for path, view in [("/ok", ok), ("/boom", boom), ("/doom", doom), ("/bad", bad), ("/seed", seed),
                       ("/contend", contend)]:
        route(config, path, view)


def app_with_recorder(apps: Any) -> tuple[Any, Recorder]:
    app = apps(report_app, {"retry.attempts": "3"})
    recorder = Recorder()
    app.registry.zodbsession.manager.observers.subscribe(recorder)
    return app, recorder


def test_a_commit_is_reported_with_its_duration(apps):
    app, recorder = app_with_recorder(apps)
    app.get("/ok")
    assert recorder.finished == [("committed", 1, True)]


@pytest.mark.parametrize(("path", "raises", "outcome"), [
    ("/boom", RuntimeError, "aborted_exception"),
    ("/doom", None, "aborted_veto"),
    ("/bad", UnstorableSessionValue, "aborted_invalid"),
], ids=["exception", "doomed", "unstorable"])
def test_an_abort_is_reported_by_what_caused_it(apps, path, raises, outcome):
    app, recorder = app_with_recorder(apps)
    if raises is None:
        app.get(path)
    else:
        with pytest.raises(raises):
            app.get(path)
    assert recorder.finished == [(outcome, 1, False)]


def test_a_retried_conflict_is_reported_as_a_retry_then_a_commit(apps):
    app, recorder = app_with_recorder(apps)
    app.get("/seed")
    recorder.finished.clear()
    app.get("/contend", {"times": "1"})
    assert recorder.retried == [("ConflictError", 1)]
    assert recorder.finished == [("committed", 2, True)]


def test_conflicts_on_every_attempt_are_reported_as_given_up(apps):
    from ZODB.POSException import ConflictError

    app, recorder = app_with_recorder(apps)
    app.get("/seed")
    recorder.finished.clear()
    with pytest.raises(ConflictError):
        app.get("/contend", {"times": "3"})
    assert recorder.retried == [("ConflictError", 1), ("ConflictError", 2)]
    assert recorder.finished == [("gave_up", 3, False)]


def test_the_outcome_table_has_a_row_for_every_case():
    """Pyramid's outcomes are the core's table's rows, storage rows included."""
    from ZEO.Exceptions import ClientDisconnected
    from ZODB.POSException import ConflictError

    assert outcome_of(None) == "aborted_veto"
    assert outcome_of(KeyError("x")) == "aborted_exception"
    assert outcome_of(ConflictError()) == "gave_up"
    assert outcome_of(ClientDisconnected()) == "storage_error"
    assert outcome_of(KeyboardInterrupt()) == "aborted_exception"
