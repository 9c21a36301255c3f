"""RetryPolicy: the back-off's bounds, and retryability decided as ``transaction`` decides it.

A data manager that says an error is worth another try (``should_retry``, as
zope.sqlalchemy's does for serialization failures) gets the request replayed
by the publisher and the unit of work retried by ``work``, like a conflict.
"""

from __future__ import annotations

import pytest
import transaction
import webtest
from commitkit import QuietDataManager
from ZODB.POSException import ConflictError

from zodbsession import SessionPublisher
from zodbsession.core.retry import DEFAULT_POLICY, RetryPolicy
from zodbsession.core.work import connection, in_transaction
from zodbsession.testing import ManualClock


class SerializationFailure(Exception):
    """What a database driver raises when its server asks the client to try again."""


class Ledger(QuietDataManager):
    """A tiny data manager, like zope.sqlalchemy's: it says which errors are worth a retry."""

    def __init__(self, tm: transaction.TransactionManager) -> None:
        super().__init__("ledger")
        self.transaction_manager = tm
        self.finished = 0

    def should_retry(self, error: BaseException) -> bool:
        return isinstance(error, SerializationFailure)

    def tpc_finish(self, txn) -> None:
        self.finished += 1


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


def test_the_deadline_ends_retries_when_the_next_attempt_would_begin_past_it():
    clock = ManualClock(100.0)
    policy = RetryPolicy(attempts=0, deadline=10.0, clock=clock)
    started = policy.start()
    clock.now += 9.5
    assert policy.allows(1000, started)  # no count: a thousand attempts are fine
    assert policy.allows(1000, started, delay=0.5)  # the next would begin at 10 s: still in
    assert not policy.allows(1000, started, delay=0.6)
    clock.now += 0.6
    assert not policy.allows(1000, started)


@pytest.mark.parametrize(
    ("attempts", "deadline", "allowed"),
    [(5, 0.0, [True] * 4 + [False] * 4), (0, 3.5, [True] * 3 + [False] * 5),
     (5, 3.5, [True] * 3 + [False] * 5), (2, 3.5, [True] + [False] * 7)],
    ids=["count-only", "deadline-only", "deadline-first", "count-first"],
)
def test_a_count_and_a_deadline_end_retries_at_whichever_comes_first(attempts, deadline, allowed):
    """Each attempt takes one second here: after attempt n, n seconds have passed."""
    clock = ManualClock(100.0)
    policy = RetryPolicy(attempts=attempts, deadline=deadline, clock=clock)
    started = policy.start()
    verdicts = []
    for attempt in range(1, 9):
        clock.now += 1
        verdicts.append(policy.allows(attempt, started))
    assert verdicts == allowed


def test_the_default_policy_retries_at_once_for_up_to_ten_seconds():
    assert (DEFAULT_POLICY.attempts, DEFAULT_POLICY.backoff, DEFAULT_POLICY.deadline) == (0, 0.0, 10.0)
    assert DEFAULT_POLICY.delay(50) == 0.0
    assert DEFAULT_POLICY.limits() == "of up to 10 s"
    assert RetryPolicy(5, deadline=0).limits() == "of 5"
    assert RetryPolicy(5).limits() == "of 5 or 10 s"
    assert RetryPolicy(5).limits(1) == "of 1"


def test_the_back_off_of_a_thousandth_attempt_is_its_ceiling_not_an_overflow():
    recorded = Recorded()
    policy = RetryPolicy(backoff=0.01, max_backoff=0.5, uniform=recorded.uniform)
    assert policy.delay(5000) == 0.5


def test_no_back_off_never_sleeps():
    recorded = Recorded()
    policy = RetryPolicy(3, backoff=0, uniform=recorded.uniform, sleep=recorded.sleep)
    assert policy.pause(1) == 0.0
    assert recorded.ranges == recorded.slept == []


@pytest.mark.parametrize(("field", "value"), [("attempts", -1), ("backoff", -1), ("max_backoff", -0.1),
                                               ("deadline", -1)])
def test_a_policy_refuses_nonsense_where_it_is_built(field, value):
    with pytest.raises(ValueError, match="at least"):
        RetryPolicy(**{field: value})


def test_a_policy_needs_a_count_or_a_deadline_to_bound_its_retries():
    with pytest.raises(ValueError, match="cannot both be 0"):
        RetryPolicy(attempts=0, deadline=0)


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


def _conflicting_app(conflicts: int, attempts: list[int], clock: ManualClock | None = None):
    """A WSGI app raising ConflictError on its first *conflicts* attempts; each takes 1 s on *clock*."""

    def app(environ, start_response):
        attempts.append(environ["zodbsession.attempt"])
        if clock is not None:
            clock.now += 1.0
        environ["zodbsession.session"]["n"] = environ["zodbsession.attempt"]
        if len(attempts) <= conflicts:
            raise ConflictError("simulated: another process wrote the session first")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    return app


def test_a_request_that_conflicts_far_past_five_attempts_commits_within_the_deadline(database):
    """The default policy has no count: fifty lost conflicts in a row still end in a commit."""
    attempts: list[int] = []
    response = webtest.TestApp(SessionPublisher(_conflicting_app(50, attempts), database)).get("/")
    assert response.status_int == 200
    assert attempts == list(range(1, 52))


def test_a_request_still_conflicting_at_the_deadline_gets_503_busy(database):
    clock = ManualClock(100.0)
    policy = RetryPolicy(deadline=10.0, clock=clock, sleep=clock.advance)
    attempts: list[int] = []
    pub = SessionPublisher(_conflicting_app(1000, attempts, clock), database, retry=policy)
    response = webtest.TestApp(pub).get("/", expect_errors=True)
    assert response.status_int == 503
    assert response.text == "busy, please retry"
    # Attempt n ends n seconds after the first began: the eleventh begins at 10 s
    # exactly, still within the deadline, and the twelfth would begin past it.
    assert attempts == list(range(1, 12))


def test_the_attempt_count_still_bounds_a_request_within_the_deadline(database):
    attempts: list[int] = []
    pub = SessionPublisher(_conflicting_app(1000, attempts), database, retry_attempts=3)
    response = webtest.TestApp(pub).get("/", expect_errors=True)
    assert response.status_int == 503
    assert attempts == [1, 2, 3]
