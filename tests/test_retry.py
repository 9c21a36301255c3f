"""RetryPolicy: the back-off's bounds, and retryability decided as ``transaction`` decides it.

A data manager that says an error is worth another try (``should_retry``, as
zope.sqlalchemy's does for serialization failures) gets the request replayed
by the publisher and the unit of work retried by ``work``, like a conflict.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import transaction
import webtest
from ZODB import DB
from ZODB.MappingStorage import MappingStorage
from ZODB.POSException import ConflictError

from zodbsession import SessionPublisher
from zodbsession.retry import DEFAULT_POLICY, RetryPolicy
from zodbsession.work import connection, in_transaction


class SerializationFailure(Exception):
    """What a database driver raises when its server asks the client to try again."""


class Ledger:
    """A tiny data manager, like zope.sqlalchemy's: it says which errors are worth a retry."""

    def __init__(self, tm: transaction.TransactionManager) -> None:
        self.transaction_manager = tm
        self.finished = 0

    def should_retry(self, error: BaseException) -> bool:
        return isinstance(error, SerializationFailure)

    def sortKey(self) -> str:  # noqa: N802 (the IDataManager spelling)
        return "ledger"

    def abort(self, txn) -> None: ...

    def tpc_begin(self, txn) -> None: ...

    def commit(self, txn) -> None: ...

    def tpc_vote(self, txn) -> None: ...

    def tpc_finish(self, txn) -> None:
        self.finished += 1

    def tpc_abort(self, txn) -> None: ...


@pytest.fixture
def database() -> Iterator[DB]:
    db = DB(MappingStorage())
    yield db
    db.close()


class Recorded:
    """Records the arguments a policy's random source gets, and answers the top of the range."""

    def __init__(self) -> None:
        self.ranges: list[tuple[float, float]] = []
        self.slept: list[float] = []

    def uniform(self, low: float, high: float) -> float:
        self.ranges.append((low, high))
        return high

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


def test_back_off_doubles_with_full_jitter_up_to_its_ceiling():
    recorded = Recorded()
    policy = RetryPolicy(10, backoff=0.01, max_backoff=0.05, uniform=recorded.uniform,
                         sleep=recorded.sleep)
    delays = [policy.pause(n) for n in range(1, 6)]
    assert recorded.ranges == [(0, 0.01), (0, 0.02), (0, 0.04), (0, 0.05), (0, 0.05)]
    assert delays == recorded.slept == [0.01, 0.02, 0.04, 0.05, 0.05]


def test_no_back_off_never_sleeps():
    recorded = Recorded()
    policy = RetryPolicy(3, backoff=0, uniform=recorded.uniform, sleep=recorded.sleep)
    assert policy.pause(1) == 0.0
    assert recorded.ranges == recorded.slept == []


@pytest.mark.parametrize(("field", "value"), [("attempts", 0), ("backoff", -1), ("max_backoff", -0.1)])
def test_a_policy_refuses_nonsense_where_it_is_built(field, value):
    with pytest.raises(ValueError, match="at least"):
        RetryPolicy(**{field: value})


def test_transient_errors_are_retryable_and_others_are_not():
    assert DEFAULT_POLICY.retryable(ConflictError("x"))
    assert not DEFAULT_POLICY.retryable(ValueError("x"))
    assert not DEFAULT_POLICY.retryable(KeyboardInterrupt())


def test_a_joined_data_manager_decides_what_else_is_retryable():
    tm = transaction.TransactionManager(explicit=True)
    txn = tm.begin()
    txn.join(Ledger(tm))
    assert DEFAULT_POLICY.retryable(SerializationFailure("try again"), txn)
    assert not DEFAULT_POLICY.retryable(ValueError("no"), txn)
    tm.abort()
    assert not DEFAULT_POLICY.retryable(SerializationFailure("try again"), tm.begin())
    tm.abort()


def test_the_publisher_replays_a_request_a_data_manager_says_to_retry(database):
    attempts = []
    ledgers = []

    def app(environ, start_response):
        attempts.append(environ["zodbsession.attempt"])
        tm = environ["zodbsession.connection"].transaction_manager
        ledger = Ledger(tm)
        ledgers.append(ledger)
        tm.get().join(ledger)
        environ["zodbsession.session"]["n"] = len(attempts)
        if len(attempts) == 1:
            raise SerializationFailure("could not serialize access")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    pub = SessionPublisher(app, database, retry_backoff=0)
    response = webtest.TestApp(pub).get("/")
    assert response.status_int == 200
    assert attempts == [1, 2]
    assert [ledger.finished for ledger in ledgers] == [0, 1]


def test_an_error_no_data_manager_accepts_is_not_replayed(database):
    attempts = []

    def app(environ, start_response):
        attempts.append(environ["zodbsession.attempt"])
        tm = environ["zodbsession.connection"].transaction_manager
        tm.get().join(Ledger(tm))
        raise ValueError("a bug, not a race")

    response = webtest.TestApp(SessionPublisher(app, database, retry_backoff=0)).get("/", expect_errors=True)
    assert response.status_int == 500
    assert attempts == [1]


def test_a_unit_of_work_is_retried_when_its_data_manager_says_so(database):
    calls = []
    recorded = Recorded()
    policy = RetryPolicy(3, backoff=0.01, uniform=recorded.uniform, sleep=recorded.sleep)
    with connection(database) as conn:
        def unit() -> int:
            calls.append(1)
            tm = conn.transaction_manager
            tm.get().join(Ledger(tm))
            if len(calls) < 3:
                raise SerializationFailure("again")
            conn.root()["done"] = True
            return len(calls)

        assert in_transaction(conn, unit, write=True, retry=policy) == 3
    assert recorded.slept == [0.01, 0.02]
    with database.transaction() as conn:
        assert conn.root()["done"] is True


def test_a_unit_of_work_gives_up_after_its_attempts(database):
    calls = []
    with connection(database) as conn:
        def unit() -> None:
            calls.append(1)
            raise ConflictError("always")

        with pytest.raises(ConflictError):
            in_transaction(conn, unit, write=True, retry=RetryPolicy(2, backoff=0))
    assert len(calls) == 2
