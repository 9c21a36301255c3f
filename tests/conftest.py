"""Shared fixtures: real ZODB databases, connections with their own transaction
managers, a fake clock, and a storage-load counter.

Everything here is a real ZODB object; nothing is mocked. The load counter
wraps one storage instance's ``load``/``loadBefore`` to count records read,
which measures the code under test without replacing any of it.
"""

from __future__ import annotations

import collections
import contextlib
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import transaction
from transaction.interfaces import NoTransaction
from ZODB import DB
from ZODB.Connection import Connection
from ZODB.FileStorage import FileStorage
from ZODB.MappingStorage import MappingStorage
from ZODB.utils import get_pickle_metadata

from zodbsession.core.manager import SessionManager

#: The kits the tests share (apps, clients, server processes), importable by name from every folder.
KITS = str(Path(__file__).resolve().parent / "kits")
if KITS not in sys.path:
    sys.path.insert(0, KITS)

from sharedkit import BROWSER_WAIT, EPOCH, FakeClock, wsgi_call  # noqa: E402, F401  (re-exported)


class LoadCounter:
    """Counts the records a storage instance hands out, by class name.

    Install it on a storage before handing the storage to ``ZODB.DB``; every
    object a connection loads goes through ``loadBefore`` (or ``load``).
    """

    def __init__(self, storage: object) -> None:
        self.by_class: collections.Counter[str] = collections.Counter()
        self.oids: list[bytes] = []
        self.active = False
        for name in ("load", "loadBefore"):
            original = getattr(storage, name)
            setattr(storage, name, self._wrap(original))

    def _wrap(self, original: Callable) -> Callable:
        def counted(oid, *args, **kwargs):
            result = original(oid, *args, **kwargs)
            if self.active and result is not None:
                module, klass = get_pickle_metadata(result[0])
                self.by_class[klass] += 1
                self.oids.append(oid)
            return result

        return counted

    def reset(self) -> None:
        self.by_class.clear()
        self.oids.clear()

    @property
    def total(self) -> int:
        return sum(self.by_class.values())


@pytest.fixture
def clock() -> FakeClock:
    """A mutable fake clock starting at ``EPOCH``."""
    return FakeClock()


@pytest.fixture
def manager(clock: FakeClock) -> SessionManager:
    """A manager with the default timeouts on the fake clock."""
    return SessionManager(clock=clock)


@pytest.fixture
def memory_db() -> Iterator[DB]:
    """A ZODB database on a MappingStorage."""
    database = DB(MappingStorage())
    yield database
    database.close()


@pytest.fixture
def db_path(tmp_path) -> str:
    """Where the ``db`` fixture keeps its FileStorage."""
    return str(tmp_path / "Data.fs")


@pytest.fixture
def db(db_path: str) -> Iterator[DB]:
    """A ZODB database on a temporary FileStorage."""
    database = DB(FileStorage(db_path))
    yield database
    database.close()


def open_connection(database: DB, *, explicit: bool = False) -> Connection:
    """Open a connection of *database* with a transaction manager of its own."""
    return database.open(transaction.TransactionManager(explicit=explicit))


@pytest.fixture
def connect() -> Iterator[Callable[..., Connection]]:
    """A factory of connections, each with its own transaction manager.

    Every connection it opened is aborted and closed at teardown, so a test
    that fails half-way does not leave a database that refuses to close.
    """
    opened: list[Connection] = []

    def _connect(database: DB, *, explicit: bool = False) -> Connection:
        conn = open_connection(database, explicit=explicit)
        opened.append(conn)
        return conn

    yield _connect
    for conn in opened:
        if conn.opened:
            # An explicit manager with no transaction begun has nothing to abort.
            with contextlib.suppress(NoTransaction):
                conn.transaction_manager.abort()
            conn.close()


@pytest.fixture
def conn(db: DB, connect) -> Connection:
    """One connection to the FileStorage ``db``."""
    return connect(db)


@pytest.fixture
def memory_conn(memory_db: DB, connect) -> Connection:
    """One connection to the MappingStorage ``memory_db``."""
    return connect(memory_db)


@pytest.fixture
def load_counter() -> type[LoadCounter]:
    """The ``LoadCounter`` class, to install on a storage the test opens."""
    return LoadCounter


@pytest.fixture
def env(tmp_path):
    """Settings for a ``zodbsession serve`` process whose database lives in this test's directory."""
    return {
        "ZODBSESSION_STORAGE_URI": f"file://{tmp_path}/Data.fs",
        "ZODBSESSION_SERVER_THREADS": "4",
        "ZODBSESSION_STORAGE_POOL_SIZE": "4",
    }


# -- a real headless browser ---------------------------------------------------------


#: Chromium's own background traffic is turned off: this machine reaches no
#: network but loopback, and without these flags its connections are refused.
CHROME_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,1400",
)


@pytest.fixture
def driver(tmp_path, monkeypatch):
    """A headless Chromium (Selenium) with a fresh profile, quit however the test ends.

    Skipped, saying what is missing, without Selenium or Debian's ``chromium``
    and ``chromium-driver``. Selenium Manager never downloads anything: the
    driver is given by path and ``SE_OFFLINE`` is set.
    """
    pytest.importorskip("selenium", reason="selenium is not installed (pip install selenium)")
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    missing = [name for name, path in (("chromium", chromium), ("chromedriver", chromedriver))
               if path is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not found on PATH "
                    "(apt-get install chromium chromium-driver)")
    monkeypatch.setenv("SE_OFFLINE", "true")

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    service = Service(executable_path=chromedriver, log_output=str(tmp_path / "chromedriver.log"))
    browser = webdriver.Chrome(options=options, service=service)
    try:
        browser.set_page_load_timeout(BROWSER_WAIT)
        browser.set_script_timeout(BROWSER_WAIT)
        browser.implicitly_wait(BROWSER_WAIT)
        yield browser
    finally:
        browser.quit()
