"""A WSGI server thread keeps its connection between requests, and that changes nothing a request sees.

``TransactionCore(keep_connections=True)`` (the WSGI publisher's): after a
clean ending the connection stays with its thread instead of going back to
the pool. These tests hold what makes that safe: the next request still
begins on a fresh snapshot (a commit made meanwhile elsewhere is seen), a
failed request's connection goes back to the pool, close callbacks still
run, and ``DB.close()`` still closes the database with connections kept.
"""

from __future__ import annotations

import gc
import threading

import transaction
from publisherkit import app_from, client, publisher, request


def _app_value_reader(seen):
    def action(environ):
        connection = environ["zodbsession.connection"]
        seen.append(connection)
        return connection.root()["app"]
    return action


def _set_app_value(database, value):
    tm = transaction.TransactionManager()
    connection = database.open(tm)
    try:
        with tm:
            connection.root()["app"] = value
    finally:
        connection.close()


def test_a_kept_connection_sees_what_another_connection_committed_meanwhile(database):
    seen = []
    testapp = client(_publisher(_app_value_reader(seen), database))
    assert request(testapp).text == "0"
    _set_app_value(database, 5)
    assert request(testapp).text == "5"
    assert seen[0] is seen[1]  # the same connection, kept: it synced when its transaction began
    _set_app_value(database, 6)
    assert request(testapp).text == "6"


def test_a_failed_request_gives_its_connection_back_to_the_pool(database):
    def action(environ):
        raise RuntimeError("boom")

    testapp = client(_publisher(action, database))
    assert request(testapp, expect_errors=True).status_int == 500
    assert [conn for conn in database.pool.all if conn.opened] == []
    assert testapp.publisher.release_connections() == 0


def test_a_connection_given_close_callbacks_is_closed_and_they_run(database):
    closed = []

    def action(environ):
        environ["zodbsession.connection"].onCloseCallback(lambda: closed.append(True))
        return "ok"

    testapp = client(_publisher(action, database))
    assert request(testapp).status_int == 200
    assert closed == [True]
    assert [conn for conn in database.pool.all if conn.opened] == []


def test_each_thread_keeps_a_connection_of_its_own(database):
    pub, seen = _requests_at_once(database, 2)
    assert seen[0] is not seen[1]
    assert pub.release_connections() == 2
    assert [conn for conn in database.pool.all if conn.opened] == []


def test_closing_the_database_releases_the_kept_connections(database):
    seen = []
    testapp = client(_publisher(_app_value_reader(seen), database))
    assert request(testapp).text == "0"
    assert seen[0].opened  # kept, with no transaction begun
    database.close()  # aborts every open connection's manager: nothing to abort is no error
    assert seen[0].transaction_manager is None
    assert testapp.publisher.release_connections() == 1  # found released, not closed twice


def _publisher(action, database):
    return publisher(app_from(action), database)


def _requests_at_once(database, count):
    """*count* requests in threads of their own, all holding a connection at once: (publisher, seen)."""
    seen = []
    inside = threading.Barrier(count)

    def all_inside(environ):
        inside.wait(timeout=60)
        return _app_value_reader(seen)(environ)

    pub = _publisher(all_inside, database)
    testapp = client(pub)
    threads = [threading.Thread(target=lambda: request(testapp)) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return pub, seen


def test_a_publisher_dropped_without_release_gives_its_kept_connection_back(database):
    seen = []
    testapp = client(_publisher(_app_value_reader(seen), database))
    assert request(testapp).text == "0"
    assert [conn for conn in database.pool.all if conn.opened] == [seen[0]]
    del testapp, seen
    gc.collect()
    assert [conn for conn in database.pool.all if conn.opened] == []
    assert len(database.pool.available) == len(database.pool.all) == 1


def test_a_manager_given_a_synchronizer_by_the_application_is_not_kept(database):
    class Synchronizer:
        def newTransaction(self, txn):  # noqa: N802 (the ISynchronizer spelling)
            pass

        def beforeCompletion(self, txn):  # noqa: N802
            pass

        def afterCompletion(self, txn):  # noqa: N802
            pass

    synchronizer = Synchronizer()

    def action(environ):
        environ["zodbsession.connection"].transaction_manager.registerSynch(synchronizer)
        return "ok"

    testapp = client(_publisher(action, database))
    assert request(testapp).status_int == 200
    assert [conn for conn in database.pool.all if conn.opened] == []
    assert testapp.publisher.release_connections() == 0


def test_a_connection_with_a_second_database_open_is_kept_with_it():
    from ZODB import DB
    from ZODB.MappingStorage import MappingStorage

    databases = {}
    main = DB(MappingStorage(), databases=databases, database_name="main")
    DB(MappingStorage(), databases=databases, database_name="other")
    try:
        seen = []

        def action(environ):
            connection = environ["zodbsession.connection"]
            seen.append(connection.get_connection("other"))
            return "ok"

        testapp = client(_publisher(action, main))
        assert request(testapp).status_int == 200
        assert request(testapp).status_int == 200
        assert seen[0] is seen[1]  # kept along with its primary
        assert testapp.publisher.release_connections() == 1
    finally:
        main.close()
        databases["other"].close()



def test_a_server_with_a_thread_per_request_keeps_no_connection_for_ended_threads(database, monkeypatch):
    # wsgiref's ThreadingMixIn and werkzeug's development server start a
    # thread per request. Linux mostly reuses an ended thread's id, but
    # nothing promises it: each request here runs as a thread id never seen
    # again (the ids of threads that ended), and what each kept must go
    # back to the pool instead of piling up, one connection per request.
    import zodbsession.core.transact as transact

    seen = []
    testapp = client(_publisher(_app_value_reader(seen), database))
    current = [0]
    monkeypatch.setattr(transact, "get_ident", lambda: current[0])
    for number in range(1, 21):
        current[0] = -number  # no live thread has a negative id
        assert request(testapp).text == "0"
    assert len(seen) == 20
    opened = [conn for conn in database.pool.all if conn.opened]
    assert len(opened) <= threading.active_count() + 1, len(opened)
    assert testapp.publisher.release_connections() == len(opened)


def test_threads_keep_at_most_the_pool_size_less_one_so_the_pool_never_overflows(caplog):
    from ZODB import DB
    from ZODB.MappingStorage import MappingStorage

    small = DB(MappingStorage(), pool_size=3)
    try:
        _set_app_value(small, 0)
        pub, seen = _requests_at_once(small, 3)
        assert len(set(map(id, seen))) == 3
        kept = [conn for conn in small.pool.all if conn.opened]
        assert len(kept) == 2  # the pool's size less one: one went back to the pool
        assert len(small.pool.available) == 1
        caplog.clear()
        other = small.open()  # the janitor's, say: found in the pool, no warning
        other.close()
        assert "open connections with a pool_size" not in caplog.text
        assert pub.release_connections() == 2
    finally:
        small.close()
