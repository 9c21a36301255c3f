"""What the README says of a nested value changed in place, front door by front door, holds.

``session["cart"].append(x)`` without ``save_changes()`` is saved by the core
(``settle()``) under the publisher, the ASGI middleware, Flask, Pyramid and
Quixote, and never under Django, whose session middleware saves only a
session marked ``modified`` (its rule for every backend). The README used to
state the first generally.
"""

from __future__ import annotations

import re
from pathlib import Path

from flask import Flask, session
from ZODB import DB
from ZODB.MappingStorage import MappingStorage

from zodbsession.flask import ZODBSession

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_the_readme_says_it_per_front_door():
    paragraph = README[README.index("A nested value changed in place"):README.index("Per-transaction")]
    text = re.sub(r"\s+", " ", paragraph)
    assert ("the publisher, the ASGI middleware, `zodbsession.flask`, `zodbsession.pyramid` and "
            "`zodbsession.quixote`: saved") in text
    assert "`zodbsession.django`: **not saved**" in text
    assert "`request.session.modified = True`" in text


def test_flask_saves_a_cart_appended_in_place_unmarked():
    db = DB(MappingStorage())
    app = Flask(__name__)
    ZODBSession(app, db)

    @app.get("/add/<item>")
    def add(item: str) -> str:
        session.setdefault("cart", []).append(item)  # no session.modified
        return ",".join(session["cart"])

    client = app.test_client()
    client.get("/add/apple")
    assert client.get("/add/pear").text == "apple,pear"
    db.close()


def test_django_does_not_save_a_cart_appended_in_place_unmarked():
    import djangokit  # configures Django for this process
    from django.contrib.sessions.middleware import SessionMiddleware
    from django.http import HttpResponse
    from django.test import RequestFactory

    from zodbsession.django.database import use_database

    db = DB(MappingStorage())
    use_database(db)

    def view(request):
        if "cart" not in request.session:
            request.session["cart"] = []
        else:
            request.session["cart"].append("pear")  # in place, not marked
        return HttpResponse(",".join(request.session["cart"]))

    middleware = SessionMiddleware(view)
    first = middleware(RequestFactory().get("/"))
    key = first.cookies["sessionid"].value
    again = RequestFactory().get("/")
    again.COOKIES["sessionid"] = key
    assert middleware(again).content == b"pear"  # changed in this request only
    after = RequestFactory().get("/")
    after.COOKIES["sessionid"] = key
    assert middleware(after).content == b"pear", "the first append was never saved"
    assert djangokit.records(db)[key][1] == {"cart": []}
    db.close()
