"""``DjangoSession``: how one Django session is kept in zodbsession's container.

A Django session is a ``Session`` like any other, filed in the same
``SessionContainer``, so ``zodbsession ls``, ``show``, ``revoke`` and the
janitor see it. What differs is who decides when it ends: Django does
(``SESSION_COOKIE_AGE``, ``set_expiry``), and it decides an absolute moment
at every save. The record keeps that moment as its deadline, in place of the
manager's idle timeout and maximum lifetime, which govern zodbsession's own
sessions only.

The data is the session dictionary after one pass through Django's
``SESSION_SERIALIZER`` (JSON by default), so what is stored, and what a later
load returns, has exactly the types Django's own backends give back.
"""

from __future__ import annotations

import math
from typing import Any

from zodbsession.session import Session
from zodbsession.store import SessionContainer


class DjangoSession(Session):
    """A session whose end is the absolute moment Django computed at its last save.

    ``expires`` is that moment (seconds since the epoch). The expiry index
    only ever learns of deadlines that grow lazily (the sweep re-files a
    session found still live), so a save that *shortens* the deadline files
    a new index entry itself: ``_filed`` remembers the earliest deadline
    filed, and a new entry is added only when the new deadline comes before
    it, or when that entry is already due (the sweep has re-filed it at a
    deadline this record does not know). Each session so keeps one or two
    index entries, however often it is saved.

    Threading: like every persistent object, it belongs to the connection
    that loaded it.
    """

    # Class-level defaults keep records readable if attributes are added later.
    expires: float = 0.0
    _filed: float = math.inf

    def deadline(self, idle_timeout: float, max_lifetime: float) -> float:
        """The moment Django said this session ends; the manager's timeouts do not apply."""
        return self.expires

    def is_live(self, now: float) -> bool:
        """Whether Django's deadline is still ahead at *now*."""
        return now < self.expires

    def write(
        self,
        container: SessionContainer,
        data: dict[str, Any],
        expires: float,
        now: float,
        user_id: str | None,
    ) -> None:
        """Replace the data, the deadline and the owner, as one Django ``save()`` does."""
        self._data = data
        self._p_changed = True
        self.touch(now, 0.0)
        self.expires = expires
        if expires < self._filed or self._filed <= now:
            container.file_expiry(self.id, expires)
            self._filed = expires
        container.set_user(self, user_id)

    def data_copy(self) -> dict[str, Any]:
        """The data as a new dictionary; callers pass it through the serializer for a deep copy."""
        return dict(self._data)

    def __repr__(self) -> str:
        return f"<DjangoSession {self.id[:8]}... user={self.user_id!r}>"
