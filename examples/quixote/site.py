"""A small Quixote 3.8 site on ZODB sessions: a login, a guestbook form, a failing action.

From the repository's root, with zodbsession's server (its storage, janitor
and settings from conf/zodbsession.toml)::

    zodbsession serve --app examples.quixote.site:app

or with waitress alone, 8 threads, on ``ZODBSESSION_STORAGE_URI`` (default
``file://var/Data.fs``)::

    waitress-serve --threads 8 --listen 127.0.0.1:8080 examples.quixote.site:app

Signing the guestbook stores the entry (the site's own ZODB data) and counts
it in the session, in one transaction; "sign and fail" does both and then
raises, so both are rolled back together; the members' page answers 403 to
strangers (Quixote's AccessError, which commits as any PublishError does).
"""

from __future__ import annotations

import os

from persistent.list import PersistentList
from quixote import get_field, get_request, get_session, get_session_manager, get_user, redirect
from quixote.directory import Directory
from quixote.errors import AccessError, QueryError
from quixote.html import htmltext

from zodbsession.quixote import make_app, root

PAGE = htmltext("""<!DOCTYPE html>
<html><head><title>Guestbook</title></head><body>
<h1>Guestbook</h1>
<p id="who">%(who)s</p>
<p id="signed">you signed %(signed)s times</p>
<ul id="entries">%(entries)s</ul>
%(forms)s
</body></html>
""")

LOGIN_FORM = htmltext("""<form method="post" action="/login">
<input name="user"> <button>log in</button></form>""")

MEMBER_FORMS = htmltext("""<form method="post" action="/sign">
<input type="hidden" name="csrf_token" value="%(token)s">
<input name="text"> <button>sign</button>
<button formaction="/sign_and_fail">sign and fail</button></form>
<form method="post" action="/logout"><button>log out</button></form>""")


def entries() -> PersistentList:
    """The guestbook: the site's own data, in the request's transaction."""
    data = root()
    if "guestbook" not in data:
        data["guestbook"] = PersistentList()
    return data["guestbook"]


class Guestbook(Directory):
    _q_exports = ["", "login", "logout", "sign", "sign_and_fail", "members"]

    def _q_index(self) -> str:
        session = get_session()
        user = get_user()
        items = htmltext("").join(htmltext("<li>%s</li>") % entry for entry in root().get("guestbook", ()))
        if user:
            forms = MEMBER_FORMS % {"token": session.get_csrf_token()}
            who = htmltext("logged in as %s") % user
        else:
            forms, who = LOGIN_FORM, "a stranger"
        return str(PAGE % {"who": who, "signed": session.get("signed", 0), "entries": items, "forms": forms})

    def login(self) -> str:
        self._require_post()
        user = (get_field("user") or "").strip()
        if not user:
            raise QueryError("a user name is needed")
        get_session().set_user(user)  # (a real site checks a password first); rotates the session id
        return redirect("/")

    def sign(self) -> str:
        self._add_entry()
        return redirect("/")

    def sign_and_fail(self) -> str:
        self._add_entry()
        raise RuntimeError("the entry and the count are both rolled back")

    def members(self) -> str:
        if not get_user():
            raise AccessError("members only")
        return str(htmltext("<p>welcome, %s</p>") % get_user())

    def logout(self) -> str:
        self._require_post()
        get_session_manager().expire_session()  # ends the session on the server, deletes the cookie
        return redirect("/")

    def _add_entry(self) -> None:
        self._require_post()
        session = get_session()
        if not get_user():
            raise AccessError("log in to sign")
        if not session.valid_csrf_token():
            raise AccessError("the form is stale: reload the page")
        entries().append(f"{get_user()}: {get_field('text') or ''}")
        session["signed"] = session.get("signed", 0) + 1

    @staticmethod
    def _require_post() -> None:
        if get_request().get_method() != "POST":
            raise AccessError("POST only")


app = make_app(Guestbook(), os.environ.get("ZODBSESSION_STORAGE_URI", "file://var/Data.fs"))
