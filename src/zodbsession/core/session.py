"""The persistent ``Session`` and its ids.

A session is one persistent record: its id, owner, own expiry, the
application's data and its last-access time (``_accessed``), so a session not
in the cache costs one load. Touching a session rewrites that record, and
``Session._p_resolveConflict`` merges a touch with any concurrent write but a
removal decided by the access time (the sweep's: the later access time wins,
the other side's change stands), so a
read racing a write still never conflicts, while two concurrent changes of
one data key do conflict, as they must (``zodbsession.core.merge``).

Records written before this layout keep their access time in a separate
``zope.minmax.Maximum`` under ``_last_access``. They are read both ways and
migrate when next written: ``__getstate__`` folds the old record's time into
``_accessed`` and drops the reference (nothing writes the old record any more).

The session also carries the features web frameworks assume of one, under the
names Pyramid's ``ISession`` and Django's ``SessionBase`` use: flash queues, a
CSRF token bound to the session, and a per-session expiry ("remember me").
Flash queues and the CSRF token live in the data mapping under Pyramid's own
keys (``_f_<queue>``, ``_csrft_``), so they merge and revert like any value.
"""

from __future__ import annotations

import hmac
import math
import re
import secrets
from collections.abc import Callable, Iterator, MutableMapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard

from persistent import Persistent

from zodbsession.core.errors import InvalidUserId

if TYPE_CHECKING:

    class _LastAccess(Protocol):
        """What a session uses of an old record's ``zope.minmax.Maximum`` (which ships no types)."""

        value: float

#: Bytes of randomness in a session id: 256 bits, twice the usual minimum.
SESSION_ID_BYTES = 32
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{43}\Z")

#: The data keys of the flash queues (plus the queue's name) and of the CSRF token: Pyramid's.
FLASH_KEY_PREFIX = "_f_"
CSRF_TOKEN_KEY = "_csrft_"

#: What ``set_expiry`` accepts: None, seconds (0: until the browser closes), a moment or a span.
ExpiryValue = None | int | float | datetime | timedelta


def new_session_id() -> str:
    """Return a fresh, URL-safe session id with 256 bits from ``secrets``.

    Ids starting with ``-`` are drawn again: on a command line
    (``zodbsession revoke ID``) they would read as an option. That costs
    0.02 bits of the 256.
    """
    while True:
        session_id = secrets.token_urlsafe(SESSION_ID_BYTES)
        if session_id[0] != "-":
            return session_id


def is_well_formed_id(value: object) -> TypeGuard[str]:
    """Tell whether *value* has the shape of an id we issue.

    Anything else (wrong length, other characters, not a string) is rejected
    before it reaches the database, so a hostile cookie costs no lookup.
    """
    return isinstance(value, str) and _SESSION_ID.match(value) is not None


def ids_equal(a: str, b: str) -> bool:
    """Compare two session ids in constant time."""
    # UTF-8, not ASCII with "replace": that mapped every non-ASCII character
    # to "?", so "é" and "?" compared equal.
    return hmac.compare_digest(
        a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass")
    )


#: The longest user id ``set_user`` (and so a login) accepts, in characters.
MAX_USER_ID_LENGTH = 256


def check_user_id(user_id: object) -> None:
    """Refuse a user id that is not a non-empty string of at most ``MAX_USER_ID_LENGTH`` characters.

    It is stored in the session and in the user index: an unbounded one
    would let a client write records as large as it likes.
    """
    if not isinstance(user_id, str) or not user_id:
        raise InvalidUserId(f"a user id must be a non-empty string, not {type(user_id).__name__} "
                            f"{str(user_id)[:40]!r}")
    if len(user_id) > MAX_USER_ID_LENGTH:
        raise InvalidUserId(f"a user id must be at most {MAX_USER_ID_LENGTH} characters, not "
                            f"{len(user_id)} (starting {user_id[:20]!r}): map long external "
                            "identities to a short key of your own")


def expiry_choice(value: ExpiryValue, now: float) -> tuple[str, float] | None:
    """What ``Session._expiry`` records for a ``set_expiry`` value at *now*; ``ValueError`` for nonsense."""
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return ("at", value.timestamp())
    if isinstance(value, timedelta):
        return ("at", now + value.total_seconds())
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < 0:
        raise ValueError(f"set_expiry takes None, a number of seconds (0: until the browser closes), "
                         f"a datetime or a timedelta, not {value!r}")
    if value == 0:
        return ("browser", 0.0)
    return ("idle", float(value))


class Session(Persistent, MutableMapping[str, Any]):  # type: ignore[misc]  # persistent is untyped
    """One user's session: bookkeeping plus the application's data mapping.

    Use it as a mapping (``session["cart"] = [...]``). Assigning or deleting a
    key marks the session changed; mutating a nested value in place does not,
    so call ``SessionManager.save_changes(session)`` (or ``changed()``) after
    doing that.

    A session made by ``SessionManager.new`` is *transient*: nothing is stored
    until the first write, which attaches it to the container. Reading, or
    merely creating, a session therefore writes nothing to the database.

    Threading: like every persistent object, a session belongs to the one
    connection (and so the one thread or task) that loaded it.
    """

    # Class-level defaults keep old pickles loadable when attributes are added.
    user_id: str | None = None
    # The session's own expiry, or None for the manager's timeouts:
    # ("idle", seconds) | ("at", epoch seconds) | ("browser", 0.0).
    _expiry: tuple[str, float] | None = None
    # The last access (epoch seconds); None: never touched since ``created``
    # (or an old record, whose time is in ``_last_access``).
    _accessed: float | None = None
    # Only in records written before the access time moved into the record:
    # the separate ``zope.minmax.Maximum`` that held it. Dropped when next written.
    _last_access: _LastAccess | None = None
    # Set on a session being removed, saying why: core.merge's REMOVED_IDLE or REMOVED_ENDED.
    _removed: str | None = None
    # True while the only change of this transaction is the access time (see ``rewritten``).
    _v_access_only: bool = False

    def __init__(self, session_id: str, created: float, user_id: str | None = None) -> None:
        self.id = session_id
        self.created = created
        # Left to the class defaults until they differ from them, so a new
        # record stores neither (the smaller record; ``_accessed`` None reads
        # as ``created``).
        if user_id is not None:
            self.user_id = user_id
        self._data: dict[str, Any] = {}
        # Called once, on the first write of a transient session, to store it.
        self._v_attach: Callable[[Session], None] | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        # Any write but the access time's (an attribute, or marking the
        # record changed) makes this transaction's write more than a touch.
        if name != "_accessed" and not name.startswith("_v_") and (
                not name.startswith("_p_") or (name == "_p_changed" and value)):
            Persistent.__setattr__(self, "_v_access_only", False)
        Persistent.__setattr__(self, name, value)

    def __getstate__(self) -> dict[str, Any]:
        """The record to store: an old record's separate access time folded into ``_accessed``."""
        state: dict[str, Any] = dict(Persistent.__getstate__(self))
        legacy = state.pop("_last_access", None)
        if legacy is not None:
            accessed = state.get("_accessed")
            state["_accessed"] = float(legacy.value if accessed is None else max(legacy.value, accessed))
        return state

    # -- bookkeeping -------------------------------------------------------

    @property
    def last_access(self) -> float:
        """When the session was last used, to within the access resolution."""
        legacy = self._last_access
        accessed = self._accessed
        if legacy is None:
            return self.created if accessed is None else accessed
        # An old record: its time is in the separate Maximum (one more load).
        return legacy.value if accessed is None else max(legacy.value, accessed)

    def touch(self, now: float, resolution: float) -> bool:
        """Record an access at *now* unless the recorded one is recent enough.

        Returns whether anything was written. The session's record is
        rewritten; a concurrent write of it merges (the later time wins, see
        ``zodbsession.core.merge``), so a touch conflicts only with the sweep's
        (or the cap's) removal, which must see it.
        """
        last = self.last_access
        if now - last < resolution or now <= last:
            return False
        access_only = self._p_changed is False
        self._accessed = float(now)  # merged only as a float (core.merge)
        if access_only:
            self._v_access_only = True
        return True

    @property
    def rewritten(self) -> bool:
        """Whether this transaction changed the record beyond its access time (a touch alone: no)."""
        return bool(self._p_changed) and not self._v_access_only

    def deadline(self, idle_timeout: float, max_lifetime: float) -> float:
        """The moment this session stops being live, by its own expiry or the manager's timeouts.

        With no expiry of its own (or "until the browser closes", which the
        server cannot see) it is the earlier of the two timeouts. An absolute
        moment replaces both. Its own idle timeout replaces *idle_timeout*,
        and lifts the absolute lifetime to at least that long: a session told
        to live a fortnight idle is not cut off by an eight-hour lifetime.
        """
        expiry = self._expiry
        if expiry is not None:
            kind, value = expiry
            if kind == "at":
                return value
            if kind == "idle":
                return min(self.last_access + value, self.created + max(max_lifetime, value))
        return min(self.last_access + idle_timeout, self.created + max_lifetime)

    @property
    def is_stored(self) -> bool:
        """Whether the session is in a container (or will be at commit)."""
        return self._p_jar is not None

    # A session is an entity, not a value: two sessions with equal data are
    # still two sessions (MutableMapping would compare them by content and
    # make them unhashable).
    __eq__ = object.__eq__
    __ne__ = object.__ne__
    __hash__ = object.__hash__

    def _p_resolveConflict(self, old_state: Any, committed_state: Any, new_state: Any) -> dict[str, Any]:
        """Merge two concurrent writes of this session, or raise ``ConflictError``.

        ZODB calls it (on the ZEO server, with ZEO) when a commit finds the
        session changed since it was read. Changes to different data keys
        both survive, and access times merge to the later one; a touch
        merges with any change but the sweep's removal; everything else conflicts (the
        same key, the id, the owner, the expiry, a removal). The rules are
        ``zodbsession.core.merge``'s.
        """
        from zodbsession.core.merge import merge_session_state

        return merge_session_state(old_state, committed_state, new_state)

    # -- flash messages (Pyramid's ISession) ------------------------------------

    def flash(self, msg: Any, queue: str = "", allow_duplicate: bool = True) -> None:
        """Queue *msg* for a later request; with ``allow_duplicate=False`` a queued equal one is kept."""
        key = FLASH_KEY_PREFIX + queue
        queued = self._data.get(key, [])
        if not allow_duplicate and msg in queued:
            return
        self[key] = [*queued, msg]

    def peek_flash(self, queue: str = "") -> list[Any]:
        """The messages in *queue*, oldest first, left in place (no write)."""
        return list(self._data.get(FLASH_KEY_PREFIX + queue, ()))

    def pop_flash(self, queue: str = "") -> list[Any]:
        """The messages in *queue*, oldest first, removed from it (a write only if there were any)."""
        key = FLASH_KEY_PREFIX + queue
        if key not in self._data:
            return []
        messages = self._data[key]
        del self[key]
        return list(messages)

    # -- the CSRF token (Pyramid's ISession) -------------------------------------

    def new_csrf_token(self) -> str:
        """Make, store and return a fresh CSRF token for this session (256 bits from ``secrets``)."""
        token = secrets.token_urlsafe(32)
        self[CSRF_TOKEN_KEY] = token
        return token

    def get_csrf_token(self) -> str:
        """The session's CSRF token, made (a write) if it has none yet."""
        token = self._data.get(CSRF_TOKEN_KEY)
        return token if isinstance(token, str) else self.new_csrf_token()

    def check_csrf_token(self, token: object) -> bool:
        """Whether *token* is this session's CSRF token, compared in constant time.

        A session without a token matches nothing, and asking makes none.
        """
        expected = self._data.get(CSRF_TOKEN_KEY)
        if not isinstance(token, str) or not isinstance(expected, str):
            return False
        return hmac.compare_digest(token.encode("utf-8", "surrogatepass"), expected.encode("utf-8"))

    # -- the application's data -------------------------------------------

    def changed(self) -> None:
        """Mark the session's data changed, storing a transient session."""
        self._attach()
        self._p_changed = True

    def _attach(self) -> None:
        # Before the data changes, so that a refused store (the session cap)
        # leaves the session as it was, and still transient.
        attach = getattr(self, "_v_attach", None)
        if attach is not None:
            attach(self)
            self._v_attach = None

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._attach()
        self._data[key] = value
        self._p_changed = True

    def __delitem__(self, key: str) -> None:
        if key not in self._data:
            raise KeyError(key)
        self._attach()
        del self._data[key]
        self._p_changed = True

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def clear(self) -> None:
        """Remove all data with a single write (MutableMapping's pops one by one)."""
        if self._data:
            self._attach()
            self._data.clear()
            self._p_changed = True

    def data(self) -> dict[str, Any]:
        """A shallow copy of the application's data, for display or JSON."""
        return dict(self._data)

    def __repr__(self) -> str:
        # Never the data, never the whole id: reprs end up in logs.
        return f"<Session {self.id[:8]}... user={self.user_id!r}>"
