"""``request.session`` for Pyramid: an ``ISession`` over a ``RequestSession``, and its cookie.

``PyramidSession`` is the thin ``ISession`` face of the core's request session;
``CookieDecision`` watches ``request.tm`` and decides, from the transactions that
commit, what the response's ``Set-Cookie`` must say.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import transaction
from pyramid.interfaces import ISession
from pyramid.request import Request
from pyramid.response import Response
from zope.interface import implementer

from zodbsession.core.attempt import SessionUse
from zodbsession.core.request_session import RequestSession
from zodbsession.core.session_dict import SessionDict
from zodbsession.web.headers import session_headers

if TYPE_CHECKING:
    from zodbsession.pyramid.settings import ZodbSessions
    from zodbsession.web.cookies import MaxAge


@implementer(ISession)
class PyramidSession(SessionDict):
    """``request.session``: Pyramid's ``ISession`` over the request's ``RequestSession``.

    Everything else zodbsession's session offers (``login``, ``rotate``,
    ``user_id``, the expiry verbs...) is reachable as an attribute too, and
    the underlying view is ``request_session``. Values need not be JSON: they
    are pickled by ZODB, so persistent objects and plain Python values alike
    can be stored. A nested value changed in place is found and saved at the
    commit (the manager's ``unsaved_changes`` policy); ``changed()`` says so
    explicitly, as Pyramid asks.

    Like Pyramid's own cookie sessions it is an actual ``dict`` (a
    ``SessionDict``: ``json.dumps(request.session)`` works), whose every
    method is the session's; it is made on the first use of
    ``request.session``, which looks the cookie's session up then.

    Threading: belongs to the one request it was made for.
    """

    def __init__(self, request_session: RequestSession, decision: CookieDecision | None = None) -> None:
        super().__init__()
        self._decision = decision
        request_session.add_face(self)

    # -- ISession's attributes and special methods ----------------------------

    @property
    def created(self) -> float:
        """When the session was started (epoch seconds)."""
        return self.request_session.created

    @property
    def new(self) -> bool:
        """Whether the session was started in this request rather than found."""
        return self.request_session.is_new

    def invalidate(self) -> None:
        """End the session on the server; later use in this request starts a new one."""
        self.request_session.invalidate()

    def changed(self) -> None:
        """Mark the session changed, after mutating a nested value in place."""
        self.request_session.save_changes()

    def forget_changes(self) -> None:
        """Abort the request's transaction (the session's changes and all others) and go on in a new one.

        pyramid_tm commits the new transaction at the end of the request.
        """
        self.request_session.forget_changes()
        if self._decision is not None:
            self._decision.follow_next_transaction()

    def login(self, user_id: str) -> None:
        """Bind the session to *user_id*: a new session id and a new CSRF token.

        Both change, as Django's ``auth.login`` does: a token seen before the
        login (by whoever planted the session) must not be valid after it.
        """
        self.request_session.login(user_id)
        self.new_csrf_token()

    # -- flash messages and CSRF: the core session's ---------------------------

    def flash(self, msg: Any, queue: str = "", allow_duplicate: bool = True) -> None:
        """Append *msg* to the flash *queue* (unless it is there and duplicates are refused)."""
        self.request_session.flash(msg, queue, allow_duplicate)

    def peek_flash(self, queue: str = "") -> list[Any]:
        """The messages of the flash *queue*, left in place."""
        return self.request_session.peek_flash(queue)

    def pop_flash(self, queue: str = "") -> list[Any]:
        """The messages of the flash *queue*, removed from the session."""
        return self.request_session.pop_flash(queue)

    def new_csrf_token(self) -> str:
        """A fresh CSRF token bound to this session, replacing the previous one."""
        return self.request_session.new_csrf_token()

    def get_csrf_token(self) -> str:
        """This session's CSRF token, made now if it has none."""
        return self.request_session.get_csrf_token()

    def __repr__(self) -> str:
        return f"<PyramidSession {self.request_session!r}>"


class CookieDecision:
    """Decides one request's ``Set-Cookie`` from the transactions that commit.

    A transaction synchronizer on ``request.tm``: each transaction of the
    request gets a before-commit hook that settles the session, checks that
    it can be stored and records what the cookie must say; only a commit that
    succeeds makes that the answer. A transaction that aborts decides nothing,
    so a rolled-back login sends no cookie.

    Threading: belongs to one request.
    """

    def __init__(self, sessions: ZodbSessions, request_session: RequestSession,
                 tm: transaction.interfaces.ITransactionManager) -> None:
        self.sessions = sessions
        self.request_session = request_session
        self.tm = tm
        # (cookie_to_send(), cookie_max_age()) as the last commit left them
        self.decided: tuple[str | bool | None, MaxAge] = (None, None)

    # ISynchronizer
    def newTransaction(self, txn: transaction.interfaces.ITransaction) -> None:  # noqa: N802
        txn.addBeforeCommitHook(self._before_commit, (txn,))

    def follow_next_transaction(self) -> None:
        """After an abort in mid-request: watch the transaction the request goes on in.

        An explicit manager's ``begin`` announces it (``newTransaction``); an
        implicit one makes it on first use, unannounced, so it is made now.
        """
        if not self.tm.explicit:
            self.newTransaction(self.tm.get())

    def beforeCompletion(self, txn: Any) -> None:  # noqa: N802
        pass

    def afterCompletion(self, txn: Any) -> None:  # noqa: N802
        pass

    def _before_commit(self, txn: Any) -> None:
        hooks = list(txn.getBeforeCommitHooks())
        if hooks and hooks[-1][0] != self._before_commit:
            # Others were registered after this one (the app's, through the
            # scope's before_commit): they may still change the session, so
            # settle and decide after them, last.
            txn.addBeforeCommitHook(self._before_commit, (txn,))
            return
        session = self.request_session
        settle = getattr(session, "settle", None)
        if settle is not None:
            settle()
        written = session.written_session()
        if written is not None:
            # A value that cannot be stored fails here, naming its key.
            self.sessions.manager.check_storable(written)
        decided = (session.cookie_to_send(), session.cookie_max_age())
        txn.addAfterCommitHook(self._after_commit, (decided,))

    def _after_commit(self, committed: bool, decided: tuple[str | bool | None, MaxAge]) -> None:
        if committed:
            self.decided = decided

    def set_cookie(self, request: Request, response: Response) -> None:
        """The response callback: the headers a response built from the session carries.

        ``zodbsession.web.headers`` decides them, as for every front door:
        the ``Set-Cookie`` the committed session asks for, ``Vary: Cookie``
        when the request used the session, ``Cache-Control: private`` with a
        ``Set-Cookie``.
        """
        cookie, max_age = self.decided
        use = SessionUse(cookie, max_age, used=self.request_session.used)
        response.headerlist[:] = session_headers(response.headerlist, self.sessions.cookie, use,
                                                 https=request.scheme == "https")
