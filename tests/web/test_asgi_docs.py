"""The examples of docs/asgi.md work as written: each Python block runs on a real uvicorn."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest
from asgikit import http_client, serving
from ZODB import DB

from zodbsession import SessionManager
from zodbsession.web.asgi import SessionMiddleware

DOC = Path(__file__).resolve().parents[2] / "docs" / "asgi.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.DOTALL)


def load(source: str, path: Path) -> Any:
    """Import *source* as a module from the file *path*, as uvicorn would."""
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_starlette_example_counts_views_and_visits_and_logs_in(tmp_path):
    example = load(python_blocks()[0], tmp_path / "asgi_doc_app.py")
    application = example.make_application(f"file://{tmp_path}/Data.fs")
    try:
        with serving(application) as server:
            with http_client(server) as alice:
                assert alice.post("/").json() == {"views": 1, "visits": 1}
                assert alice.get("/").json() == {"views": 2, "visits": 2}
                before = alice.cookies["zodbsession"]
                response = alice.post("/login", json={"user": "alice"})
                assert (response.status_code, response.headers["location"]) == (303, "/")
                after = alice.cookies["zodbsession"]
                assert after != before
                assert alice.get("/").json() == {"views": 3, "visits": 3}
            with http_client(server) as bob:
                assert bob.get("/").json() == {"views": 1, "visits": 4}
        with application.db.transaction() as conn:
            assert SessionManager().get(conn, after).user_id == "alice"
            assert SessionManager().get(conn, before) is None
    finally:
        application.db.close()


@pytest.fixture
def database(db: DB) -> DB:
    """Not the folder's MappingStorage: the examples run on tests/conftest.py's FileStorage ``db``."""
    return db


def test_the_fastapi_example_counts(tmp_path, database):
    example = load(python_blocks()[1], tmp_path / "asgi_doc_api.py")
    with serving(SessionMiddleware(example.api, database)) as server, http_client(server) as c:
        assert c.post("/count").json() == {"count": 1}
        assert c.post("/count").json() == {"count": 2}


def test_the_request_session_example_counts_visits_and_answers_the_session_as_json(tmp_path, database):
    example = load(python_blocks()[2], tmp_path / "asgi_doc_visit.py")
    with serving(SessionMiddleware(example.api, database)) as server, http_client(server) as c:
        assert c.get("/visit").json() == {"visits": 1}
        assert c.get("/visit").json() == {"visits": 2}
