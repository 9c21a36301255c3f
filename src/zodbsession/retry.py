"""``RetryPolicy``: how many times a transaction is tried, how long to wait between, and what is retried.

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
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from transaction.interfaces import TransientError


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts, back-off and retryability, checked where it is built.

    Threading: immutable; one policy may be shared by every thread. The
    random source and the sleep are fields so that a test can make them
    deterministic.
    """

    attempts: int = 5
    backoff: float = 0.01
    max_backoff: float = 0.5
    uniform: Callable[[float, float], float] = field(default=random.uniform, repr=False, compare=False)
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"retry_attempts must be at least 1, not {self.attempts}")
        if self.backoff < 0:
            raise ValueError(f"retry_backoff must be at least 0 seconds, not {self.backoff}")
        if self.max_backoff < 0:
            raise ValueError(f"max_backoff must be at least 0 seconds, not {self.max_backoff}")

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
        for resource in getattr(txn, "_resources", ()) or ():
            should_retry = getattr(resource, "should_retry", None)
            if should_retry is not None and should_retry(error):
                return True
        return False

    def delay(self, attempt: int) -> float:
        """The pause, in seconds, after failed attempt *attempt* (1 for the first)."""
        ceiling = min(self.backoff * 2 ** (attempt - 1), self.max_backoff)
        return self.uniform(0, ceiling) if ceiling > 0 else 0.0

    def pause(self, attempt: int) -> float:
        """Sleep ``delay(attempt)`` in this thread; returns how long (async code awaits ``delay``)."""
        seconds = self.delay(attempt)
        if seconds > 0:
            self.sleep(seconds)
        return seconds

    def with_attempts(self, attempts: int) -> RetryPolicy:
        """The same policy with another number of attempts."""
        return RetryPolicy(attempts, self.backoff, self.max_backoff, self.uniform, self.sleep)


#: The policy used where none is given: five attempts, 10 ms doubling to at most 0.5 s.
DEFAULT_POLICY = RetryPolicy()
