"""One Django configuration for this test process, and a small app to drive it.

Django's settings are process-wide: ``setup()`` configures them once, with
``SESSION_ENGINE = "zodbsession.django"`` on a ``memory://`` database, an
in-memory SQLite database for ``contrib.auth`` (migrated once), and this
module as the URLconf; importing this module runs it. The example project
under ``examples/django`` runs in subprocesses of its own, never here.
"""

from __future__ import annotations

import itertools
from typing import Any

import django
import transaction
from django.conf import settings
from django.contrib import auth, messages
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path

import zodbsession
from zodbsession.core.errors import PublishError, Redirect
from zodbsession.core.manager import SessionManager
from zodbsession.core.store import get_container
from zodbsession.core.work import connection, in_transaction
from zodbsession.django import database

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "zodbsession.django.middleware.PublishErrorMiddleware",
]

PASSWORD = "correct horse battery staple"
_usernames = itertools.count(1)


def setup() -> None:
    """Configure Django for this process (once) and create the auth tables."""
    if settings.configured:
        return
    settings.configure(
        SECRET_KEY="django-tests-only",
        DEBUG=False,
        ALLOWED_HOSTS=["*"],
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth",
                        "django.contrib.sessions", "django.contrib.messages"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        MIDDLEWARE=MIDDLEWARE,
        ROOT_URLCONF=__name__,
        SESSION_ENGINE="zodbsession.django",
        ZODBSESSION_URI="memory://",
        MESSAGE_STORAGE="django.contrib.messages.storage.session.SessionStorage",
        PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        USE_TZ=True,
        LOGGING_CONFIG=None,
    )
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, run_syncdb=True)


setup()


def new_user() -> Any:
    """A fresh ``contrib.auth`` user whose password is ``PASSWORD``."""
    from django.contrib.auth.models import User

    return User.objects.create_user(f"user{next(_usernames)}", password=PASSWORD)


def records(db: Any = None) -> dict[str, Any]:
    """``{key: (type name, data, user_id, deadline)}`` of every stored session, read afresh."""
    db = db if db is not None else database.database()[0]
    with connection(db) as conn:
        def read() -> dict[str, Any]:
            container = get_container(database.sessions_connection(conn), create=False)
            if container is None:
                return {}
            expiry = SessionManager().get_expiry_date  # the defaults: Django's records carry their own
            return {key: (type(s).__name__, s.data(), s.user_id, expiry(s).timestamp())
                    for key, s in container.sessions.items()}

        return in_transaction(conn, read, write=False)


def app_value(db: Any, key: str, default: Any = 0) -> Any:
    """One value of the application's own data in *db*'s root, read afresh."""
    with connection(db) as conn:
        return in_transaction(conn, lambda: conn.root().get(key, default), write=False)


# -- the views -------------------------------------------------------------------


def attempt(request: HttpRequest) -> int | None:
    """Which try of the request this is, under a publisher (WSGI environ) or the ASGI middleware."""
    where = getattr(request, "environ", None) or getattr(request, "scope", None) or {}
    return where.get("zodbsession.attempt")



def count(request: HttpRequest) -> HttpResponse:
    """Counts in the session and, under a publisher, in the app's own ZODB data too."""
    request.session["n"] = request.session.get("n", 0) + 1
    hits = None
    if zodbsession.registry.has():
        root = zodbsession.current_connection.root()
        hits = root["hits"] = root.get("hits", 0) + 1
    return JsonResponse({"n": request.session["n"], "hits": hits, "key": request.session.session_key,
                         "attempt": attempt(request)})


async def acount(request: HttpRequest) -> HttpResponse:
    """``count`` as an async view: the session through its async verbs."""
    n = await request.session.aget("n", 0) + 1
    await request.session.aset("n", n)
    if request.GET.get("save"):
        await request.session.asave()  # now, in the request's transaction under a publisher
    return JsonResponse({"n": n})


def fail(request: HttpRequest) -> HttpResponse:
    """Saves the session and changes app data, then fails: a publisher must roll both back."""
    request.session["n"] = request.session.get("n", 0) + 100
    request.session.save()  # written now, in the request's transaction
    if zodbsession.registry.has():
        root = zodbsession.current_connection.root()
        root["hits"] = root.get("hits", 0) + 100
    raise RuntimeError("the view failed after writing")


def redirect(request: HttpRequest) -> HttpResponse:
    """Writes the session, then answers by raising ``Redirect``."""
    request.session["redirected"] = True
    raise Redirect("/count")


def refuse(request: HttpRequest) -> HttpResponse:
    """Counts a refusal in the session, then answers 409 by raising ``PublishError``."""
    request.session["refused"] = request.session.get("refused", 0) + 1
    raise PublishError("already taken", status="409 Conflict", headers=[("X-Reason", "taken")])


def interfere(request: HttpRequest) -> HttpResponse:
    """On the first attempt, commits a change to this very session elsewhere: a forced conflict.

    The other transaction changes ``n`` too, so the two cannot merge (even
    with a three-way merge of session records, a key changed on both sides
    conflicts): the request must be replayed.
    """
    response = count(request)
    request.session.save()
    if attempt(request) == 1:
        db = zodbsession.current_connection.db()
        tm = transaction.TransactionManager()
        other = db.open(tm)
        try:
            container = get_container(database.sessions_connection(other))
            record = container.sessions[request.session.session_key]
            record._data = {**record._data, "n": 99, "interfered": True}
            tm.commit()
        finally:
            other.close()
    return response


def login(request: HttpRequest) -> HttpResponse:
    user = auth.authenticate(request, username=request.POST["username"], password=request.POST["password"])
    if user is None:
        return HttpResponse("no", status=403)
    auth.login(request, user)
    return JsonResponse({"key": request.session.session_key})


def logout(request: HttpRequest) -> HttpResponse:
    auth.logout(request)
    return HttpResponse("bye")


def whoami(request: HttpRequest) -> HttpResponse:
    user = request.user
    return JsonResponse({"user": user.get_username() if user.is_authenticated else None})


def message(request: HttpRequest) -> HttpResponse:
    messages.info(request, request.GET.get("text", "hello"))
    return HttpResponse(status=302, headers={"Location": "/messages"})


def show_messages(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"messages": [str(m) for m in messages.get_messages(request)]})


urlpatterns = [
    path("count", count),
    path("acount", acount),
    path("fail", fail),
    path("redirect", redirect),
    path("refuse", refuse),
    path("interfere", interfere),
    path("login", login),
    path("logout", logout),
    path("whoami", whoami),
    path("message", message),
    path("messages", show_messages),
]
