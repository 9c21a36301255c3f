"""SessionPublisher's laziness and the connection pool: no lookup for an app that ignores
the session, and a pool that stays bounded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from wsgiref.validate import validator

from publisherkit import (
    COOKIE,
    TEXT,
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
    PublishError,
    registry,
)

# -- laziness ----------------------------------------------------------------------


class StorageLoads:
    """Counts the records one storage instance hands out (a measurement, not a mock)."""

    def __init__(self, storage: Any) -> None:
        self.count = 0
        for name in ("load", "loadBefore"):
            setattr(storage, name, self._counted(getattr(storage, name)))

    def _counted(self, original: Callable) -> Callable:
        def counted(*args, **kwargs):
            self.count += 1
            return original(*args, **kwargs)

        return counted


def test_app_that_ignores_the_session_causes_no_lookup(database):
    testapp = client(publisher(app_from(writer_app), database))
    session_id = create_session(testapp, keep="1")
    loads = StorageLoads(database.storage)
    roots = []

    def ignoring(environ):
        roots.append(environ["zodbsession.connection"]._cache.get(b"\0" * 8))
        return "hello"

    testapp.publisher.app = validator(app_from(ignoring))
    database.cacheMinimize()
    response = request(testapp, cookie=f"{COOKIE}={session_id}")
    assert response.text == "hello"
    assert loads.count == 0
    assert roots[0] is None or roots[0]._p_status == "ghost"
    # the measurement does see a lookup when there is one
    testapp.publisher.app = validator(app_from(lambda env: env["zodbsession.session"]["keep"]))
    database.cacheMinimize()
    assert request(testapp, cookie=f"{COOKIE}={session_id}").text == "1"
    assert loads.count > 0


# -- the connection pool --------------------------------------------------------------


def test_pool_stays_bounded_over_a_thousand_mixed_requests(database):
    seen_open = []

    def action(environ):
        seen_open.append(len(open_connections(database)))
        session = environ["zodbsession.session"]
        kind = environ["PATH_INFO"]
        if kind == "/read":
            return str(session.get("n"))
        session["n"] = session.get("n", 0) + 1
        if kind == "/fail":
            raise RuntimeError("boom")
        if kind == "/conflict" and environ["zodbsession.attempt"] == 1:
            raise ConflictError("simulated")
        if kind == "/publish":
            raise PublishError("nope", status="409 Conflict")
        return "ok"

    def app(environ, start_response):
        status = "500 Oops" if environ["PATH_INFO"] == "/5xx" else "200 OK"
        body = action(environ).encode()
        start_response(status, TEXT)
        return [body]

    testapp = client(publisher(app, database))
    paths = ["/write", "/fail", "/conflict", "/5xx", "/read", "/publish"]
    statuses = {}
    for i in range(1002):
        path = paths[i % len(paths)]
        response = testapp.get(path, expect_errors=True)
        statuses.setdefault(path, set()).add(response.status_int)
        assert len(database.pool.all) <= database.pool.size
    assert statuses == {"/write": {200}, "/fail": {500}, "/conflict": {200}, "/5xx": {500},
                        "/read": {200}, "/publish": {409}}
    assert max(seen_open) == 1
    # The last request (a committed /publish) left its connection with the thread.
    assert len(open_connections(database)) == 1
    assert testapp.publisher.release_connections() == 1
    assert open_connections(database) == []
    assert all(info["opened"] is None for info in database.connectionDebugInfo())
    assert registry.has() is False
    # 167 rounds: /write, /conflict and /publish each add one
    assert list(stored(database).values()) == [{"n": 3 * 167}]
