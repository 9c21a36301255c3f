"""``SessionStore``: Django's session backend API over zodbsession's session container.

It behaves as Django's database backend does, verb for verb: ``load`` of an
unknown, expired or malformed key gives an empty session and forgets the
key (nothing is stored for it); ``save(must_create=True)`` raises
``CreateError`` for a key that exists, ``save()`` raises ``UpdateError`` for
one that no longer does (a concurrent logout is not undone); ``exists``
counts expired sessions not yet cleared; ``clear_expired`` is the sweep
``zodbsession expire`` runs. Keys are zodbsession ids (43 URL-safe
characters, 256 random bits), so ``zodbsession show KEY`` finds them.

Each verb is one function of a connection run by ``database.run``: inside
a ``SessionPublisher`` request it joins the request's transaction, anywhere
else it commits a short transaction of its own. The async verbs run the same
functions through ``asgiref.sync.sync_to_async`` (thread-sensitive, so the
request's connection is used from the thread that owns it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.contrib.sessions.backends.base import CreateError, SessionBase, UpdateError
from ZODB.Connection import Connection

from zodbsession.core.errors import DatabaseLocked, SessionLimitReached
from zodbsession.core.manager import SessionManager
from zodbsession.core.session import new_session_id
from zodbsession.core.store import SessionContainer, get_container
from zodbsession.django import database
from zodbsession.django.record import DjangoSession

T = TypeVar("T")
#: What ``database.run`` runs: a function of a connection and the manager.
Unit = Callable[[Connection, SessionManager], T]


class SessionStore(SessionBase):  # type: ignore[misc]  # Django is untyped
    """A Django session kept as a ``DjangoSession`` record in zodbsession's container.

    Use it with ``SESSION_ENGINE = "zodbsession.django"``. The logged-in
    user's id (``_auth_user_id``) is also recorded as the session's owner,
    so ``zodbsession revoke --user ID`` logs that user out everywhere.

    Threading: one instance per request, as Django makes them; the records
    it reads are copied out before its transaction ends, so the instance
    holds no persistent object.
    """

    # -- reading -------------------------------------------------------------

    def load(self) -> dict[str, Any]:
        """The stored data, or ``{}`` (forgetting the key) when no live session has it."""
        data = database.run(_reader(self.session_key, self._copy), write=False)
        if data is None:
            self._session_key: str | None = None  # SessionBase's attribute, which Django leaves untyped
            return {}
        return data

    async def aload(self) -> dict[str, Any]:
        """``load``, from async code."""
        return await sync_to_async(self.load)()

    def exists(self, session_key: str | None) -> bool:
        """Whether a session is stored under *session_key*, expired or not (as Django's db backend)."""
        if not session_key:
            return False
        return database.run(lambda conn, _manager: _stored(conn, session_key) is not None, write=False)

    async def aexists(self, session_key: str | None) -> bool:
        """``exists``, from async code."""
        return await sync_to_async(self.exists)(session_key)

    # -- writing ---------------------------------------------------------------

    def create(self) -> None:
        """Store a new, empty session under a fresh key (a collision draws another)."""
        while True:
            self._session_key = self._get_new_session_key()
            try:
                self.save(must_create=True)
            except CreateError:
                continue
            self.modified = True
            return

    async def acreate(self) -> None:
        """``create``, from async code."""
        while True:
            self._session_key = await self._aget_new_session_key()
            try:
                await self.asave(must_create=True)
            except CreateError:
                continue
            self.modified = True
            return

    def save(self, must_create: bool = False) -> None:
        """Store the data; *must_create*: only as a new session (else ``CreateError``).

        Without *must_create* only an existing session is updated: one
        deleted meanwhile (a logout in another request) raises
        ``UpdateError`` instead of coming back.
        """
        if self.session_key is None:
            return self.create()
        data = self._copy(self._get_session(no_load=must_create))
        expires = self.get_expiry_date().timestamp()
        database.run(self._writer(self._get_or_create_session_key(), data, expires, must_create),
                     write=True)

    async def asave(self, must_create: bool = False) -> None:
        """``save``, from async code."""
        if self.session_key is None:
            return await self.acreate()
        data = self._copy(await self._aget_session(no_load=must_create))
        expires = (await self.aget_expiry_date()).timestamp()
        writer = self._writer(await self._aget_or_create_session_key(), data, expires, must_create)
        await sync_to_async(database.run)(writer, write=True)

    def delete(self, session_key: str | None = None) -> None:
        """Remove the session under *session_key* (default: this one's); a missing one is fine."""
        if session_key is None:
            if self.session_key is None:
                return
            session_key = self.session_key

        def remove(conn: Connection, manager: SessionManager) -> None:
            record = _stored(conn, session_key)
            if isinstance(record, DjangoSession):
                manager.invalidate(record)

        database.run(remove, write=True)

    async def adelete(self, session_key: str | None = None) -> None:
        """``delete``, from async code."""
        await sync_to_async(self.delete)(session_key)

    @classmethod
    def clear_expired(cls) -> None:
        """Remove every expired session (``manage.py clearsessions``), in short batches.

        It is the janitor's sweep, so zodbsession's own expired sessions go
        too; see ``database.expire``. While a running server holds the
        FileStorage (``zodbsession serve``), the adapter cannot reach it (the
        control socket belongs to the server's layer): one line says so, as
        Django's ``CommandError``, instead of a traceback.
        """
        try:
            database.expire()
        except DatabaseLocked as exc:
            from django.core.management import CommandError

            raise CommandError(f"{exc} If that is `zodbsession serve`: its janitor already sweeps "
                               "expired sessions, and `zodbsession expire` (with the same settings) "
                               "sweeps now through the server's control socket.") from None

    @classmethod
    async def aclear_expired(cls) -> None:
        """``clear_expired``, from async code."""
        await sync_to_async(cls.clear_expired)()

    # -- keys ------------------------------------------------------------------

    def _get_new_session_key(self) -> str:
        """A fresh zodbsession id; a collision (256 random bits) is caught by ``must_create``."""
        return new_session_id()

    async def _aget_new_session_key(self) -> str:
        return new_session_id()

    # -- helpers ---------------------------------------------------------------

    def _copy(self, data: dict[str, Any]) -> dict[str, Any]:
        """*data* through the serializer and back: Django's types, and no object shared."""
        serializer = self.serializer()
        copied: dict[str, Any] = serializer.loads(serializer.dumps(data))
        return copied

    @staticmethod
    def _writer(key: str, data: dict[str, Any], expires: float, must_create: bool) -> Unit[None]:
        def write(conn: Connection, manager: SessionManager) -> None:
            container = _container(conn)
            record = container.get(key)
            if must_create:
                if record is not None:
                    raise CreateError
                if manager.max_sessions and len(container) >= manager.max_sessions:
                    raise SessionLimitReached(len(container), manager.max_sessions)
                record = DjangoSession(key, manager.clock())
                record.write(manager, data, expires)
                database.sessions_connection(conn).add(record)
                container.add(record, record.deadline(manager.idle_timeout, manager.max_lifetime))
            elif isinstance(record, DjangoSession):
                record.write(manager, data, expires)
            else:
                raise UpdateError
            manager.check_storable(record)

        return write


def _reader(session_key: str | None, copy: Callable[[dict[str, Any]], dict[str, Any]]
            ) -> Unit[dict[str, Any] | None]:
    """The unit of work of ``load``: a *copy* of the live record's data under *session_key*, or None.

    The copy is made inside the transaction, while the record is current:
    nothing Django gets shares an object with the connection's cache.
    """

    def read(conn: Connection, manager: SessionManager) -> dict[str, Any] | None:
        if session_key is None:
            return None
        record = _stored(conn, session_key)
        if not isinstance(record, DjangoSession) or not manager.is_live(record):
            return None
        return copy(record.data())

    return read


def _container(conn: Connection) -> SessionContainer:
    return get_container(database.sessions_connection(conn))


def _stored(conn: Connection, session_key: str) -> Any:
    """Whatever is stored under *session_key* (a Django session, another session), or None."""
    container = get_container(database.sessions_connection(conn), create=False)
    return None if container is None else container.get(session_key)
