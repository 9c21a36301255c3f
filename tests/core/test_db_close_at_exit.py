"""A database nobody closes is closed at exit: the next start reads the FileStorage's index.

pserve and ``waitress-serve --call`` never close what the application opened;
a FileStorage left open writes no index, and the next start logged "Ignoring
index" and read the whole file again. ``open_db`` (and the Pyramid include,
for pyramid_zodbconn's database) now close it at exit, on Ctrl-C.
"""

from __future__ import annotations

import logging
import re
import shutil
import sys
import textwrap
import urllib.request
from pathlib import Path

from serverproc import free_port
from wsgiproc import WSGIProcess
from ZODB.FileStorage import FileStorage

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

MYMODULE = textwrap.dedent('''
    from zodbsession import SessionManager, SessionPublisher, open_db

    def app(environ, start_response):
        environ["zodbsession.session"]["seen"] = True
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    def make_application():
        db = open_db("file://var/Data.fs")
        return SessionPublisher(app, db, manager=SessionManager(idle_timeout=1800))
''')


def index_is_used(path: Path, caplog) -> bool:
    """Whether opening the FileStorage at *path* reads its index rather than the whole file."""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ZODB.FileStorage"):
        FileStorage(str(path), read_only=True).close()
    return (path.with_name(path.name + ".index").exists()
            and not any("Ignoring index" in record.getMessage() for record in caplog.records))


def test_waitress_serve_call_of_the_readme_factory_closes_the_database_at_exit(tmp_path, caplog):
    (tmp_path / "mymodule.py").write_text(MYMODULE)
    port = free_port()
    server = WSGIProcess(tmp_path, port=port, command=[
        sys.executable, "-m", "waitress", "--listen", f"127.0.0.1:{port}", "--call",
        "mymodule:make_application"])
    with server, urllib.request.urlopen(f"{server.url}/", timeout=30) as answer:
        assert answer.read() == b"ok"
    assert server.process.returncode is not None
    assert index_is_used(tmp_path / "var" / "Data.fs", caplog), server.log()


def test_pserve_closes_the_pyramid_apps_database_at_exit(tmp_path, caplog):
    shop = tmp_path / "shop"
    shutil.copytree(EXAMPLES / "pyramid", shop,
                    ignore=shutil.ignore_patterns("__pycache__", "Data.fs*", "*.sqlite"))
    port = free_port()
    ini = shop / "development.ini"
    ini.write_text(re.sub(r"listen = 127\.0\.0\.1:\d+", f"listen = 127.0.0.1:{port}", ini.read_text()))
    server = WSGIProcess(shop, port=port, command=[
        sys.executable, "-m", "pyramid.scripts.pserve", "development.ini"])
    with server, urllib.request.urlopen(f"{server.url}/", timeout=30) as answer:
        assert answer.status == 200
    assert index_is_used(shop / "Data.fs", caplog), server.log()
