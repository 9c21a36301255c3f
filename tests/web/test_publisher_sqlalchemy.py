"""The session and a SQL database in one transaction, through zope.sqlalchemy.

The publisher gives each request an explicit transaction manager of its own,
so the application registers its SQLAlchemy session against *that* manager
(``environ["zodbsession.connection"].transaction_manager``). Then a ZODB
session change and a SQLite row commit together or not at all, whichever side
fails, and a retried request writes its row once.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from typing import Any
from wsgiref.validate import validator

import pytest
import transaction
import webtest
import zope.sqlalchemy
from sqlalchemy import ForeignKey, create_engine, event
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from ZODB import DB
from ZODB.POSException import ConflictError

from zodbsession import PublishError, SessionPublisher
from zodbsession.core.store import ROOT_KEY

TEXT = [("Content-Type", "text/plain")]


class Base(DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "customers"
    id: Mapped[int] = mapped_column(primary_key=True)


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    item: Mapped[str] = mapped_column(unique=True)
    attempt: Mapped[int]
    # checked only at COMMIT: a violation surfaces in zope.sqlalchemy's tpc_vote
    customer_id: Mapped[int] = mapped_column(
        ForeignKey("customers.id", deferrable=True, initially="DEFERRED"))


@pytest.fixture
def engine(tmp_path) -> Iterator[Any]:
    engine = create_engine(f"sqlite:///{tmp_path / 'app.sqlite'}")

    @event.listens_for(engine, "connect")
    def enforce_foreign_keys(dbapi_connection, record):
        dbapi_connection.execute("PRAGMA foreign_keys = ON")

    Base.metadata.create_all(engine)
    with Session(engine) as session, session.begin():
        session.add(Customer(id=1))
    yield engine
    engine.dispose()


def orders(engine) -> list[tuple[str, int]]:
    """The committed rows, read through a fresh sqlite3 connection.

    Not through the engine's pool: after a COMMIT refused for a deferred
    foreign key, pysqlite leaves that pooled connection inside its open
    transaction, where it still sees its own uncommitted row.
    """
    with closing(sqlite3.connect(engine.url.database)) as raw:
        return raw.execute("SELECT item, attempt FROM orders ORDER BY id").fetchall()


def sessions(db: DB) -> list[dict[str, Any]]:
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    try:
        container = conn.root().get(ROOT_KEY)
        return [s.data() for s in container.sessions.values()] if container else []
    finally:
        tm.abort()
        conn.close()


def order_app(engine, db: DB, *, fail: str | None = None, item: str = "book"):
    """Adds an order row and notes it in the session, then fails as told."""

    def app(environ, start_response):
        attempt = environ["zodbsession.attempt"]
        sql = Session(engine)
        zope.sqlalchemy.register(
            sql, transaction_manager=environ["zodbsession.connection"].transaction_manager)
        sql.add(Order(item=item, attempt=attempt,
                      customer_id=99 if fail == "foreign-key" else 1))
        if fail != "unique":
            sql.flush()  # written now; "unique" is left for the commit's flush
        session = environ["zodbsession.session"]
        session["orders"] = session.get("orders", []) + [item]
        if fail == "exception":
            raise RuntimeError("boom")
        if fail == "publish-error":
            raise PublishError("noted", status="409 Conflict")
        if fail == "conflict" and attempt == 1:
            raise ConflictError("simulated")
        if fail == "zodb-conflict" and attempt == 1:
            with db.transaction() as conn:  # a concurrent ZODB commit under us
                conn.root()["other"] = attempt
        if fail == "zodb-conflict":
            environ["zodbsession.connection"].root()["other"] = "mine"
        start_response("500 Oops" if fail == "5xx" else "200 OK", TEXT)
        return [b"ok"]

    return app


def run(engine, db: DB, **options: Any) -> webtest.TestResponse:
    pub = SessionPublisher(validator(order_app(engine, db, **options)), db, retry_backoff=0)
    return webtest.TestApp(validator(pub)).get("/", expect_errors=True)


def test_success_commits_the_row_and_the_session_together(engine, database):
    response = run(engine, database)
    assert response.status_int == 200
    assert orders(engine) == [("book", 1)]
    assert sessions(database) == [{"orders": ["book"]}]


def test_publish_error_commits_both(engine, database):
    assert run(engine, database, fail="publish-error").status_int == 409
    assert orders(engine) == [("book", 1)]
    assert sessions(database) == [{"orders": ["book"]}]


@pytest.mark.parametrize(("fail", "status"), [
    ("exception", 500), ("5xx", 500), ("unique", 500), ("foreign-key", 500),
], ids=["app-raises", "app-answers-5xx", "sql-refuses-at-flush", "sql-refuses-at-commit"])
def test_failure_rolls_back_the_row_and_the_session_together(engine, database, fail, status):
    """Whichever side fails (the app, the veto, or SQLite itself during the
    two-phase commit) neither the row nor the session survives."""
    if fail == "unique":
        with Session(engine) as sql, sql.begin():
            sql.add(Order(item="book", attempt=0, customer_id=1))
    response = run(engine, database, fail=fail)
    assert response.status_int == status
    assert response.headers.getall("Set-Cookie") == []
    assert orders(engine) == ([("book", 0)] if fail == "unique" else [])
    assert sessions(database) == []


@pytest.mark.parametrize("fail", ["conflict", "zodb-conflict"],
                         ids=["app-raises-conflict", "zodb-commit-conflicts"])
def test_retried_request_writes_its_row_once(engine, database, fail):
    response = run(engine, database, fail=fail)
    assert response.status_int == 200
    assert orders(engine) == [("book", 2)]
    assert sessions(database) == [{"orders": ["book"]}]
