"""The server log's times stay in the zone the process started in, Django or not.

Django applies its ``TIME_ZONE`` (default America/Chicago) to the whole
process when its settings load; a Django project served by ``zodbsession
serve`` switched the log's times to Chicago's from that moment on.
"""

from __future__ import annotations

import logging
import os
import re
import textwrap
import time
from datetime import UTC, datetime, timedelta

from serverproc import ServerProcess

SETTINGS = textwrap.dedent('''
    SECRET_KEY = "test"
    ALLOWED_HOSTS = ["127.0.0.1"]
    INSTALLED_APPS = []
    MIDDLEWARE = ["django.contrib.sessions.middleware.SessionMiddleware"]
    ROOT_URLCONF = "tzsite"
    SESSION_ENGINE = "zodbsession.django"
    DATABASES = {}
    # no TIME_ZONE: Django's default, America/Chicago, is applied to the process
''')

SITE = textwrap.dedent('''
    import os

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tzsettings")
    from django.core.wsgi import get_wsgi_application

    urlpatterns = []
    application = get_wsgi_application()
''')

STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d{3} INFO .*serving tzsite:application", re.M)


def test_a_django_app_does_not_move_the_log_times_to_chicago(tmp_path):
    (tmp_path / "tzsettings.py").write_text(SETTINGS)
    (tmp_path / "tzsite.py").write_text(SITE)
    before = datetime.now(UTC).replace(tzinfo=None) - timedelta(minutes=1)
    with ServerProcess(tmp_path, {"TZ": "UTC"}, "--app", "tzsite:application") as server:
        pass
    after = datetime.now(UTC).replace(tzinfo=None) + timedelta(minutes=1)
    (stamp,) = STAMP.findall(server.log())
    logged = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S")
    assert before <= logged <= after, f"logged at {logged}, UTC now is between {before} and {after}"


def test_the_formatter_keeps_the_zone_it_started_in(monkeypatch):
    from zodbsession.serve.cli import StartZoneFormatter

    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        formatter = StartZoneFormatter("%(asctime)s %(message)s")
        os.environ["TZ"] = "America/Chicago"  # what Django does
        time.tzset()
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None)
        record.created = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()
        record.msecs = 0
        assert formatter.format(record) == "2026-01-02 03:04:05,000 hello"
    finally:
        monkeypatch.undo()
        time.tzset()
