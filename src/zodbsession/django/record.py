"""``DjangoSession``: how one Django session is kept in zodbsession's container.

A Django session is a ``Session`` like any other, filed in the same
``SessionContainer``, so ``zodbsession ls``, ``show``, ``revoke`` and the
janitor see it. Django decides when it ends (``SESSION_COOKIE_AGE``,
``set_expiry``) and computes that moment afresh at every save; the record
takes it as the session's own expiry, an absolute moment
(``SessionManager.set_expiry(session, datetime)``), which replaces the
manager's idle timeout and maximum lifetime and is filed early in the
expiry index when a save shortens it.

The data is the session dictionary after one pass through Django's
``SESSION_SERIALIZER`` (JSON by default), so what is stored, and what a later
load returns, has exactly the types Django's own backends give back.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from zodbsession.core.errors import InvalidUserId
from zodbsession.core.manager import SessionManager
from zodbsession.core.session import Session, check_user_id

#: The session key Django's auth stores the user's primary key under.
AUTH_USER_KEY = "_auth_user_id"


class DjangoSession(Session):
    """A session written by Django's session backend; its own class keeps the two apart.

    The backend loads, updates and deletes only these: a zodbsession id
    sent in Django's cookie finds no Django session, and a Django save
    never overwrites a session the publisher made.

    Threading: like every persistent object, it belongs to the connection
    that loaded it.
    """

    def write(self, manager: SessionManager, data: dict[str, Any], expires: float) -> None:
        """Replace the data, the deadline and the owner, as one Django ``save()`` does.

        *expires* is Django's ``get_expiry_date()`` in seconds since the
        epoch. The owner is the data's ``_auth_user_id`` when it is a usable
        user id (else the session has none: a session is never refused for it).
        """
        self._data = data
        self.changed()
        manager.set_expiry(self, datetime.fromtimestamp(expires, UTC))
        manager.set_user(self, _owner(data.get(AUTH_USER_KEY)))

    def __repr__(self) -> str:
        return f"<DjangoSession {self.id[:8]}... user={self.user_id!r}>"


def _owner(value: object) -> str | None:
    if value is None:
        return None
    try:
        check_user_id(str(value))
    except InvalidUserId:
        return None
    return str(value)
