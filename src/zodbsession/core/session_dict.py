"""The session as a ``dict`` to application code: the dict's methods, and a real ``dict`` face.

Application code written for dict sessions (Flask's, Starlette's, Pyramid's
cookie sessions) uses more than ``MutableMapping`` gives: ``copy()``, ``|``
and ``|=``, ``popitem()`` taking the *last* key, ``==`` with a dict, and
handing the session to ``json.dumps`` or Starlette's ``JSONResponse``.

``DictMethods`` adds dict's methods to any ``MutableMapping`` over a session
(``RequestSession``, ``FlaskSession``). Every one of them reads and writes
through the mapping's own ``__getitem__``/``__setitem__``/``__delitem__``,
so a write is still a write of the persistent ``Session``: marked changed
when it happens, merged by key (``core.merge``), and a value changed in
place is still found at the end (``core.unsaved``). A copy is a plain dict.

``json.dumps`` (and every C serializer: ``orjson``, ``ujson``) accepts only
an actual ``dict`` instance and reads its storage directly, without calling
any method of a subclass first (``json``'s encoder even answers ``{}`` from
an empty storage before asking for ``items()``). ``SessionDict`` is such a
dict: its storage is a mirror of the session's data (the same keys, in the
same order, the same value objects), and every method is the session's, so
nothing is ever written to the mirror alone. The mirror is right only while
it is kept in step, so it is made in two places only:

- ``RequestSession.as_dict()`` makes it over a *found* session (the cookie's
  session is looked up then) or a new, still empty one, and keeps it in step
  with every change made through the ``RequestSession`` (by key for an
  assignment or deletion, whole after a flash, a CSRF token, ``invalidate``
  or ``forget_changes``);
- the ASGI door's ``scope["session"]`` (its session is loaded before the
  application runs) and Pyramid's ``request.session`` (made when the
  application first asks for it) are such faces.

The lazy WSGI door's ``environ["zodbsession.session"]`` is not a dict: its
session is looked up only when the application uses it, and an empty
mirror handed to ``json`` before that would read ``{}`` where the session
has data. ``json.dumps`` refuses it with a ``TypeError`` instead; pass
``session.copy()``, or ``session.as_dict()``.

A change made to the persistent ``Session`` itself, around the request's
view (code that looks its own session up in the container), reaches the
mirror at the next change made through the view.
"""

from __future__ import annotations

import copy as _copy
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from zodbsession.core.request_session import RequestSession

_NOT_PICKLED = ("a request's session cannot be pickled or stored: it is a view of one request; "
                "store session.copy(), a plain dict")


class DictMethods(MutableMapping[str, Any]):
    """The methods of ``dict`` that ``MutableMapping`` lacks or does differently, over its five.

    ``popitem()`` takes the last key, as a dict's does (``MutableMapping``'s
    takes the first); ``copy()``, ``|`` and ``copy.copy`` give a plain dict;
    ``==`` compares contents with any mapping, so the view is unhashable, as
    a dict is. A subclass with a faster ``__reversed__`` or ``clear`` gives
    its own.
    """

    def __reversed__(self) -> Iterator[str]:
        return reversed(list(self))

    def popitem(self) -> tuple[str, Any]:
        """Remove and return the last (key, value) pair; ``KeyError`` when empty."""
        for key in reversed(self):
            value = self[key]
            del self[key]
            return key, value
        raise KeyError("popitem(): dictionary is empty")

    def copy(self) -> dict[str, Any]:
        """A shallow copy, as a plain ``dict`` (``dict.copy`` of a dict subclass gives one too)."""
        return {key: self[key] for key in self}

    __copy__ = copy

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        return _copy.deepcopy(self.copy(), memo)

    def __or__(self, other: object) -> dict[str, Any]:
        if not isinstance(other, Mapping):
            return NotImplemented
        merged = self.copy()
        merged.update(other)
        return merged

    def __ror__(self, other: object) -> dict[str, Any]:
        if not isinstance(other, Mapping):
            return NotImplemented
        merged = dict(other)
        merged.update(self.copy())
        return merged

    def __ior__(self, other: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> DictMethods:  # type: ignore[misc]
        self.update(other)
        return self

    def __eq__(self, other: object) -> bool:
        if other is self:
            return True
        if not isinstance(other, Mapping):
            return NotImplemented
        return self.copy() == dict(other.items())

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = None  # type: ignore[assignment]  # equal by content, as a dict: unhashable

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        raise TypeError(_NOT_PICKLED)


class SessionDict(dict[str, Any]):
    """A request's session as an actual ``dict``: its storage mirrors the data, its methods are the session's.

    Made by ``RequestSession.as_dict()``, which keeps the mirror in step; see
    the module docstring for when the mirror is right. Every method (reads
    included) goes through the ``RequestSession``, so a read counts as a use
    of the session and a write is the persistent ``Session``'s write; the
    storage is only what C code (``json``'s encoder, ``orjson``) reads.
    zodbsession's own verbs (``login``, ``rotate``, ``id``, ``flash``...) are
    the ``RequestSession``'s, reached as attributes. ``mark_accessed`` is
    Starlette's hook, called by ``request.session``.

    Threading: belongs to the one request its ``RequestSession`` belongs to.
    """

    # _view is set by RequestSession.as_dict, through __new__: a SessionDict
    # is never built from data (dict(...) of one gives a plain dict).
    _view: RequestSession

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # dict.__init__ would fill the storage alone: the view fills it.
        if args or kwargs:
            raise TypeError("SessionDict is made by RequestSession.as_dict(), not from data")

    @property
    def request_session(self) -> RequestSession:
        """The ``RequestSession`` this dict is the face of."""
        return self._view

    # -- the mirror, written by the view only ---------------------------------

    def _mirror(self, data: Mapping[str, Any]) -> None:
        dict.clear(self)
        dict.update(self, data)

    def _mirror_set(self, key: str, value: Any) -> None:
        dict.__setitem__(self, key, value)

    def _mirror_del(self, key: str) -> None:
        dict.pop(self, key, None)

    # -- every method of dict, the session's ---------------------------------

    def mark_accessed(self) -> None:
        """Starlette's ``request.session`` calls it: the request uses its session."""
        self._view._zodbsession_unwrap()

    def __getattr__(self, name: str) -> Any:
        # Only reached for names not found here: zodbsession's own verbs.
        if name.startswith("__") or name == "_view":
            raise AttributeError(name)
        return getattr(self._view, name)

    def __getitem__(self, key: str) -> Any:
        return self._view[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._view[key] = value

    def __delitem__(self, key: str) -> None:
        del self._view[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._view)

    def __reversed__(self) -> Iterator[str]:
        return reversed(self._view)

    def __len__(self) -> int:
        return len(self._view)

    def __contains__(self, key: object) -> bool:
        return key in self._view

    def get(self, key: str, default: Any = None) -> Any:
        return self._view.get(key, default)

    def keys(self) -> Any:
        return self._view.keys()

    def values(self) -> Any:
        return self._view.values()

    def items(self) -> Any:
        return self._view.items()

    def pop(self, key: str, *default: Any) -> Any:
        return self._view.pop(key, *default)

    def popitem(self) -> tuple[str, Any]:
        return self._view.popitem()

    def setdefault(self, key: str, default: Any = None) -> Any:
        return self._view.setdefault(key, default)

    def update(self, *args: Any, **kwargs: Any) -> None:
        self._view.update(*args, **kwargs)

    def clear(self) -> None:
        self._view.clear()

    def copy(self) -> dict[str, Any]:
        return self._view.copy()

    __copy__ = copy

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        return _copy.deepcopy(self._view.copy(), memo)

    def __or__(self, other: Any) -> Any:
        return self._view.__or__(other)

    def __ror__(self, other: Any) -> Any:
        return self._view.__ror__(other)

    def __ior__(self, other: Any) -> SessionDict:  # type: ignore[override]
        self._view.update(other)
        return self

    def __eq__(self, other: object) -> bool:
        return self._view.__eq__(other)

    def __ne__(self, other: object) -> bool:
        return self._view.__ne__(other)

    __hash__ = None

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        raise TypeError(_NOT_PICKLED)

    def __repr__(self) -> str:
        return f"<SessionDict {self._view!r}>"
