"""The persistent container of sessions and its two indexes.

``SessionContainer`` lives under one key of a database root and holds:

- ``sessions``: an ``OOBTree`` from session id to ``Session``. Ids are random,
  so concurrent inserts land in different buckets and merge without conflict.
- ``count``: a ``BTrees.Length`` whose concurrent increments merge.
- ``expiry``: an ``OOTreeSet`` of ``(slot, session_id)`` pairs, where *slot*
  is the session's earliest possible deadline rounded up to a whole
  ``EXPIRY_SLOT_SECONDS``. A sweep reads only the due prefix of this set, so
  expiring costs in proportion to what has expired, not to what exists.
- ``by_user``: an ``OOBTree`` from user id to an ``OOTreeSet`` of that
  user's session ids, so that all of them can be revoked at once.

The expiry index is deliberately lazy: touching a session does not move its
entry (that would be a write on every access). The sweep re-checks every due
entry and re-files the sessions that are still live. Entries whose session
was removed by other means are dropped when the sweep reaches them.

Its invariant: every stored session has an entry in a slot no later than its
deadline's, so the sweep never reaches a session late. Use only moves a
deadline later; a session's own expiry (``SessionManager.set_expiry``) can
move it earlier, and then files the earlier slot at once. A session may so
have several entries; each is re-checked when due.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Literal, cast, overload

from BTrees.Length import Length
from BTrees.OOBTree import OOBTree, OOTreeSet
from persistent import Persistent
from ZODB.Connection import Connection

from zodbsession.core.session import Session

#: The database root key under which the container lives.
ROOT_KEY = "zodbsession.sessions"

#: Width of one expiry slot: a session is swept at most this long after its
#: deadline (it is never *returned* after it). Sessions created within the
#: same slot share its prefix, and their random ids spread the inserts
#: across that prefix's buckets.
EXPIRY_SLOT_SECONDS = 10


def expiry_slot(deadline: float) -> int:
    """The slot a deadline is filed under: due once ``now >= slot * width``."""
    return math.ceil(deadline / EXPIRY_SLOT_SECONDS)


class SessionContainer(Persistent):  # type: ignore[misc]  # persistent is untyped
    """Every stored session of one database, with its indexes.

    The container only keeps its structures consistent; policy (timeouts,
    access resolution, when to sweep) belongs to ``SessionManager``.
    """

    def __init__(self) -> None:
        self.sessions = OOBTree()  # {session_id -> Session}
        self.count = Length()
        self.expiry = OOTreeSet()  # {(slot, session_id)}
        self.by_user = OOBTree()  # {user_id -> OOTreeSet(session_id)}

    def __len__(self) -> int:
        return cast(int, self.count())

    def get(self, session_id: str) -> Session | None:
        """The stored session with this id, live or not, or None."""
        return cast("Session | None", self.sessions.get(session_id))

    def add(self, session: Session, deadline: float) -> None:
        """Store a new session and index it."""
        self.sessions[session.id] = session
        self.count.change(1)
        self.file_expiry(session.id, deadline)
        if session.user_id is not None:
            self._link_user(session.user_id, session.id)

    def remove(self, session: Session) -> None:
        """Drop a session and its user-index entry.

        Its expiry entry is left for the sweep to discard: finding it would
        cost a search, and an entry without a session is harmless.
        """
        del self.sessions[session.id]
        self.count.change(-1)
        if session.user_id is not None:
            self._unlink_user(session.user_id, session.id)

    def rename(self, session: Session, new_id: str, deadline: float) -> None:
        """Move a session to a new id, keeping its object and data."""
        del self.sessions[session.id]
        if session.user_id is not None:
            self._unlink_user(session.user_id, session.id)
        session.id = new_id
        self.sessions[new_id] = session
        self.file_expiry(new_id, deadline)
        if session.user_id is not None:
            self._link_user(session.user_id, new_id)

    def set_user(self, session: Session, user_id: str | None) -> None:
        """Change a stored session's owner, keeping the user index right."""
        if session.user_id == user_id:
            return
        if session.user_id is not None:
            self._unlink_user(session.user_id, session.id)
        session.user_id = user_id
        if user_id is not None:
            self._link_user(user_id, session.id)

    def file_expiry(self, session_id: str, deadline: float) -> None:
        """Index a session under the slot of its (earliest) deadline."""
        self.expiry.add((expiry_slot(deadline), session_id))

    def due(self, now: float) -> Iterator[tuple[int, str]]:
        """The expiry entries whose slot has passed at *now*, oldest first."""
        last_due_slot = math.floor(now / EXPIRY_SLOT_SECONDS)
        return iter(self.expiry.keys(max=(last_due_slot + 1,), excludemax=True))

    def user_session_ids(self, user_id: str) -> list[str]:
        """The ids of every stored session of one user."""
        ids = self.by_user.get(user_id)
        return list(ids) if ids is not None else []

    def _link_user(self, user_id: str, session_id: str) -> None:
        ids = self.by_user.get(user_id)
        if ids is None:
            ids = self.by_user[user_id] = OOTreeSet()
        ids.add(session_id)

    def _unlink_user(self, user_id: str, session_id: str) -> None:
        ids = self.by_user.get(user_id)
        if ids is None:
            return
        ids.discard(session_id)
        if not ids:
            del self.by_user[user_id]


@overload
def get_container(connection: Connection, *, create: Literal[True] = True) -> SessionContainer: ...


@overload
def get_container(connection: Connection, *, create: bool) -> SessionContainer | None: ...


def get_container(connection: Connection, *, create: bool = True) -> SessionContainer | None:
    """The container in this connection's root, made on first use if *create*.

    Creating it is a write; scripts that only inspect pass ``create=False``.
    """
    root = connection.root()
    container: SessionContainer | None = root.get(ROOT_KEY)
    if container is None and create:
        container = root[ROOT_KEY] = SessionContainer()
    return container
