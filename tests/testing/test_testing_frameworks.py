"""The generic ``zodbsession_client`` fixture with each framework's application.

Run as a user's test suite is run: a test module in a temporary directory,
by pytest in a subprocess, the plugin found through its entry point. With a
Pyramid app it answered 500 (the include refused the second transaction the
client's publisher opened, in the log only); with a Django project its
``session``, ``session_id`` and ``login()`` silently saw nothing. Now the
Pyramid app gets a client on its own database, and a Django project fails
at once in one line naming Django's test client.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

PYRAMID_TESTS = textwrap.dedent('''
    import pytest
    from pyramid.config import Configurator


    def home(request):
        return {"user": request.session.user_id, "visits": request.session.get("visits", 0)}


    def visit(request):
        request.session["visits"] = request.session.get("visits", 0) + 1
        return {"visits": request.session["visits"]}


    @pytest.fixture
    def zodbsession_app():
        with Configurator(settings={"zodbsession.uri": "memory://",
                                    "zodbsession.janitor_interval": "0"}) as config:
            config.include("zodbsession.pyramid")
            config.add_route("home", "/")
            config.add_view(home, route_name="home", renderer="json")
            config.add_route("visit", "/visit")
            config.add_view(visit, route_name="visit", renderer="json", request_method="POST")
            return config.make_wsgi_app()


    def test_the_generic_client_drives_a_pyramid_app(zodbsession_client):
        assert zodbsession_client.post("/visit").json() == {"visits": 1}
        assert zodbsession_client.session == {"visits": 1}
        assert zodbsession_client.session_id is not None
        zodbsession_client.login("alice")
        with zodbsession_client.session_transaction() as session:
            session["visits"] = 41
        assert zodbsession_client.get("/").json() == {"user": "alice", "visits": 41}
''')

DJANGO_TESTS = textwrap.dedent('''
    import django
    import pytest
    from django.conf import settings

    settings.configure(
        DEBUG=False, SECRET_KEY="test", ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__,
        INSTALLED_APPS=["django.contrib.sessions"], SESSION_ENGINE="zodbsession.django",
        ZODBSESSION_URI="memory://",
        MIDDLEWARE=["django.contrib.sessions.middleware.SessionMiddleware"])
    django.setup()
    urlpatterns = []


    @pytest.fixture
    def zodbsession_app():
        from django.core.wsgi import get_wsgi_application
        return get_wsgi_application()


    def test_the_generic_client_and_a_django_project(zodbsession_client):
        zodbsession_client.login("alice")
''')


def run_suite(tmp_path: Path, source: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_user_suite.py").write_text(source)
    # -rN: no short summary, whose lines pytest leaves whole when CI is set (and repeats the message)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rN", "-p", "no:cacheprovider",
                           "test_user_suite.py"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)


def test_the_generic_client_drives_a_pyramid_app_on_its_own_database(tmp_path):
    result = run_suite(tmp_path, PYRAMID_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_a_django_project_fails_at_once_in_one_line_naming_djangos_test_client(tmp_path):
    result = run_suite(tmp_path, DJANGO_TESTS)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if "zodbsession_client:" in line]
    assert len(lines) == 1, result.stdout
    assert "use Django's test client (django.test.Client)" in lines[0]
    assert "zodbsession.django.use_database(zodbsession_db)" in lines[0]
    assert "Traceback" not in result.stdout
