"""Settings of the shop example: Django's defaults plus zodbsession's session engine.

The lines that matter for zodbsession are marked; the rest is a minimal project.
Environment variables let the tests put the databases elsewhere.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("SHOP_SECRET_KEY", "the-shop-example-is-not-a-secret")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",  # for `manage.py clearsessions`; its table stays unused
    "django.contrib.messages",
    "shop",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    # zodbsession: `raise Redirect(...)` / `PublishError` in a view answers with its status (and commits).
    "zodbsession.django.middleware.PublishErrorMiddleware",
]

ROOT_URLCONF = "shop.urls"
WSGI_APPLICATION = "shop.wsgi.application"

# zodbsession: Django sessions in ZODB, committed with the request under `zodbsession serve`.
SESSION_ENGINE = "zodbsession.django"
# Outside a request the backend reads conf/zodbsession.toml, as the server does;
# ZODBSESSION_URI = "memory://" would name a database here instead (shop/tests.py does).
MESSAGE_STORAGE = "django.contrib.messages.storage.session.SessionStorage"

# contrib.auth's users live in SQLite, as in any Django project.
(BASE_DIR / "var").mkdir(exist_ok=True)
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("SHOP_SQLITE", str(BASE_DIR / "var" / "django.sqlite3")),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = True
TIME_ZONE = "UTC"
TEMPLATES = []
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django.request": {"handlers": ["console"], "level": "ERROR"}},
}
