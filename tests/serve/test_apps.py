"""``apps.load_app``: what ``serve --app`` imports, calls and recognises as WSGI or ASGI."""

from __future__ import annotations

import sys
import textwrap

import pytest

from zodbsession.core.errors import ConfigError
from zodbsession.serve.apps import load_app
from zodbsession.web.interface import is_asgi

MODULE = '''
calls = []


def wsgi_app(environ, start_response):
    start_response("200 OK", [])
    return [b"wsgi"]


def create_app():
    calls.append("create_app")
    return wsgi_app


def broken_factory():
    raise RuntimeError("no database configured")


async def asgi_app(scope, receive, send):
    pass


class AsgiApp:
    async def __call__(self, scope, receive, send):
        pass


class WsgiObject:
    def __call__(self, environ, start_response):
        return []


asgi_object = AsgiApp()
wsgi_object = WsgiObject()
not_callable = 42
'''


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project directory holding ``myproject.py``, made the current directory."""
    name = f"myproject_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    yield name
    sys.modules.pop(name, None)


def test_a_module_in_the_current_directory_is_importable(project):
    loaded = load_app(f"{project}:wsgi_app")
    assert (loaded.interface, loaded.app.__name__) == ("wsgi", "wsgi_app")


def test_parentheses_call_the_factory_once(project):
    loaded = load_app(f"{project}:create_app()")
    assert loaded.app.__name__ == "wsgi_app"
    assert sys.modules[project].calls == ["create_app"]


def test_an_uncalled_factory_is_refused_with_the_fix(project):
    with pytest.raises(ConfigError) as caught:
        load_app(f"{project}:create_app")
    message = str(caught.value)
    assert f"{project}:create_app()" in message
    assert "server.app" in message
    assert sys.modules[project].calls == []  # nothing was called to find out


def test_a_failing_factory_is_one_error_naming_it(project):
    with pytest.raises(ConfigError, match="broken_factory.*RuntimeError: no database configured"):
        load_app(f"{project}:broken_factory()")


def test_a_value_that_is_not_callable_is_refused(project):
    with pytest.raises(ConfigError, match="not callable"):
        load_app(f"{project}:not_callable")
    with pytest.raises(ConfigError, match="no factory"):
        load_app(f"{project}:not_callable()")


@pytest.mark.parametrize(("name", "interface"), [
    ("wsgi_app", "wsgi"), ("wsgi_object", "wsgi"), ("asgi_app", "asgi"), ("asgi_object", "asgi"),
], ids=["wsgi-function", "wsgi-object", "asgi-function", "asgi-object"])
def test_the_interface_is_read_from_the_signature(project, name, interface):
    assert load_app(f"{project}:{name}").interface == interface


def test_asgi_can_be_forced(project):
    assert load_app(f"{project}:wsgi_object", asgi=True).interface == "asgi"


def test_starlette_and_fastapi_apps_are_asgi():
    starlette = pytest.importorskip("starlette.applications")
    assert is_asgi(starlette.Starlette())
    fastapi = pytest.importorskip("fastapi")
    assert is_asgi(fastapi.FastAPI())


def test_flask_app_is_wsgi():
    flask = pytest.importorskip("flask")
    assert not is_asgi(flask.Flask("x"))


def test_a_missing_module_names_the_importable_directory(project, tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_app("no_such_module_here:app")
    assert "no_such_module_here" in str(caught.value)
    assert str(tmp_path) in str(caught.value)
