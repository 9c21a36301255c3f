"""``RetryPolicy``: how often and how long a transaction is tried, the pause between, what is retried.

One policy for every place that retries a transaction: the request-transaction
core (and so both front doors), the short units of work in ``work`` (expiry,
maintenance, the janitor's sweep, the admin's reads). An error is retryable the
way ``transaction.TransactionManager.attempts()`` decides it: a
``TransientError`` (a ZODB conflict), or an error that a data manager joined to
the transaction says is worth another try (``should_retry(error)``, which
zope.sqlalchemy implements for serialization failures). The back-off is
exponential with full jitter and a ceiling: attempt *n* waits a uniformly random
time in ``[0, min(backoff * 2**(n-1), max_backoff)]``, so that requests that
conflicted together do not retry together.

Two limits bound the retries, and the first one reached ends them: at most
``attempts`` attempts (0: no limit on the count), and no attempt begun more
than ``deadline`` seconds after the first one began (0: no limit in time).
Requests retry at once by default (``backoff`` 0), as
``transaction.TransactionManager.attempts()`` and pyramid_retry do, and for
the same reason the count gave way to a deadline: a hot session. When two
processes write one session back to back, a request that lost a conflict
found out at its vote, which waited for the winner's commit; retrying at
once it begins before the winner's client has sent its next request, and
has a fair chance of committing first. Any pause longer than that round trip
makes it begin in the middle of the winner's next request, whose commit it
then always meets, since a retry reloads the session and so takes longer:
with a 10 ms back-off doubling to 0.5 s, one request in forty lost five
attempts in a row, and some kept losing for the whole of a 10 s deadline.
A back-off still helps many writers that conflict on objects other than
one session (set ``backoff``); the count bounds the work where that matters
more than the answer (the units of work in ``work``).
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from transaction.interfaces import TransientError

from zodbsession.core.errors import ConfigError


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts, deadline, back-off and retryability, checked where it is built.

    Threading: immutable; one policy may be shared by every thread. The
    random source, the sleep and the clock are fields so that a test can
    make them deterministic.
    """

    attempts: int = 0
    backoff: float = 0.0
    max_backoff: float = 0.5
    deadline: float = 10.0
    uniform: Callable[[float, float], float] = field(default=random.uniform, repr=False, compare=False)
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)

    def __post_init__(self) -> None:
        for key, problem in self._problems():
            raise ConfigError(key, problem)

    def _problems(self) -> Iterator[tuple[str, str]]:
        """(option, problem) for each rule broken, under the front doors' option names."""
        if self.attempts < 0:
            yield "retry_attempts", f"must be at least 0 (0: no limit), not {self.attempts}"
        if self.backoff < 0:
            yield "retry_backoff", f"must be at least 0 seconds, not {self.backoff}"
        if self.max_backoff < 0:
            yield "max_backoff", f"must be at least 0 seconds, not {self.max_backoff}"
        if self.deadline < 0:
            yield "retry_deadline", f"must be at least 0 seconds (0: no limit), not {self.deadline}"
        if self.attempts == 0 and self.deadline == 0:
            yield "retry_deadline", ("cannot be 0 while retry_attempts is 0 too: retry_attempts and "
                                     "retry_deadline cannot both be 0 (no limit); one of them must bound "
                                     "the retries")

    def retryable(self, error: BaseException, txn: Any = None) -> bool:
        """Whether *error* is worth another attempt, as ``transaction`` decides it.

        Pass the failed attempt's transaction *txn* before aborting it: the
        abort forgets which data managers had joined, and so who to ask.
        Only ``Exception``\\ s are retried, never ``KeyboardInterrupt``.
        """
        if not isinstance(error, Exception):
            return False
        if isinstance(error, TransientError):
            return True
        # The public question, as pyramid_tm asks it: TransientError, or a
        # joined data manager's should_retry().
        return txn is not None and bool(txn.isRetryableError(error))

    def start(self) -> float:
        """The clock's reading when a first attempt begins: what ``allows`` measures the deadline from."""
        return self.clock()

    def allows(self, attempt: int, started: float, delay: float = 0.0) -> bool:
        """Whether another attempt may follow failed attempt *attempt*, after pausing *delay*.

        *started* is ``start()`` of the first attempt. False once the count
        is reached, or when the next attempt would begin past the deadline.
        """
        if self.attempts and attempt >= self.attempts:
            return False
        return not self.deadline or self.clock() + delay - started <= self.deadline

    def delay(self, attempt: int) -> float:
        """The pause, in seconds, after failed attempt *attempt* (1 for the first)."""
        # min() first: 2 ** attempt grows past a float after about a thousand attempts.
        ceiling = min(self.backoff * 2 ** min(attempt - 1, 64), self.max_backoff)
        return self.uniform(0, ceiling) if ceiling > 0 else 0.0

    def pause(self, attempt: int) -> float:
        """Sleep ``delay(attempt)`` in this thread; returns how long (async code awaits ``delay``)."""
        seconds = self.delay(attempt)
        if seconds > 0:
            self.sleep(seconds)
        return seconds

    def limits(self, attempts: int | None = None) -> str:
        """The limits in words, for log lines: ``"of 5"``, ``"of up to 10 s"``, ``"of 5 or 10 s"``.

        *attempts* is the request's own count when it differs from the
        policy's (1 for a body that cannot be replayed).
        """
        attempts = self.attempts if attempts is None else attempts
        if not self.deadline or attempts == 1:
            return f"of {attempts}"
        if not attempts:
            return f"of up to {self.deadline:g} s"
        return f"of {attempts} or {self.deadline:g} s"

    def with_attempts(self, attempts: int) -> RetryPolicy:
        """The same policy with another number of attempts."""
        return dataclasses.replace(self, attempts=attempts)


#: The policy used where none is given: retried at once, for up to 10 s.
DEFAULT_POLICY = RetryPolicy()
