"""Filling and damaging a session database the same way in the operations' tests."""

from __future__ import annotations

from ZODB import DB

from zodbsession.core.manager import SessionManager


def populate(
    db: DB,
    manager: SessionManager,
    count: int,
    *,
    users: tuple[str | None, ...] = (None,),
    secret: str = "value",
) -> list[str]:
    """Store *count* sessions in one transaction, owners taken round robin."""
    ids = []
    with db.transaction() as conn:
        for i in range(count):
            session = manager.new(conn, user_id=users[i % len(users)])
            session["secret"] = secret
            session["n"] = i
            ids.append(session.id)
    return ids


def stored_ids(db: DB, manager: SessionManager) -> set[str]:
    with db.transaction() as conn:
        container = manager.container(conn, create=False)
        return set(container.sessions.keys()) if container is not None else set()


def corrupt(db: DB, manager: SessionManager, damage) -> None:
    with db.transaction() as conn:
        damage(manager.container(conn))

