"""The Django session backend on its own: the behaviours of Django's own backends.

These mirror what Django's ``SessionTestsMixin`` checks (the flags, cycle,
flush, create/update errors, unknown keys, expiry, clear_expired, key
validation, corrupt data), plus what only this backend has: records in the
session container, Django's deadline honoured by the janitor, the logged-in
user as the session's owner, and configuration from Django's settings.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Iterator
from datetime import timedelta

import djangokit  # configures Django for this process
import pytest
from django.contrib.sessions.backends.base import CreateError, UpdateError
from django.core import management
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from django.utils import timezone
from ZODB import DB

from zodbsession.core.errors import SessionTooLarge
from zodbsession.core.manager import SessionManager
from zodbsession.core.session import is_well_formed_id
from zodbsession.core.work import connection, in_transaction
from zodbsession.django import SessionStore, database, use_database
from zodbsession.django.record import DjangoSession
from zodbsession.ops import maintenance

COOKIE_AGE = 1209600  # Django's default SESSION_COOKIE_AGE, two weeks


@pytest.fixture
def db(db: DB) -> Iterator[DB]:
    """The folder's MappingStorage ``db``, used by the backend while the test runs."""
    use_database(db, SessionManager())
    yield db
    database.close_database()


def saved(**data) -> SessionStore:
    session = SessionStore()
    session.update(data)
    session.save()
    return session


# -- the flags ------------------------------------------------------------------


def test_new_session_is_neither_modified_nor_accessed(db):
    session = SessionStore()
    assert session.modified is False and session.accessed is False
    assert session.session_key is None


def test_reading_marks_accessed_only_and_writing_marks_modified(db):
    session = saved(x=1)
    again = SessionStore(session.session_key)
    assert again.get("x") == 1
    assert again.accessed is True and again.modified is False
    again["y"] = 2
    assert again.modified is True


def test_pop_with_default_leaves_the_session_unmodified(db):
    session = SessionStore()
    assert session.pop("missing", "default") == "default"
    assert session.accessed is True and session.modified is False
    with pytest.raises(KeyError):
        session.pop("missing")


# -- storing ------------------------------------------------------------------------


def test_save_stores_a_record_in_the_session_container(db):
    session = saved(cart=["apple"])
    assert is_well_formed_id(session.session_key)
    kind, data, _user, expires = djangokit.records(db)[session.session_key]
    assert (kind, data) == ("DjangoSession", {"cart": ["apple"]})
    assert expires == pytest.approx(session.get_expiry_date().timestamp())


def test_stored_sessions_are_seen_by_zodbsession_ls_and_show(db):
    session = saved(cart=["apple"])
    manager = SessionManager()
    detail = maintenance.show_session(db, manager, session.session_key)
    assert detail.data == {"cart": "['apple']"} and detail.info.live
    assert detail.info.deadline == pytest.approx(timezone.now().timestamp() + COOKIE_AGE, abs=5)
    assert session.session_key in [info.id for info in maintenance.list_sessions(db, manager)]


def test_save_keeps_the_data_in_memory(db):
    session = saved(a="b")
    assert session["a"] == "b"


def test_data_comes_back_as_the_serializer_gives_it(db):
    """JSON, as with Django's own backends: a tuple comes back a list, keys as strings."""
    session = saved(pair=(1, 2), numbers={1: "one"})
    again = SessionStore(session.session_key)
    assert again["pair"] == [1, 2] and again["numbers"] == {"1": "one"}


def test_loaded_data_shares_nothing_with_the_stored_record(db):
    session = saved(cart=["apple"])
    SessionStore(session.session_key)["cart"].append("pear")  # in place, never saved
    assert SessionStore(session.session_key)["cart"] == ["apple"]


def test_save_refuses_a_session_over_max_session_bytes_and_stores_nothing(db):
    use_database(db, SessionManager(max_session_bytes=1000))
    session = SessionStore()
    session["big"] = "x" * 5000
    with pytest.raises(SessionTooLarge):
        session.save()
    assert djangokit.records(db) == {}


# -- cycle, flush, delete -------------------------------------------------------------


def test_cycle_key_keeps_the_data_under_a_new_key_and_ends_the_old_one(db):
    session = saved(a="c", b="d")
    old_key = session.session_key
    session.cycle_key()
    assert session.session_key != old_key
    assert session.exists(old_key) is False
    assert dict(SessionStore(session.session_key).items()) == {"a": "c", "b": "d"}


def test_cycle_key_of_a_session_not_loaded_yet_keeps_its_data(db):
    key = saved(a="c").session_key
    session = SessionStore(key)
    session.cycle_key()
    assert dict(session.items()) == {"a": "c"} and not session.exists(key)


def test_flush_deletes_the_record_and_forgets_the_key(db):
    session = saved(foo="bar")
    old_key = session.session_key
    session.flush()
    assert session.session_key is None
    assert session.exists(old_key) is False
    assert session.modified is True and session.accessed is True
    assert old_key not in djangokit.records(db)


def test_delete_of_a_missing_key_is_harmless(db):
    SessionStore().delete("a-key-that-was-never-stored")
    SessionStore().delete()


# -- create and update errors -----------------------------------------------------------


def test_save_must_create_on_an_existing_key_raises_create_error(db):
    key = saved(a=1).session_key
    clash = SessionStore(key)
    clash["a"] = 2
    with pytest.raises(CreateError):
        clash.save(must_create=True)
    assert SessionStore(key)["a"] == 1


def test_save_after_a_concurrent_delete_raises_update_error_not_a_resurrection(db):
    first = SessionStore()
    first["test_data"] = "value1"
    first.save(must_create=True)
    SessionStore(first.session_key).delete()  # a logout in another request
    first["test_data"] = "value2"
    with pytest.raises(UpdateError):
        first.save()
    assert first.load() == {}
    assert djangokit.records(db) == {}


# -- unknown, bogus and malformed keys ---------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    ["someunknownkey", "x" * 43, "abcdefghijklmnopqrstuvwxyz0123456789" * 20, "../../etc/passwd"],
    ids=["unknown", "well-formed-but-unknown", "overlong", "path-like"],
)
def test_an_unknown_key_loads_empty_forgets_the_key_and_stores_nothing(db, key):
    session = SessionStore(key)
    assert session.load() == {}
    assert session.session_key is None
    assert session.exists(key) is False
    assert djangokit.records(db) == {}


def test_saving_a_session_from_an_unknown_key_stores_it_under_a_fresh_key(db):
    session = SessionStore("1")
    session["cat"] = "dog"
    session.save()
    assert session.session_key not in ("1", None)
    assert list(djangokit.records(db)) == [session.session_key]


@pytest.mark.parametrize(("key", "kept"), [("", None), ("1234567", None), ("12345678", "12345678")],
                         ids=["empty", "seven-characters", "eight-characters"])
def test_session_keys_shorter_than_eight_characters_are_rejected(db, key, kept):
    session = SessionStore()
    session._session_key = key
    assert session.session_key == kept


def test_session_key_is_read_only(db):
    with pytest.raises(AttributeError):
        SessionStore().session_key = "abcdefghij"


def test_a_session_stored_by_the_publisher_is_not_a_django_session(db):
    """A zodbsession session id in Django's cookie loads nothing; saving and deleting leave it alone."""
    manager = SessionManager()
    with db.transaction() as conn:
        own = manager.new(conn)
        own["secret"] = "the publisher's"
        own_id = own.id
    session = SessionStore(own_id)
    assert session.load() == {} and session.exists(own_id) is True
    clash = SessionStore(own_id)
    clash["x"] = 1
    clash.save()
    assert clash.session_key != own_id
    SessionStore().delete(own_id)
    assert djangokit.records(db)[own_id][:2] == ("Session", {"secret": "the publisher's"})


# -- expiry -----------------------------------------------------------------------------


def test_expiry_defaults_to_the_cookie_age_and_zero_means_browser_close(db):
    session = SessionStore()
    assert session.get_expiry_age() == COOKIE_AGE
    session.set_expiry(0)
    assert session.get_expiry_age() == COOKIE_AGE
    assert session.get_expire_at_browser_close() is True
    session.set_expiry(None)
    assert session.get_expire_at_browser_close() is False


@pytest.mark.parametrize("value", [10, timedelta(seconds=10), "moment"],
                         ids=["seconds", "timedelta", "datetime"])
def test_custom_expiry_sets_age_and_date(db, value):
    modification = timezone.now()
    if value == "moment":
        value = modification + timedelta(seconds=10)
    session = SessionStore()
    session.set_expiry(value)
    assert session.get_expiry_date(modification=modification) == pytest.approx(
        modification + timedelta(seconds=10), abs=timedelta(seconds=1))
    assert session.get_expiry_age(modification=modification) in (9, 10)


def test_a_session_past_its_expiry_loads_empty(db):
    session = SessionStore()
    session["foo"] = "bar"
    session.set_expiry(-timedelta(seconds=10))
    session.save()
    again = SessionStore(session.session_key)
    assert "foo" not in again
    assert again.exists(session.session_key) is True  # stored until cleared, as Django's db


def test_the_record_deadline_follows_set_expiry_at_each_save(db):
    session = saved(a=1)
    session.set_expiry(60)
    session.save()
    expires = djangokit.records(db)[session.session_key][3]
    assert expires == pytest.approx(timezone.now().timestamp() + 60, abs=5)


def test_the_janitor_sweeps_a_django_session_at_djangos_deadline_not_the_idle_timeout(db):
    manager = SessionManager(idle_timeout=60, max_lifetime=120, access_resolution=0)
    session = SessionStore()
    session["a"] = 1
    session.set_expiry(3600)
    session.save()
    now = timezone.now().timestamp()
    with connection(db) as conn:
        assert manager.expire(conn, now=now + 600) == 0  # past idle_timeout and max_lifetime
    assert session.session_key in djangokit.records(db)
    with connection(db) as conn:
        assert manager.expire(conn, now=now + 3610) == 1
    assert djangokit.records(db) == {}


def test_a_shortened_expiry_is_swept_on_time(db):
    """The expiry index only grows lazily; a save that shortens the deadline files it anew."""
    session = SessionStore()
    session["a"] = 1
    session.set_expiry(3600)
    session.save()
    session.set_expiry(30)
    session.save()
    now = timezone.now().timestamp()
    with connection(db) as conn:
        assert SessionManager().expire(conn, now=now + 60) == 1
    assert djangokit.records(db) == {}


def test_clear_expired_removes_the_expired_sessions_only(db):
    live = SessionStore()
    live["foo"] = "bar"
    live.set_expiry(3600)
    live.save()
    dead = SessionStore()
    dead["foo"] = "bar"
    dead.set_expiry(-3600)
    dead.save()
    SessionStore.clear_expired()
    assert list(djangokit.records(db)) == [live.session_key]


def test_manage_py_clearsessions_clears_through_clear_expired(db):
    dead = SessionStore()
    dead["foo"] = "bar"
    dead.set_expiry(-3600)
    dead.save()
    management.call_command("clearsessions")
    assert djangokit.records(db) == {}


# -- decoding, as Django does -----------------------------------------------------------------


def test_decode_reverses_encode(db):
    session = SessionStore()
    assert session.decode(session.encode({"a test key": "a test value"})) == {"a test key": "a test value"}


@pytest.mark.parametrize("encoded", [base64.b64encode(b"flaskdj:alkdjf").decode(), "bad:encoded:value"],
                         ids=["foreign", "unsigned"])
def test_corrupt_encoded_data_decodes_empty_and_is_logged(db, caplog, encoded):
    with caplog.at_level(logging.WARNING, logger="django.security.SuspiciousSession"):
        assert SessionStore().decode(encoded) == {}
    assert "Session data corrupted" in caplog.text


# -- the owner ----------------------------------------------------------------------------


def test_the_logged_in_user_owns_the_session_so_revoke_user_ends_it(db):
    session = saved(_auth_user_id="42")
    assert djangokit.records(db)[session.session_key][2] == "42"
    assert maintenance.revoke_user(db, SessionManager(), "42") == 1
    assert SessionStore(session.session_key).load() == {}
    session.pop("_auth_user_id")
    with pytest.raises(UpdateError):
        session.save()


def test_logging_out_in_the_data_clears_the_owner(db):
    session = saved(_auth_user_id=7)
    del session["_auth_user_id"]
    session.save()
    assert djangokit.records(db)[session.session_key][2] is None


# -- async ----------------------------------------------------------------------------------


def test_the_async_verbs_behave_as_the_sync_ones(db):
    async def scenario() -> None:
        session = SessionStore()
        await session.aset("cat", "dog")
        await session.asave()
        key = session.session_key
        assert await session.aexists(key) is True
        again = SessionStore(key)
        assert await again.aget("cat") == "dog"
        await again.acycle_key()
        assert await again.aexists(key) is False
        assert await SessionStore(again.session_key).aget("cat") == "dog"
        bogus = SessionStore("someunknownkey")
        assert await bogus.aload() == {} and bogus.session_key is None
        expired = SessionStore()
        await expired.aset("x", 1)
        await expired.aset_expiry(-10)
        await expired.asave()
        await SessionStore.aclear_expired()
        assert await expired.aexists(expired.session_key) is False
        clash = SessionStore(again.session_key)
        with pytest.raises(CreateError):
            await clash.asave(must_create=True)
        await again.adelete()
        assert await again.aexists(again.session_key) is False

    asyncio.run(scenario())
    assert djangokit.records(db) == {}


# -- configuration ------------------------------------------------------------------------------


def test_a_uri_setting_that_is_not_a_uri_is_improperly_configured():
    with override_settings(ZODBSESSION_URI="var/Data.fs"), pytest.raises(ImproperlyConfigured) as info:
        SessionStore("x" * 43).load()
    assert "ZODBSESSION_URI" in str(info.value) and "var/Data.fs" in str(info.value)


def test_the_toml_file_names_the_database(tmp_path):
    path = tmp_path / "zodbsession.toml"
    path.write_text(f'[storage]\nuri = "file://{tmp_path}/Data.fs"\n')
    with override_settings(ZODBSESSION_URI=None, ZODBSESSION_CONFIG=str(path)):
        key = saved(a=1).session_key
        db, _manager = database.database()
        assert db.storage.getName() == f"{tmp_path}/Data.fs"
        assert SessionStore(key)["a"] == 1
    # Leaving the override closed that database and went back to memory://.
    assert SessionStore(key).load() == {}
    assert (tmp_path / "Data.fs").stat().st_size > 0


def test_a_bad_toml_setting_names_the_key():
    with override_settings(ZODBSESSION_URI=None, ZODBSESSION_CONFIG="/nonexistent/zodbsession.toml"), \
            pytest.raises(ImproperlyConfigured, match="nonexistent"):
        SessionStore().save()


def test_records_are_django_sessions():
    """The class pickled in databases: renaming it breaks existing ones."""
    name = f"{DjangoSession.__module__}.{DjangoSession.__qualname__}"
    assert name == "zodbsession.django.record.DjangoSession"


# -- a separate sessions database ------------------------------------------------------------


def test_with_a_sessions_database_the_records_live_there():
    from zodbsession.core.db import SESSIONS_DATABASE, open_db

    db = open_db("memory://", sessions_uri="memory://")
    try:
        use_database(db)
        session = saved(a=1)
        with connection(db) as conn:
            def where() -> tuple[bool, bool]:
                main = conn.root().get("zodbsession.sessions")
                sessions = conn.get_connection(SESSIONS_DATABASE).root()["zodbsession.sessions"]
                return main is not None and session.session_key in main.sessions, \
                    session.session_key in sessions.sessions

            assert in_transaction(conn, where, write=False) == (False, True)
        assert SessionStore(session.session_key)["a"] == 1
        session.flush()
        SessionStore.clear_expired()
    finally:
        database.close_database()
        for each in db.databases.values():
            each.close()


# -- concurrency, outside a request ------------------------------------------------------------


def test_concurrent_saves_from_many_threads_all_land(tmp_path):
    """Each save is its own short transaction; conflicts between them are retried, none is lost."""
    import threading

    from zodbsession.core.db import open_db

    db = open_db(f"file://{tmp_path}/Data.fs")
    threads, per_thread = 4, 10
    start = threading.Barrier(threads)
    keys: list[str] = []
    errors: list[BaseException] = []

    def shopper(number: int) -> None:
        try:
            start.wait()
            for i in range(per_thread):
                session = SessionStore()
                session["who"] = [number, i]
                session.save()
                keys.append(session.session_key)
        except BaseException as exc:  # a thread cannot fail the test itself: the main one checks
            errors.append(exc)

    try:
        use_database(db)
        workers = [threading.Thread(target=shopper, args=(n,)) for n in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert errors == []
        stored = djangokit.records(db)
        assert sorted(stored) == sorted(keys) and len(keys) == threads * per_thread
        assert {tuple(data["who"]) for _kind, data, _user, _deadline in stored.values()} == {
            (n, i) for n in range(threads) for i in range(per_thread)}
    finally:
        database.close_database()
        db.close()
