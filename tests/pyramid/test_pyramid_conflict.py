"""One transaction per Pyramid request, under a real ConflictError and pyramid_retry.

The view writes three stores: the zodbsession session, the app's own ZODB
object and a SQLite row through zope.sqlalchemy. On the first attempt a
second connection commits a conflicting change first, so the request's commit
raises a real ``ConflictError``; pyramid_retry replays it with a fresh request.
Each store must then hold the change exactly once: the first attempt's row is
rolled back with the session, never committed beside it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import zope.sqlalchemy
from persistent.mapping import PersistentMapping
from pyramid.request import Request
from pyramidkit import MODES, apps_fixture, db_of, intrude, route
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker
from ZODB.POSException import ConflictError

from zodbsession.pyramid import get_connection

apps = pytest.fixture(apps_fixture)


class Base(DeclarativeBase):
    pass


class Row(Base):
    __tablename__ = "rows"
    id: Mapped[int] = mapped_column(primary_key=True)
    item: Mapped[str]
    attempt: Mapped[int]


@pytest.fixture
def sql(tmp_path) -> Iterator[sessionmaker]:
    engine = create_engine(f"sqlite:///{tmp_path / 'app.sqlite'}")
    Base.metadata.create_all(engine)
    yield sessionmaker(bind=engine)
    engine.dispose()


def rows(sql: sessionmaker) -> list[tuple[str, int]]:
    with sql() as session:
        return [(r.item, r.attempt) for r in session.scalars(select(Row).order_by(Row.id))]


def conflict_app(sql: sessionmaker, attempts: list[int], *, where: str, every_attempt: bool = False) -> Any:
    """``/seed`` starts a session and the app's counter; ``/buy`` writes all three stores.

    *where* says what the intruder changes before the request commits: the
    app's ``counter`` object or the request's ``session`` (its ``cart`` key,
    the one the request changes too, so no conflict resolution can merge it).
    """

    def seed(request: Request) -> dict[str, Any]:
        get_connection(request).root()["counter"] = PersistentMapping(n=0)
        request.session["cart"] = []
        return {}

    def buy(request: Request) -> dict[str, Any]:
        attempt = request.environ["retry.attempt"]
        attempts.append(attempt)
        session = request.session
        connection = get_connection(request)
        counter = connection.root()["counter"]
        cart = list(session["cart"])  # both objects loaded before the intruder commits
        if attempt == 0 or every_attempt:
            session_id = session.id
            manager = request.registry.zodbsession.manager

            def change(other: Any) -> None:
                if where == "counter":
                    other.root()["counter"]["n"] += 100
                else:
                    intruded = manager.get(other, session_id)
                    intruded["cart"] = [*intruded["cart"], "intruder"]

            intrude(db_of_request(request), change)
        db = request.sql
        db.add(Row(item="apple", attempt=attempt))
        counter["n"] += 1
        session["cart"] = [*cart, "apple"]
        return {"attempt": attempt}

    def show(request: Request) -> dict[str, Any]:
        return {"cart": request.session["cart"], "n": get_connection(request).root()["counter"]["n"]}

    def failed(exc: Exception, request: Request) -> dict[str, Any]:
        request.response.status_int = 500
        return {"error": type(exc).__name__}

    def setup(config: Any) -> None:
        def sql_session(request: Request) -> Any:
            session = sql()
            zope.sqlalchemy.register(session, transaction_manager=request.tm)
            return session

        config.add_request_method(sql_session, "sql", reify=True)
        route(config, "/seed", seed)
        route(config, "/buy", buy)
        route(config, "/show", show)
        config.add_exception_view(failed, renderer="json")

    return setup


def db_of_request(request: Request) -> Any:
    return request.registry.zodbsession.db


WHERE = ["counter", "session"]


@pytest.mark.parametrize("mode", list(MODES), ids=list(MODES))
@pytest.mark.parametrize("where", WHERE, ids=WHERE)
def test_a_conflict_is_retried_and_every_store_changes_once(apps, sql, mode, where):
    attempts: list[int] = []
    app = apps(conflict_app(sql, attempts, where=where), {"retry.attempts": "3"}, mode=mode)
    app.get("/seed")
    response = app.get("/buy")
    assert response.json == {"attempt": 1}
    assert attempts == [0, 1]
    assert rows(sql) == [("apple", 1)]  # the first attempt's row rolled back, not committed
    expected_cart = ["intruder", "apple"] if where == "session" else ["apple"]
    expected_n = 101 if where == "counter" else 1
    db_of(app).cacheMinimize()
    assert app.get("/show").json == {"cart": expected_cart, "n": expected_n}


@pytest.mark.parametrize("mode", list(MODES), ids=list(MODES))
def test_conflicts_on_every_attempt_commit_nothing_of_the_request(apps, sql, mode):
    attempts: list[int] = []
    app = apps(conflict_app(sql, attempts, where="counter", every_attempt=True),
               {"retry.attempts": "3"}, mode=mode)
    app.get("/seed")
    response = app.get("/buy", expect_errors=True)
    assert response.status_int == 500
    assert response.json == {"error": ConflictError.__name__}
    assert attempts == [0, 1, 2]
    assert rows(sql) == []
    db_of(app).cacheMinimize()
    assert app.get("/show").json == {"cart": [], "n": 300}  # only the intruders' commits


def test_sql_and_session_abort_together_when_the_view_fails(apps, sql):
    def setup(config: Any) -> None:
        conflict_app(sql, [], where="counter")(config)

        def fail(request: Request) -> None:
            request.sql.add(Row(item="pear", attempt=0))
            request.session["cart"] = ["pear"]
            get_connection(request).root()["counter"]["n"] = -1
            raise RuntimeError("after all three writes")

        route(config, "/fail", fail)

    app = apps(setup)
    app.get("/seed")
    assert app.get("/fail", expect_errors=True).status_int == 500
    assert rows(sql) == []
    db_of(app).cacheMinimize()
    assert app.get("/show").json == {"cart": [], "n": 0}


def test_sql_rows_committed_count_is_visible_outside(sql):
    """The helper reads committed rows through a connection of its own (a sanity check)."""
    with sql() as session:
        session.add(Row(item="x", attempt=0))
        session.commit()
    with sql() as session:
        assert session.scalar(select(func.count()).select_from(Row)) == 1
    assert rows(sql) == [("x", 0)]


@pytest.mark.parametrize("mode", list(MODES), ids=list(MODES))
def test_an_exception_view_using_the_session_after_a_failed_commit_lets_the_retry_happen(apps, mode):
    """The conflict surfaces in pyramid_tm's commit, after the transaction; the error page reads it."""
    attempts: list[int] = []

    def setup(config: Any) -> None:
        def seed(request: Request) -> dict[str, Any]:
            get_connection(request).root()["counter"] = PersistentMapping(n=0)
            return {}

        def bump(request: Request) -> dict[str, Any]:
            attempts.append(request.environ["retry.attempt"])
            counter = get_connection(request).root()["counter"]
            counter["n"]  # loaded before the intruder commits
            if len(attempts) == 1:
                intrude(db_of_request(request), lambda other: other.root()["counter"].update(n=100))
            counter["n"] += 1
            return {"attempt": attempts[-1]}

        def failed(exc: Exception, request: Request) -> dict[str, Any]:
            request.response.status_int = 500
            return {"error": type(exc).__name__, "user": request.session.user_id}

        route(config, "/seed", seed)
        route(config, "/bump", bump)
        config.add_exception_view(failed, renderer="json")

    app = apps(setup, {"retry.attempts": "2"}, mode=mode)
    app.get("/seed")
    assert app.get("/bump").json == {"attempt": 1}
    assert attempts == [0, 1]
