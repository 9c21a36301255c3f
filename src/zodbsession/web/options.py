"""``FrontDoorOptions``: how a front door runs its requests, one frozen, validated object.

Both doors (``SessionPublisher``, ``SessionMiddleware``) take the same
options, and the settings (``config``'s ``[publisher]`` section) build them:
a new option is a field here, and only here. The object checks its own rules
(``_problems``), naming the field; callers that know the option by another
name (a settings key) re-key the error rather than restate the rule.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from zodbsession.core.errors import ConfigError
from zodbsession.core.locks import MAX_WAITING, WAIT_TIMEOUT
from zodbsession.core.retry import RetryPolicy

#: The longest back-off between two attempts, in seconds, however many are allowed:
#: the doubling would otherwise hold a request for seconds at ten attempts.
MAX_BACKOFF = 0.5

#: The largest request body accepted, by default: 10 MiB.
MAX_REQUEST_BODY = 10 << 20


@dataclass(frozen=True)
class FrontDoorOptions:
    """How a front door retries, buffers, bounds and queues its requests.

    - ``retry``: the conflict retries (``RetryPolicy``: until the request
      commits, within ``attempts`` and ``deadline`` seconds). ``of()`` builds
      it from the three numbers the settings name: ``retry_attempts``,
      ``retry_backoff``, ``retry_deadline``.
    - ``max_replay_bytes``: the largest body kept for a retry; a larger one
      gets one attempt.
    - ``streaming``: commit at the first chunk of the body and send the rest
      as it comes (see the doors' docstrings for what that gives up).
    - ``serialize_same_session``: writes (and retries) on one session take
      turns in this process (``locks.takes_turn``).
    - ``max_request_body``: the largest body accepted (None: no limit); a
      larger one is answered 413.
    - ``max_waiting_per_session``, ``session_wait_timeout``: the bound on the
      queue behind one session (None: unbounded); past it 429, or 503.
    """

    retry: RetryPolicy = field(default_factory=lambda: RetryPolicy(max_backoff=MAX_BACKOFF))
    max_replay_bytes: int = 1 << 20
    streaming: bool = False
    serialize_same_session: bool = True
    max_request_body: int | None = MAX_REQUEST_BODY
    max_waiting_per_session: int | None = MAX_WAITING
    session_wait_timeout: float | None = WAIT_TIMEOUT

    def __post_init__(self) -> None:
        for attribute, problem in self._problems():
            raise ConfigError(attribute, problem)

    @classmethod
    def of(cls, *, retry_attempts: int | None = None, retry_backoff: float | None = None,
           retry_deadline: float | None = None, **options: Any) -> FrontDoorOptions:
        """Options from keywords, the retry given as its three numbers (the settings' names) or as ``retry``.

        An unknown keyword is a ``TypeError`` naming it; a bad value a
        ``ConfigError`` naming the option.
        """
        if (retry_attempts, retry_backoff, retry_deadline) != (None, None, None):
            if "retry" in options:
                raise TypeError("give retry= or retry_attempts/retry_backoff/retry_deadline, not both")
            default = RetryPolicy()
            options["retry"] = RetryPolicy(
                default.attempts if retry_attempts is None else retry_attempts,
                default.backoff if retry_backoff is None else retry_backoff,
                MAX_BACKOFF,
                default.deadline if retry_deadline is None else retry_deadline)
        unknown = set(options) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"unknown front-door option(s): {', '.join(sorted(unknown))}")
        return cls(**options)

    def _problems(self) -> Iterator[tuple[str, str]]:
        if not isinstance(self.retry, RetryPolicy):
            yield "retry", f"must be a RetryPolicy, not {self.retry!r}"
        if self.max_replay_bytes < 0:
            yield "max_replay_bytes", f"must be at least 0, not {self.max_replay_bytes}"
        if self.max_request_body is not None and self.max_request_body < 0:
            yield "max_request_body", f"must be at least 0 (or None), not {self.max_request_body}"
        if self.max_waiting_per_session is not None and self.max_waiting_per_session < 0:
            yield "max_waiting_per_session", ("must be at least 0 (or None), "
                                              f"not {self.max_waiting_per_session}")
        if self.session_wait_timeout is not None and not self.session_wait_timeout > 0:
            yield "session_wait_timeout", ("must be above 0 seconds (or None), "
                                           f"not {self.session_wait_timeout}")


def front_door_options(options: FrontDoorOptions | None, keywords: dict[str, Any]) -> FrontDoorOptions:
    """A door's options: *options* as given, or built from its keyword arguments (``FrontDoorOptions.of``)."""
    if options is None:
        return FrontDoorOptions.of(**keywords)
    if keywords:
        raise TypeError(f"give options= or keyword options ({', '.join(sorted(keywords))}), not both")
    return options
