"""``QuixoteSession``: Quixote's ``Session`` API over one request's zodbsession session.

Quixote code reads ``session.user``, calls ``set_user()``, ``has_info()``,
``get_csrf_token()`` and the form-token verbs, and keeps its own data as
attributes of a ``Session`` subclass. Here the data lives in the persistent
zodbsession session, as a mapping (``session["cart"]``), and this facade maps
Quixote's names onto the request's ``RequestSession``: nothing is looked up
until the view uses the session, and nothing is written unless it changes it,
so a page that only reads costs no write.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator, MutableMapping
from typing import Any

from quixote import get_param, get_request

from zodbsession import RequestSession, SessionManager

#: The session key holding Quixote's outstanding form tokens, oldest first.
FORM_TOKENS_KEY = "_quixote_form_tokens"

__all__ = ["FORM_TOKENS_KEY", "QuixoteSession"]


class QuixoteSession(MutableMapping[str, Any]):
    """What ``quixote.get_session()`` returns in a view: Quixote's session verbs, a mapping of data.

    - ``id``: the session id, None until the session is stored (as in
      Quixote, where a session gets its id when it first has information);
    - ``user`` / ``get_user()``: the user id bound to the session, or None;
      ``set_user(user_id)`` (or assigning ``user``) binds it and **rotates the
      session id**, the defence against fixation; ``set_user(None)`` unbinds
      it, keeping the data, and rotates too;
    - ``has_info()``: whether the session holds anything worth keeping;
      ``is_dirty()``: whether this request changed it;
    - ``get_csrf_token()`` and ``valid_csrf_token(name=None)``, and the form
      tokens of ``quixote.form`` (``create_form_token``, ``has_form_token``,
      ``remove_form_token``), all kept in the session;
    - ``get_creation_time()``, ``get_access_time()`` and their ages,
      ``get_remote_address()`` (the address of the current request: the
      session does not record the one it began from);
    - the data as a mapping; zodbsession's own verbs (``flash``, ``set_expiry``,
      ``save_changes`` after a nested value changed in place...) are forwarded.

    A user id is a short string (``InvalidUserId`` otherwise), not any object
    as Quixote allows: it is indexed to end a user's sessions. To end the
    session use ``get_session_manager().expire_session()``.

    Threading: belongs to the one request it was made for; a retried request
    gets a new one.
    """

    #: Quixote's bound on outstanding form tokens, kept.
    MAX_FORM_TOKENS = 16

    def __init__(self, request_session: RequestSession, manager: SessionManager) -> None:
        self._request_session = request_session
        self._manager = manager

    @property
    def request_session(self) -> RequestSession:
        """The zodbsession view behind this session."""
        return self._request_session

    # -- identity and the user ---------------------------------------------

    @property
    def id(self) -> str | None:
        """The session id, or None while the session is not stored (Quixote's meaning)."""
        rs = self._request_session
        return rs.id if rs._zodbsession_unwrap().is_stored else None

    @property
    def user(self) -> str | None:
        """The user id bound to the session, or None."""
        return self._request_session.user_id

    @user.setter
    def user(self, user: str | None) -> None:
        self.set_user(user)

    def get_user(self) -> str | None:
        """Quixote's accessor for ``user``."""
        return self.user

    def set_user(self, user: str | None) -> None:
        """Bind *user* (a user id) to the session, or unbind with None; the id rotates either way.

        Setting the user already bound changes nothing (no new id).
        """
        rs = self._request_session
        if user == rs.user_id:
            return
        if user is not None:
            rs.login(user)
            return
        session = rs._zodbsession_unwrap()
        self._manager.set_user(session, None)
        rs.rotate()

    def start_request(self) -> None:
        """Quixote's hook at the start of a request: ``REMOTE_USER`` for a bound user."""
        user = self.user
        if user is not None:
            get_request().environ["REMOTE_USER"] = user

    # -- what the session holds ----------------------------------------------

    def has_info(self) -> bool:
        """Whether the session holds anything worth keeping: a user or any data."""
        return self.user is not None or len(self._request_session) > 0

    def is_dirty(self) -> bool:
        """Whether this request changed the session, so that the commit stores it."""
        return self._request_session.written_session() is not None

    def get_creation_time(self) -> float:
        """When the session began, in seconds since the epoch."""
        return self._request_session.created

    def get_access_time(self) -> float:
        """When the session was last used, to the manager's ``access_resolution``."""
        return self._request_session._zodbsession_unwrap().last_access

    def get_creation_age(self, _now: float | None = None) -> float:
        """Seconds since the session began."""
        return (_now or time.time()) - self.get_creation_time()

    def get_access_age(self, _now: float | None = None) -> float:
        """Seconds since the session was last used."""
        return (_now or time.time()) - self.get_access_time()

    def get_remote_address(self) -> str | None:
        """The client address of the current request."""
        return get_request().get_environ("REMOTE_ADDR")  # type: ignore[no-any-return]

    # -- CSRF and form tokens ---------------------------------------------------

    def get_csrf_token(self) -> str:
        """The session's CSRF token, made (and so stored) on first use."""
        return self._request_session.get_csrf_token()

    def valid_csrf_token(self, name: str | None = None) -> bool:
        """Whether this POST carries the session's CSRF token in field *name* (default ``csrf_token``)."""
        if get_request().get_method() != "POST":
            return False
        value = get_param(name or "csrf_token", None)
        return bool(value) and self._request_session.check_csrf_token(value)

    def create_form_token(self) -> str:
        """A new token for one form, kept among the last ``MAX_FORM_TOKENS``."""
        token = secrets.token_hex(16)
        tokens = [*self._request_session.get(FORM_TOKENS_KEY, ()), token][-self.MAX_FORM_TOKENS:]
        self._request_session[FORM_TOKENS_KEY] = tokens
        return token

    def has_form_token(self, token: str) -> bool:
        """Whether *token* is outstanding."""
        return token in self._request_session.get(FORM_TOKENS_KEY, ())

    def remove_form_token(self, token: str) -> None:
        """Use *token* up (``ValueError`` if it is not outstanding, as in Quixote)."""
        tokens = list(self._request_session.get(FORM_TOKENS_KEY, ()))
        tokens.remove(token)
        self._request_session[FORM_TOKENS_KEY] = tokens

    # -- the data, delegated -------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        return self._request_session[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._request_session[key] = value

    def __delitem__(self, key: str) -> None:
        del self._request_session[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._request_session)

    def __len__(self) -> int:
        return len(self._request_session)

    def __contains__(self, key: object) -> bool:
        return key in self._request_session

    # A session is an entity: compared by identity, as Quixote's are.
    __eq__ = object.__eq__
    __ne__ = object.__ne__
    __hash__ = object.__hash__

    def __getattr__(self, name: str) -> Any:
        # Only reached for names not found here: zodbsession's own verbs.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._request_session, name)

    def __str__(self) -> str:
        user = self.user
        return f"session {self.id} ({'user ' + user if user else 'no user'})"

    def __repr__(self) -> str:
        return f"<QuixoteSession {self._request_session!r}>"
