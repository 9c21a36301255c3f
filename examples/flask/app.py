"""A small shop in Flask on zodbsession: log in, fill a cart, check out, log out.

The cart lives in the session; the orders are the application's own data, in
the same ZODB database. Checking out writes an order and empties the cart in
one transaction, so when the supplier call fails afterwards (put
``unobtainium`` in the cart to see it) both changes roll back together: the
order is not recorded and the cart is still full.

Run it under zodbsession's server (its publisher runs each request)::

    zodbsession serve --app examples.flask.app:app

or under any WSGI server, the extension then running its own publisher on
``ZODBSESSION_STORAGE_URI`` (default ``file://var/Data.fs``)::

    waitress-serve --listen 127.0.0.1:8080 examples.flask.app:app
"""

from __future__ import annotations

import os
from typing import Any

from flask import (
    Flask,
    abort,
    flash,
    get_flashed_messages,
    jsonify,
    redirect,
    render_template_string,
    request,
    session,
    url_for,
)
from persistent.list import PersistentList

from zodbsession.flask import ZODBSession, root

PAGE = """<!doctype html>
<title>zodbsession shop</title>
{% for message in get_flashed_messages() %}<p class="flash">{{ message }}</p>{% endfor %}
{% if user %}
  <p>Logged in as <b>{{ user }}</b>.</p>
  <form method="post" action="{{ url_for('logout') }}"><button>Log out</button></form>
{% else %}
  <form method="post" action="{{ url_for('login') }}">
    <input name="user" placeholder="your name"> <button>Log in</button></form>
{% endif %}
<h2>Cart</h2>
<ul>{% for item in cart %}<li>{{ item }}</li>{% else %}<li>empty</li>{% endfor %}</ul>
<form method="post" action="{{ url_for('add_to_cart') }}">
  <input name="item" placeholder="apple, or unobtainium"> <button>Add</button></form>
<form method="post" action="{{ url_for('checkout') }}"><button>Check out</button></form>
<p>{{ orders }} order(s) placed in this shop so far.</p>
"""


class SupplierError(RuntimeError):
    """The supplier cannot deliver an item; raised after the order was written."""


def all_orders() -> list[Any]:
    """The shop's orders (the application's own ZODB data), read-only."""
    return root().get("orders", [])


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """The shop; *config* overrides the defaults (tests pass ``ZODBSESSION_URI``)."""
    app = Flask(__name__)
    # No SECRET_KEY: the session is not a signed cookie, only its random id travels.
    app.config.update(
        ZODBSESSION_URI=os.environ.get("ZODBSESSION_STORAGE_URI", "file://var/Data.fs"),
    )
    app.config.update(config or {})
    ZODBSession(app)  # opens nothing yet; `zodbsession serve` opens the same ZODBSESSION_URI

    @app.get("/")
    def index() -> str:
        return render_template_string(PAGE, user=session.user_id, cart=session.get("cart", []),
                                      orders=len(all_orders()))

    @app.get("/state")
    def state() -> Any:
        """What the page shows, as JSON (the flashes are left for the page)."""
        return jsonify(user=session.user_id, cart=session.get("cart", []),
                       orders=len(all_orders()), flashes=[m for _c, m in session.get("_flashes", [])])

    @app.post("/login")
    def login() -> Any:
        user = request.form.get("user", "").strip()
        if not user:
            flash("Tell us your name.")
            return redirect(url_for("index"))
        session.login(user)  # binds the session to the user and gives it a new id
        flash(f"Welcome, {user}.")
        return redirect(url_for("index"))

    @app.post("/cart")
    def add_to_cart() -> Any:
        item = request.form.get("item", "").strip()
        if item:
            session["cart"] = [*session.get("cart", []), item]
            flash(f"{item} is in your cart.")
        return redirect(url_for("index"))

    @app.post("/checkout")
    def checkout() -> Any:
        if session.user_id is None:
            abort(401)  # a 4xx commits: nothing was changed anyway
        cart = session.get("cart", [])
        if not cart:
            flash("Your cart is empty.")
            return redirect(url_for("index"))
        r = root()
        if "orders" not in r:
            r["orders"] = PersistentList()
        r["orders"].append({"user": session.user_id, "items": list(cart)})
        session["cart"] = []
        if "unobtainium" in cart:
            # Both the order and the emptied cart are rolled back with this.
            raise SupplierError("the supplier has no unobtainium")
        flash(f"Order {len(r['orders'])} placed.")
        return redirect(url_for("index"))

    @app.post("/logout")
    def logout() -> Any:
        session.logout()  # ends the session on the server and deletes the cookie
        return redirect(url_for("index"))

    @app.get("/messages")
    def messages() -> Any:
        return jsonify(get_flashed_messages())

    return app


app = create_app()
