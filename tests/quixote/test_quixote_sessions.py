"""Quixote's session API on zodbsession sessions: the user, the id, expiry, tokens, restarts."""

from __future__ import annotations

import urllib.parse

from quixote import get_session
from quixotekit import COOKIE, Site, get, post, raw
from ZODB import DB
from ZODB.FileStorage import FileStorage

from zodbsession.quixote import ZODBSessionManager


def form(**fields: str) -> bytes:
    return urllib.parse.urlencode(fields).encode()


def test_set_user_binds_the_user_and_rotates_the_session_id(served):
    client = served.client()
    assert post(client, "/count") == (200, "1")
    anonymous_id = client.cookie(COOKIE)
    assert post(client, "/login", form(user="alice")) == (200, "user=alice remote_user=alice")
    assert client.cookie(COOKIE) != anonymous_id
    assert get(client, "/") == (200, "n=1 notes=0")  # the data moved with the session
    assert raw(served.url, "GET", "/", anonymous_id)[2] == "n=0 notes=0"  # the old id is dead


def test_set_user_none_unbinds_the_user_keeps_the_data_and_rotates_again(served):
    client = served.client()
    post(client, "/count")
    post(client, "/login", form(user="alice"))
    alice_id = client.cookie(COOKIE)
    assert post(client, "/logout") == (200, "user=None remote_user=None")
    assert client.cookie(COOKIE) != alice_id
    assert get(client, "/") == (200, "n=1 notes=0")


def test_expire_session_ends_the_session_and_deletes_the_cookie(served):
    client = served.client()
    post(client, "/count")
    session_id = client.cookie(COOKIE)
    status, headers, body = raw(served.url, "POST", "/expire", session_id)
    assert (status, body) == (200, "expired session=None")
    assert [v for k, v in headers if k == "Set-Cookie" and v.startswith(f"{COOKIE}=;")]
    with served.db.transaction() as conn:
        assert served.app.session_manager.manager.get(conn, session_id) is None
    assert post(client, "/count") == (200, "1")  # the jar still sent the old id: a new session began
    assert client.cookie(COOKIE) != session_id


def test_the_session_survives_a_restart_on_the_same_data_fs(serve, data_fs):
    db = DB(FileStorage(str(data_fs)))
    with serve(db) as first:
        client = first.client()
        assert post(client, "/count") == (200, "1")
        assert post(client, "/note", form(text="kept")) == (200, "noted")
    db.close()
    db = DB(FileStorage(str(data_fs)))
    try:
        with serve(db) as second:
            again = client.sharing_cookies(second.url)
            assert post(again, "/count") == (200, "2")
            assert get(again, "/") == (200, "n=2 notes=1")
    finally:
        db.close()


def test_the_csrf_token_is_kept_in_the_session_and_checked_on_post(served):
    client = served.client()
    status, token = get(client, "/csrf")
    assert status == 200 and len(token) >= 32
    assert get(client, "/csrf") == (200, token)
    assert post(client, "/check_csrf", form(csrf_token=token)) == (200, "valid")
    forged = ("y" if token[0] == "x" else "x") + token[1:]  # one character off, never the token itself
    assert post(client, "/check_csrf", form(csrf_token=forged)) == (200, "invalid")
    assert get(client, f"/check_csrf?csrf_token={token}") == (200, "invalid")  # only a POST carries it


class Quixote2Manager(ZODBSessionManager):
    """Quixote 2-era code: the hooks overridden under their old names."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def save_changes(self, session):
        self.calls.append("save_changes")
        super().save_changes(session)

    def forget_changes(self, session):
        self.calls.append("forget_changes")
        super().forget_changes(session)


def test_quixote_2_hooks_save_changes_and_forget_changes_are_still_called(serve, database):
    manager = Quixote2Manager()
    with serve(database, manager=manager) as served:
        client = served.client()
        assert post(client, "/count") == (200, "1")
        assert post(client, "/fail")[0] == 500
        assert post(client, "/deny")[0] == 403
        assert manager.calls == ["save_changes", "forget_changes", "save_changes"]
        assert get(client, "/") == (200, "n=1 notes=1")


class CountingSite(Site):
    """A view that checks what get_session() is, from inside Quixote."""

    _q_exports = [*Site._q_exports, "kind"]

    def kind(self) -> str:
        session = get_session()
        return f"{type(session).__name__} id={session.id is not None} info={session.has_info()}"


def test_get_session_in_a_view_is_a_quixote_session_without_an_id_until_stored(serve, database):
    with serve(database, site=CountingSite(database)) as served:
        client = served.client()
        assert get(client, "/kind") == (200, "QuixoteSession id=False info=False")
        post(client, "/count")
        assert get(client, "/kind") == (200, "QuixoteSession id=True info=True")


def test_form_tokens_are_kept_in_the_session_and_used_up_once(served):
    client = served.client()
    status, token = get(client, "/token")
    assert status == 200
    assert post(client, "/spend", form(token=token)) == (200, "spent")
    assert post(client, "/spend", form(token=token)) == (200, "unknown")


def test_forget_changes_in_a_view_aborts_so_far_and_what_follows_commits(served):
    client = served.client()
    assert post(client, "/count") == (200, "1")
    assert post(client, "/undo_then_count") == (200, "2")
    assert get(client, "/") == (200, "n=2 notes=0")
