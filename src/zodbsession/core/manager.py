"""``SessionManager``: the session policy an application or a script holds.

The manager owns the rules (timeouts, access resolution, the clock) and the
lifecycle verbs: find, create, rotate, revoke, expire, the classic
``save_changes`` / ``forget_changes`` pair, and each session's own expiry
(``set_expiry`` and its readers, Django's verbs). It keeps no connection of
its own: every verb works on the connection it is given, or on the one the
session was loaded through, so one manager serves every thread of a server
and any maintenance script alike.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from typing import Any, Literal, Protocol, overload

from ZODB.Connection import Connection

from zodbsession.core.budget import AddressBudget
from zodbsession.core.errors import ConfigError, SessionLimitReached
from zodbsession.core.limits import measure
from zodbsession.core.merge import REMOVED_ENDED, REMOVED_IDLE
from zodbsession.core.observe import EventKind, Observers, SessionEvent
from zodbsession.core.session import (
    MAX_USER_ID_LENGTH,
    ExpiryValue,
    Session,
    check_user_id,
    expiry_choice,
    ids_equal,
    is_well_formed_id,
    new_session_id,
)
from zodbsession.core.store import EXPIRY_SLOT_SECONDS, SessionContainer, expiry_slot, get_container
from zodbsession.core.unsaved import UNSAVED_POLICIES, UnsavedPolicy
from zodbsession.core.work import ATTEMPTS, run_batches

Clock = Callable[[], float]

__all__ = ["MAX_USER_ID_LENGTH", "Clock", "Progress", "SessionManager"]

#: How many of the oldest expiry entries the cap's eviction looks through for an anonymous session.
EVICTION_SCAN = 64


class Progress(Protocol):
    """What long maintenance work reports to: called with the count done so far."""

    def __call__(self, done: int, /) -> None: ...


@dataclass(frozen=True)
class SessionManager:
    """Finds, creates, rotates, revokes and expires sessions.

    Timeouts are in seconds. ``idle_timeout`` ends a session that has not been
    used for that long; ``max_lifetime`` ends any session that old, used or
    not. ``access_resolution`` bounds how often a read records the access
    time: a session whose recorded access is younger than that is read with
    no write at all, at the price of expiring up to that much early.

    ``database`` names the database of a multi-database setup that holds the
    sessions (None: the connection's own). The manager is immutable and
    thread-safe; the sessions it returns belong to the caller's connection.

    ``max_sessions`` (0: no limit) caps the stored sessions: the first write
    to a new session raises ``SessionLimitReached`` when that many are
    stored. The count is the container's conflict-free ``Length`` as this
    transaction sees it, so concurrent creations can overshoot the cap by
    up to the number of requests creating sessions at once; expired sessions
    count until the janitor sweeps them. ``max_session_bytes`` (0: no limit)
    caps the pickled size of one session's data, checked by ``check_storable``.

    ``new_per_address_per_minute`` (0: no budget) is how many new sessions
    and logins one client address may start a minute, while ``max_sessions``
    is set (``budget.AddressBudget``; the address is the request's, so
    scripts are never charged); past it ``TooManyNewSessions`` (503).

    ``unsaved_changes`` says what a request's ``settle`` does with a found
    session's data changed in place but never marked changed: ``"save"``
    it (the default), ``"warn"`` (save it and log a WARNING naming the keys)
    or ``"error"`` (raise ``UnsavedSessionChanges``); see ``zodbsession.core.unsaved``.

    ``observers`` receives a ``SessionEvent`` for each session created,
    rotated, invalidated, revoked or expired, once the transaction that did
    it has committed; nothing is reported for a transaction that aborts.
    """

    idle_timeout: float = 1800.0
    max_lifetime: float = 8 * 3600.0
    access_resolution: float = 60.0
    database: str | None = None
    max_sessions: int = 0
    max_session_bytes: int = 65536
    unsaved_changes: UnsavedPolicy = "save"
    new_per_address_per_minute: int = 0
    clock: Clock = field(default=time.time, repr=False, compare=False)
    observers: Observers = field(default_factory=Observers, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("idle_timeout", "max_lifetime"):
            if not getattr(self, name) > 0:
                raise ConfigError(name, f"must be a positive number of seconds, not {getattr(self, name)!r}")
        for name in ("max_sessions", "max_session_bytes", "new_per_address_per_minute"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(name, f"must be a whole number, 0 for no limit, not {value!r}")
        budget = (AddressBudget(self.new_per_address_per_minute)
                  if self.max_sessions and self.new_per_address_per_minute else None)
        object.__setattr__(self, "_budget", budget)
        if self.unsaved_changes not in UNSAVED_POLICIES:
            raise ConfigError("unsaved_changes", f"must be one of {', '.join(UNSAVED_POLICIES)}, "
                              f"not {self.unsaved_changes!r}")
        if self.max_lifetime < self.idle_timeout:
            raise ConfigError(
                "max_lifetime",
                f"must be at least idle_timeout ({self.idle_timeout}), not {self.max_lifetime!r}: "
                "a session could never stay idle that long",
            )
        if not 0 <= self.access_resolution < self.idle_timeout:
            raise ConfigError(
                "access_resolution",
                f"must be at least 0 and below idle_timeout ({self.idle_timeout}), "
                f"not {self.access_resolution!r}",
            )

    _budget: AddressBudget | None = field(default=None, init=False, repr=False, compare=False)

    def charge_new(self, client: str | None) -> None:
        """Spend one of *client*'s new sessions and logins, or raise ``TooManyNewSessions``."""
        if self._budget is not None:
            self._budget.charge(client)

    # -- finding and creating ---------------------------------------------

    @overload
    def container(self, connection: Connection, *, create: Literal[True] = True) -> SessionContainer: ...

    @overload
    def container(self, connection: Connection, *, create: bool) -> SessionContainer | None: ...

    def container(self, connection: Connection, *, create: bool = True) -> SessionContainer | None:
        """The session container reachable from *connection*; None only without *create*."""
        if self.database is not None:
            connection = connection.get_connection(self.database)
        return get_container(connection, create=create)

    def is_live(self, session: Session, now: float | None = None) -> bool:
        """Whether neither timeout has passed for *session*."""
        now = self.clock() if now is None else now
        return now < session.deadline(self.idle_timeout, self.max_lifetime)

    def get(self, connection: Connection, session_id: object) -> Session | None:
        """The live session with this id, or None; never raises for bad ids.

        A malformed id costs no lookup. An expired session is never returned,
        even before a sweep has removed it. The access time is recorded only
        when the recorded one is older than ``access_resolution``, so most
        reads write nothing.
        """
        if not is_well_formed_id(session_id):
            return None
        return self._get_well_formed(connection, session_id)

    def _get_well_formed(self, connection: Connection, session_id: str) -> Session | None:
        """``get`` for an id already known to be well formed (the publisher checked the cookie)."""
        container = self.container(connection, create=False)
        if container is None:
            return None
        session = container.get(session_id)
        if session is None or not ids_equal(session.id, session_id):
            return None
        now = self.clock()
        if not self.is_live(session, now):
            return None
        session.touch(now, self.access_resolution)
        return session

    def new(self, connection: Connection, *, user_id: str | None = None) -> Session:
        """A fresh session that is stored only when something is written to it."""
        if user_id is not None:
            check_user_id(user_id)
        session = Session(new_session_id(), self.clock(), user_id=user_id)
        session._v_attach = self._attacher(connection)
        return session

    def _attacher(self, connection: Connection) -> Callable[[Session], None]:
        """What stores a transient session through *connection* on its first write."""

        def attach(session: Session) -> None:
            container = self.container(connection)
            if self.max_sessions and len(container) >= self.max_sessions:
                # Checked before anything is added: a refused session stays transient.
                self._make_room(container)
            # Add it through the connection of the database holding the
            # container: in a multi-database, adding it to the main connection
            # stored the session in the main database, behind a cross-database
            # reference, instead of in the sessions database.
            home = connection
            if self.database is not None:
                home = connection.get_connection(self.database)
            home.add(session)
            container.add(session, self._deadline(session))
            self._report(connection, "created", session)

        return attach

    def _make_room(self, container: SessionContainer) -> None:
        """At the cap, evict the least recently used session, anonymous ones first.

        One client making sessions without end (cookieless POSTs, or logins
        where sign-up is free) would otherwise fill the cap and lock every new
        visitor and every login out until sessions expire. The oldest entries
        of the expiry index (the earliest deadlines, so the least recently
        used) are scanned, at most ``EVICTION_SCAN`` of them, refiling the
        entries of sessions used since and dropping those of sessions gone,
        as the sweep does. The first anonymous session found goes; if all
        the scanned ones are users', the least recently used of them goes
        (its user must log in again). So a logged-in user loses a session
        only when the store is full, and theirs is among the
        ``EVICTION_SCAN`` least recently used with no anonymous one there:
        the user idle longest goes first. ``new_per_address_per_minute``
        keeps one address from churning through everybody's sessions this
        way. ``SessionLimitReached`` remains for a store with nothing to evict.
        """
        cursor = None
        oldest_user: tuple[tuple[int, str], Session] | None = None
        for _ in range(EVICTION_SCAN):
            keys = container.expiry.keys() if cursor is None else container.expiry.keys(
                min=cursor, excludemin=True)
            entry = next(iter(keys), None)
            if entry is None:
                break
            cursor = entry
            victim = container.get(entry[1])
            if victim is None:  # revoked, rotated or evicted: the entry is stale
                container.expiry.remove(entry)
                continue
            deadline = self._deadline(victim)
            if expiry_slot(deadline) > entry[0]:  # used since it was filed: file it where it belongs
                container.expiry.remove(entry)
                container.file_expiry(victim.id, deadline)
                continue
            if victim.user_id is None:
                self._evict(container, entry, victim)
                return
            if oldest_user is None:
                oldest_user = entry, victim
        if oldest_user is not None:
            self._evict(container, *oldest_user)
            return
        first = next(iter(container.expiry.keys()), None)
        wait = first[0] * EXPIRY_SLOT_SECONDS - self.clock() if first is not None else self.idle_timeout
        raise SessionLimitReached(len(container), self.max_sessions,
                                  retry_after=int(min(max(wait, 1), self.idle_timeout)))

    def _evict(self, container: SessionContainer, entry: tuple[int, str], victim: Session) -> None:
        container.expiry.remove(entry)
        self._remove(container, victim, "evicted")

    def check_storable(self, session: Any) -> int:
        """Check that *session* can be committed; returns its data's pickled size.

        Raises ``UnstorableSessionValue`` (naming the key) for a value ZODB
        cannot pickle, and ``SessionTooLarge`` past ``max_session_bytes``.
        Costs one pickle of the session's data, without side effects; the
        publisher calls it before committing a request that wrote its session.
        """
        if type(session) is not Session:  # a request's view; unwrapping a Session costs a lookup
            session = _unwrap(session)
        return measure(session, self.max_session_bytes)

    # -- changing identity ---------------------------------------------------

    def rotate(self, session: Session) -> Session:
        """Give *session* a new id, keeping its data: the defence against fixation.

        The old id is dead afterwards. A transient session just gets a new id.
        """
        new_id = new_session_id()
        if session.is_stored:
            container = self._container_of(session)
            previous_id = session.id
            container.rename(session, new_id, self._deadline(session))
            self._report(session._p_jar, "rotated", session, previous_id)
        else:
            session.id = new_id
        return session

    def set_user(self, session: Session, user_id: str | None) -> None:
        """Record who owns *session* (None: nobody), keeping the user index.

        Raises ``InvalidUserId`` for anything but a string of 1 to
        ``MAX_USER_ID_LENGTH`` characters, before changing anything.
        """
        if user_id is not None:
            check_user_id(user_id)
        if session.is_stored:
            self._container_of(session).set_user(session, user_id)
        else:
            session.user_id = user_id
            if user_id is not None:
                # Owning a session is a write: a login that stores no data
                # must still survive the request, and be found by revoke_user.
                session.changed()

    def invalidate(self, session: Session) -> None:
        """End *session* on the server: its id no longer finds anything."""
        session._v_attach = None
        if session.is_stored and session.id in self._container_of(session).sessions:
            self._remove(self._container_of(session), session, "invalidated")

    def revoke(self, connection: Connection, session_id: str) -> bool:
        """End the session with this id; returns whether there was one."""
        container = self.container(connection, create=False)
        session = container.get(session_id) if container is not None else None
        if container is None or session is None:
            return False
        self._remove(container, session, "revoked")
        return True

    def revoke_user(self, connection: Connection, user_id: str) -> int:
        """End every session of one user; returns how many there were."""
        container = self.container(connection, create=False)
        if container is None:
            return 0
        ids = container.user_session_ids(user_id)
        for session_id in ids:
            self._remove(container, container.sessions[session_id], "revoked")
        return len(ids)

    # -- the Quixote persistence interface -----------------------------------

    def save_changes(self, session: Any) -> None:
        """Save the changes made to *session* in this transaction.

        With ZODB the transaction's commit does the saving; this only marks
        the session changed, which matters after mutating a nested value in
        place (``session["cart"].append(item)``). A transient session is
        stored by it.
        """
        _unwrap(session).changed()

    def forget_changes(self, session: Any) -> None:
        """Forget every change of the current transaction, this session's included.

        With ZODB this is an abort of the transaction the session was loaded
        in: the application's other changes in it are forgotten as well.
        """
        session = _unwrap(session)
        jar = session._p_jar
        if jar is None:
            session._data.clear()
            return
        jar.transaction_manager.abort()
        if session._p_jar is not None and session._p_changed is False:
            # A change made in place and never marked is not undone by the
            # abort, which reverts only registered objects: drop the state
            # in memory, so the next use loads what is stored.
            session._p_invalidate()
        if session._p_jar is None:
            # It was first stored in this transaction: the abort detached it
            # but left its data in memory, and its next write would have been
            # silently dropped. Make it a fresh transient session again.
            session._data.clear()
            session._v_attach = self._attacher(jar)

    # -- each session's own expiry ---------------------------------------------

    def set_expiry(self, session: Any, value: ExpiryValue) -> bool:
        """Give *session* an expiry of its own, with Django's meanings of *value*.

        - ``None``: back to this manager's timeouts.
        - seconds (``int``/``float`` > 0): the session's own idle timeout, in
          place of ``idle_timeout``; its absolute lifetime becomes at least
          that long ("remember me for two weeks").
        - a ``datetime`` (aware, or naive meaning UTC) or a ``timedelta`` from
          now: the session ends at that moment, used or not.
        - ``0``: until the browser closes. The cookie is sent without
          ``Max-Age``; on the server this manager's timeouts still apply.

        Returns whether anything changed; setting the same expiry again writes
        nothing. A change is a write that records the access now, so the
        age read back right after is the one given. A deadline made earlier
        is filed again in the expiry index, so the sweep removes the session
        on time (the index's entries may be early, never late).
        """
        session = _unwrap(session)
        now = self.clock()
        expiry = expiry_choice(value, now)
        if expiry == session._expiry:
            return False
        session.changed()  # stores a transient session, filed under its deadline so far
        before = self._deadline(session)
        session._expiry = expiry
        session.touch(now, 0.0)
        after = self._deadline(session)
        if session.is_stored and expiry_slot(after) < expiry_slot(before):
            self._container_of(session).file_expiry(session.id, after)
        return True

    def get_expiry_age(self, session: Any) -> int:
        """Whole seconds until *session* expires, rounded up; 0 once it has."""
        remaining = self._deadline(_unwrap(session)) - self.clock()
        return max(0, math.ceil(remaining))

    def get_expiry_date(self, session: Any) -> datetime:
        """The moment *session* expires, an aware UTC ``datetime``."""
        return datetime.fromtimestamp(self._deadline(_unwrap(session)), UTC)

    def get_expire_at_browser_close(self, session: Any) -> bool:
        """Whether *session* was told to last until the browser closes (``set_expiry(0)``)."""
        expiry = _unwrap(session)._expiry
        return expiry is not None and expiry[0] == "browser"

    def cookie_max_age(self, session: Any) -> int | Literal["session"] | None:
        """What the cookie's ``Max-Age`` must be for *session*'s own expiry.

        None: the cookie policy's default (the session has no expiry of its
        own); ``"session"``: no ``Max-Age``, gone when the browser closes;
        else whole seconds, at least 1. For an idle timeout it covers the
        session's whole possible lifetime, since the cookie is not sent
        again each time the session is used.
        """
        record = _unwrap(session)
        expiry = record._expiry
        if expiry is None:
            return None
        kind, value = expiry
        if kind == "browser":
            return "session"
        end = value if kind == "at" else record.created + max(self.max_lifetime, value)
        return max(1, math.ceil(end - self.clock()))

    # -- expiry -----------------------------------------------------------

    def expire(
        self,
        connection: Connection,
        *,
        batch_size: int = 500,
        max_attempts: int = ATTEMPTS,
        progress: Progress | None = None,
        now: float | None = None,
    ) -> int:
        """Remove sessions whose timeouts have passed; returns how many.

        Works in transactions of *batch_size* index entries, committed on
        *connection*'s transaction manager, so memory stays flat and requests
        are held up by no more than one small commit. A batch that conflicts
        with concurrent requests is retried, up to *max_attempts* times.
        Each victim is re-checked inside the batch, so a session used
        meanwhile survives; and the sweep reads it as current and rewrites it,
        so a request that changes it concurrently conflicts instead of having
        its change silently dropped with the deleted session.

        Because it commits its own batches, it must be called with nothing
        pending: changes not yet committed on *connection*'s transaction
        manager raise ``UncommittedChanges`` rather than being discarded.
        Stopping between batches (Ctrl-C) leaves everything consistent:
        committed batches stay done, the rest is found by the next sweep.
        """
        now = self.clock() if now is None else now

        def step(_cursor: None) -> tuple[int, None, bool]:
            # No cursor: each batch consumes the due prefix it read.
            removed, entries = self._expire_batch(connection, now, batch_size)
            return removed, None, entries < batch_size

        return run_batches(connection, step, progress, attempts=max_attempts, name="expire")

    def _expire_batch(self, connection: Connection, now: float, batch_size: int) -> tuple[int, int]:
        container = self.container(connection, create=False)
        if container is None:
            return 0, 0
        entries = list(islice(container.due(now), batch_size))
        removed = 0
        for entry in entries:
            container.expiry.remove(entry)
            session = container.get(entry[1])
            if session is None:
                continue  # removed by revoke, rotation or logout meanwhile
            deadline = self._deadline(session)
            if deadline > now:
                container.file_expiry(session.id, deadline)
                continue
            self._remove(container, session, "expired")
            removed += 1
        return removed, len(entries)

    # -- helpers ----------------------------------------------------------

    def _deadline(self, session: Session) -> float:
        return session.deadline(self.idle_timeout, self.max_lifetime)

    def _container_of(self, session: Session) -> SessionContainer:
        return self.container(session._p_jar)

    def _remove(self, container: SessionContainer, session: Session, why: EventKind) -> None:
        # Rewriting the victim, marked removed, makes a concurrent change to
        # it conflict, a touch included (core.merge): a delete alone would let
        # that change commit into an unreachable object, and a sweep would
        # remove a session used meanwhile.
        session._removed = REMOVED_IDLE if why in ("expired", "evicted") else REMOVED_ENDED
        legacy = session.__dict__.get("_last_access")
        if legacy is not None:
            # An old record's access time is a record of its own, which a
            # process still running the old code may touch: read it as current.
            # Through the session's own connection: in a multi-database it is
            # the sessions database's (readCurrent asserts so).
            session._p_jar.readCurrent(legacy)
        container.remove(session)
        self._report(session._p_jar, why, session)

    # -- events -------------------------------------------------------------

    def _report(self, connection: Connection, kind: EventKind, session: Session,
                previous_id: str | None = None) -> None:
        """Queue an event for ``observers``, delivered only if this transaction commits.

        One after-commit hook per transaction delivers its events in order.
        A session created (or rotated) and then rotated in the same
        transaction is reported once, under the id the client got: the ids
        in between were never visible outside the transaction.
        """
        if not self.observers:
            return
        txn = connection.transaction_manager.get()
        try:
            pending: list[SessionEvent] = txn.data(self.observers)
        except KeyError:
            pending = []
            txn.set_data(self.observers, pending)
            txn.addAfterCommitHook(_deliver, (self.observers, pending))
        if kind == "rotated":
            for index, earlier in enumerate(pending):
                if earlier.session_id == previous_id and earlier.kind in ("created", "rotated"):
                    pending[index] = dataclasses.replace(
                        earlier, session_id=session.id, user_id=session.user_id)
                    return
        pending.append(SessionEvent(kind, session.id, session.user_id, self.clock(), previous_id))


def _deliver(committed: bool, observers: Observers, events: list[SessionEvent]) -> None:
    """The after-commit hook: report the transaction's events if it committed."""
    if committed:
        for event in events:
            observers.session_event(event)


def _unwrap(session: Any) -> Session:
    """The persistent session behind a request's lazy view, or *session* itself."""
    unwrap = getattr(session, "_zodbsession_unwrap", None)
    unwrapped: Session = unwrap() if unwrap is not None else session
    return unwrapped
