"""``ZODBSessionManager``: a Quixote session manager whose sessions are zodbsession sessions.

Quixote's design, which zodbsession's own comes from: the session manager
owns persistence, and the publisher calls it once per request, to commit on
success (or a ``PublishError``) and to abort on any other failure. With ZODB
the transaction does the storing, and zodbsession's publisher owns it: the
manager's hooks decide which way the request's transaction ends, and the
publisher commits or aborts it once the response is complete, retrying a
conflict with the request replayed. Quixote's cookie handling is not used:
the publisher sends the session cookie when a session is created, rotated or
ended.

The hooks, by Quixote 3.8's names and the Quixote 2 names kept for old code
(a subclass overriding ``save_changes`` or ``forget_changes`` is still called):

=====================================  ==================  ==============================
Quixote calls                          which calls         the request's transaction
=====================================  ==================  ==============================
``start_request()``                    ``get_session()``   (the session, looked up lazily)
``commit_changes(session)``: success,  ``save_changes``    commits, once the body is done
a ``PublishError`` (403, 404, 302...)
``abort_changes(session)``: any other  ``forget_changes``  aborted now; the error page is
exception                                                  rendered in a fresh transaction,
                                                           which is aborted too
``expire_session()``                   -                   the session ends (cookie deleted)
=====================================  ==================  ==============================

The last hook called decides: a view that calls ``forget_changes`` and then
succeeds commits what it did after the call.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

from quixote import get_request
from quixote.session import BaseSessionManager

from zodbsession import NoActiveRequest, RequestSession, Session, SessionManager
from zodbsession.quixote.data import connection
from zodbsession.quixote.session import QuixoteSession

#: The environ key where the hooks leave their decision for the publisher's commit veto.
DECISION_KEY = "zodbsession.quixote.decision"

#: What the request's transaction does at the end, as the manager's hooks decided.
Decision = Literal["commit", "abort"]

__all__ = ["DECISION_KEY", "Decision", "ZODBSessionManager", "decision_of"]


class ZODBSessionManager(BaseSessionManager):  # type: ignore[misc]  # Quixote ships no type information
    """Quixote's session manager on zodbsession: ``Publisher(root, session_manager=ZODBSessionManager())``.

    *session_class* (``QuixoteSession`` or a subclass) is what
    ``get_session()`` returns; *manager* is zodbsession's session policy
    (timeouts, limits), which the publisher running the requests must share:
    ``make_app`` sees to that. The mapping methods (``in``, ``get``, ``del``)
    work on the current request's connection (``zodbsession.quixote.connection()``).

    Threading: one manager serves every thread; what it knows of a request
    is in that request (its environ, its session), never on the manager.
    """

    def __init__(self, session_class: type[QuixoteSession] | None = None, *,
                 manager: SessionManager | None = None) -> None:
        super().__init__(session_class=session_class or QuixoteSession)
        self.manager = manager if manager is not None else SessionManager()

    # -- Quixote's hooks into the request ------------------------------------

    def start_request(self) -> None:
        """Give the request its session; nothing is read until the view (or a bound user) needs it."""
        request = get_request()
        session = self.get_session()
        request.session = session
        session.start_request()

    def get_session(self) -> QuixoteSession:
        """The current request's session, as ``session_class``, over zodbsession's ``RequestSession``.

        Found by the publisher from the request's cookie (or started, and
        stored on its first write); ``NoActiveRequest`` when the Quixote
        application is not running inside a zodbsession publisher.
        """
        environ = get_request().environ
        request_session = environ.get("zodbsession.session")
        if not isinstance(request_session, RequestSession):
            raise NoActiveRequest("no zodbsession session in this request: serve the Quixote "
                                  "application through zodbsession.quixote.make_app (or zodbsession serve)")
        session: QuixoteSession = self.session_class(request_session, self.manager)
        return session

    def maintain_session(self, session: QuixoteSession) -> None:
        """Nothing to do: the transaction stores what changed, and the publisher sends the cookie."""

    def commit_changes(self, session: QuixoteSession | None) -> None:
        """Quixote 3's hook on success or a ``PublishError``: the transaction will commit."""
        self.save_changes(session)

    def abort_changes(self, session: QuixoteSession | None) -> None:
        """Quixote 3's hook on any other failure: the transaction is aborted."""
        self.forget_changes(session)

    def save_changes(self, session: QuixoteSession | None) -> None:
        """Quixote 2's name for ``commit_changes``: the request's transaction commits at its end.

        Unlike ``session.save_changes()``, which marks a session whose nested
        value was changed in place, this marks nothing: the commit stores what
        changed (and zodbsession finds in-place changes by itself).
        """
        _decide("commit")

    def forget_changes(self, session: QuixoteSession | None) -> None:
        """Quixote 2's name for ``abort_changes``: abort the request's transaction now.

        This session's changes and the application's own are forgotten; the
        request goes on in a fresh transaction, which commits only if a later
        hook says so.
        """
        _decide("abort")
        request_session = get_request().environ.get("zodbsession.session")
        if isinstance(request_session, RequestSession):
            request_session.forget_changes()

    def expire_session(self) -> None:
        """End the current session: removed on the server, its cookie deleted, and None for the request."""
        request = get_request()
        session = request.session
        if session is not None:
            session.request_session.invalidate()
        request.session = None

    # -- the mapping of sessions, on the request's connection ----------------

    def get(self, session_id: str, default: Any = None) -> Session | Any:
        """The live stored session with this id (zodbsession's ``Session``), or *default*."""
        session = self.manager.get(connection(), session_id)
        return default if session is None else session

    def __contains__(self, session_id: object) -> bool:
        return self.manager.get(connection(), session_id) is not None

    def __delitem__(self, session_id: str) -> None:
        """End the session with this id (``KeyError`` if there is none)."""
        if not self.manager.revoke(connection(), session_id):
            raise KeyError(session_id)

    def __setitem__(self, session_id: str, session: Any) -> None:
        raise TypeError("sessions are stored by the request's commit, not by assignment")

    def __iter__(self) -> Iterator[Any]:
        raise TypeError("iterating over every session in a request does not scale: "
                        "use `zodbsession ls` or zodbsession.maintenance")


def _decide(decision: Decision) -> None:
    get_request().environ[DECISION_KEY] = decision


def decision_of(environ: dict[str, Any]) -> Decision | None:
    """What the manager's hooks decided for this attempt's transaction (None: no hook ran)."""
    decision: Decision | None = environ.get(DECISION_KEY)
    return decision
