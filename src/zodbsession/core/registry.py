"""The scoped registry: the current request's connection and session, anywhere.

In the spirit of SQLAlchemy's ``scoped_session``, with four verbs (call,
``has``, ``set``, ``clear``) plus ``remove``. Scopes are kept in a
``contextvars.ContextVar`` by default, which is right for threads and for
asyncio tasks alike; a ``scopefunc`` gives custom scopes (one per greenlet,
say). The publisher sets the scope when a request starts and clears it when
the request ends, whatever happened.

``current_session`` and ``current_connection`` are module-level proxies onto
the default registry: code deep in an application can use them without the
session being passed down, and gets ``NoActiveRequest`` outside a request.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Hashable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

import transaction
from transaction.interfaces import NoTransaction
from ZODB.Connection import Connection

from zodbsession.core.errors import NoActiveRequest
from zodbsession.core.request_session import RequestSession

#: The kinds of per-transaction hook a scope holds, in the order they may run.
HookKind = Literal["before_commit", "after_commit", "after_abort"]
HOOK_KINDS: tuple[HookKind, ...] = ("before_commit", "after_commit", "after_abort")


@dataclass
class Scope:
    """What one attempt of a request (or one script's unit of work) sees.

    ``data`` is a scratch mapping for this attempt: a retried request gets a
    new scope, and so an empty ``data`` and no hooks, since the replayed
    application registers them again. The hooks (``before_commit``,
    ``after_commit``, ``after_abort``) are run by the request-transaction core
    (``zodbsession.core.transact``) once, for the request's final outcome:

    - ``before_commit``: at commit time, before the session is settled and
      checked; raising refuses the commit, which then ends as if the
      application had raised (an abort, 500, or a retry for a conflict);
    - ``after_commit``: only once the transaction really committed (a read
      whose empty transaction was aborted, as cheaper, counts as committed);
      one that raises is logged and counted, the request stays committed;
    - ``after_abort``: once the request's final outcome is an abort; never for
      an attempt that is retried, nor when the commit's outcome is unknown.

    Both ``after_`` kinds run after the transaction has ended: work in ZODB
    there needs a transaction (and a connection) of its own.

    With ``outer`` (a publisher joined to an outer transaction) the hooks go
    to that transaction's own hook lists, since its owner ends it. A scope
    set by hand (``registry.set``, a script's) runs no hooks: nothing ends
    it but ``remove``, which aborts.
    """

    connection: Connection
    session: RequestSession
    environ: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    outer: bool = False
    # {kind -> [(fn, args, kwargs)]}
    hooks: dict[str, list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]]] = field(
        default_factory=lambda: {"before_commit": [], "after_commit": [], "after_abort": []}, repr=False)

    @property
    def transaction_manager(self) -> transaction.TransactionManager:
        """The transaction manager the connection was opened with."""
        return self.connection.transaction_manager

    def before_commit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Call ``fn(*args, **kwargs)`` when the request commits; raising refuses the commit."""
        if self.outer:
            self.transaction_manager.get().addBeforeCommitHook(fn, args, kwargs)
        else:
            self.hooks["before_commit"].append((fn, args, kwargs))

    def after_commit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Call ``fn(*args, **kwargs)`` once the request's transaction has committed."""
        if self.outer:
            self.transaction_manager.get().addAfterCommitHook(_if_committed, (fn, args, kwargs))
        else:
            self.hooks["after_commit"].append((fn, args, kwargs))

    def after_abort(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Call ``fn(*args, **kwargs)`` once the request's final outcome is an abort."""
        if self.outer:
            self.transaction_manager.get().addAfterAbortHook(fn, args, kwargs)
        else:
            self.hooks["after_abort"].append((fn, args, kwargs))


def _if_committed(status: bool, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
                  ) -> None:
    # An outer transaction's after-commit hooks run for a failed commit too.
    if status:
        fn(*args, **kwargs)


class SessionRegistry:
    """Holds the current ``Scope``: per context by default, per *scopefunc* if given.

    Threading: safe to share. With the default ``ContextVar`` each thread and
    each asyncio task sees its own scope. With a *scopefunc* the scopes live
    in a dict keyed by its result; the caller must ``clear`` what it ``set``.
    """

    __slots__ = ("_var", "_scopefunc", "_scopes")

    def __init__(self, scopefunc: Callable[[], Hashable] | None = None) -> None:
        self._var: ContextVar[Scope | None] = ContextVar("zodbsession.scope", default=None)
        self._scopefunc = scopefunc
        self._scopes: dict[Hashable, Scope] = {}

    def __call__(self) -> Scope:
        """The current scope; ``NoActiveRequest`` when there is none."""
        scope = self._get()
        if scope is None:
            raise NoActiveRequest(
                "no zodbsession scope is active here: the current session and "
                "connection exist only while a request runs inside SessionPublisher"
            )
        return scope

    def has(self) -> bool:
        """Whether a scope is active."""
        return self._get() is not None

    def set(self, scope: Scope) -> None:
        """Make *scope* the current one."""
        if self._scopefunc is None:
            self._var.set(scope)
        else:
            self._scopes[self._scopefunc()] = scope

    def clear(self) -> None:
        """Forget the current scope, leaving its connection alone."""
        if self._scopefunc is None:
            self._var.set(None)
        else:
            self._scopes.pop(self._scopefunc(), None)

    def remove(self) -> None:
        """End the current scope: abort what is uncommitted, return the connection."""
        scope = self._get()
        if scope is None:
            return
        try:
            # An explicit manager after its commit has nothing to abort (it
            # raises NoTransaction); the connection must still go back to the pool.
            with contextlib.suppress(NoTransaction):
                scope.transaction_manager.abort()
            scope.connection.close()
        finally:
            self.clear()

    @property
    def connection(self) -> Connection:
        """The current scope's connection."""
        return self().connection

    @property
    def session(self) -> RequestSession:
        """The current scope's session."""
        return self().session

    def _get(self) -> Scope | None:
        if self._scopefunc is None:
            return self._var.get()
        return self._scopes.get(self._scopefunc())


#: The registry the publisher uses unless given another.
registry = SessionRegistry()


class _CurrentSession:
    """Proxy to the session of the default registry's current scope."""

    __slots__ = ()

    def _zodbsession_unwrap(self) -> Any:
        return registry.session._zodbsession_unwrap()

    def __getattr__(self, name: str) -> Any:
        return getattr(registry.session, name)

    def __getitem__(self, key: str) -> Any:
        return registry.session[key]

    def __setitem__(self, key: str, value: Any) -> None:
        registry.session[key] = value

    def __delitem__(self, key: str) -> None:
        del registry.session[key]

    def __contains__(self, key: object) -> bool:
        return key in registry.session

    def __iter__(self) -> Iterator[str]:
        return iter(registry.session)

    def __len__(self) -> int:
        return len(registry.session)

    def __repr__(self) -> str:
        return f"<current_session {registry.session!r}>" if registry.has() else "<current_session: none>"


class _CurrentConnection:
    """Proxy to the connection of the default registry's current scope."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        return getattr(registry.connection, name)

    def __repr__(self) -> str:
        if not registry.has():
            return "<current_connection: none>"
        return f"<current_connection {registry.connection!r}>"


current_session: Any = _CurrentSession()
current_connection: Any = _CurrentConnection()


def before_commit(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Run ``fn(*args, **kwargs)`` when the current request commits (``Scope.before_commit``)."""
    registry().before_commit(fn, *args, **kwargs)


def after_commit(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Run ``fn(*args, **kwargs)`` once the current request has committed (``Scope.after_commit``)."""
    registry().after_commit(fn, *args, **kwargs)


def after_abort(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Run ``fn(*args, **kwargs)`` once the current request has aborted (``Scope.after_abort``)."""
    registry().after_abort(fn, *args, **kwargs)
