"""The shop's views: the cart is in the Django session, the orders in the app's own ZODB data.

Checking out appends an order to the shop's orders and empties the cart in
one transaction (the request's, under ``zodbsession serve``). When the
supplier then fails (put ``unobtainium`` in the cart to see it) the view
raises, Django answers 500, and the publisher rolls back both: the order is
not recorded and the cart is still full.
"""

from __future__ import annotations

from django.contrib import auth, messages
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import get_token
from django.utils.html import format_html, format_html_join
from django.views.decorators.http import require_GET, require_POST
from persistent.list import PersistentList

import zodbsession
from zodbsession import Redirect

PAGE = """<!doctype html>
<title>zodbsession shop (Django)</title>
{messages}
{login}
<h2>Cart</h2>
<ul>{cart}</ul>
<form method="post" action="/cart">{csrf}
  <input name="item" placeholder="apple, or unobtainium"> <button>Add</button></form>
<form method="post" action="/checkout">{csrf}<button>Check out</button></form>
<p>{orders} order(s) placed in this shop so far.</p>
"""


class SupplierError(RuntimeError):
    """The supplier cannot deliver an item; raised after the order was written."""


def orders() -> list:
    """The shop's orders: the application's own data, in the request's ZODB connection."""
    return zodbsession.current_connection.root().get("shop.orders", [])


@require_GET
def index(request: HttpRequest) -> HttpResponse:
    csrf = format_html('<input type="hidden" name="csrfmiddlewaretoken" value="{}">', get_token(request))
    if request.user.is_authenticated:
        login = format_html('<p>Logged in as <b>{}</b>.</p><form method="post" action="/logout">{}'
                            "<button>Log out</button></form>", request.user.get_username(), csrf)
    else:
        login = format_html('<form method="post" action="/login">{}<input name="username"> '
                            '<input name="password" type="password"> <button>Log in</button></form>', csrf)
    cart = request.session.get("cart", [])
    notes = ((message,) for message in messages.get_messages(request))
    page = PAGE.format(
        messages=format_html_join("", '<p class="message">{}</p>', notes),
        login=login,
        cart=format_html_join("", "<li>{}</li>", ((item,) for item in cart)) or "<li>empty</li>",
        csrf=csrf,
        orders=len(orders()),
    )
    return HttpResponse(page)


@require_GET
def state(request: HttpRequest) -> JsonResponse:
    """What the page shows, as JSON, the messages included (reading them uses them up)."""
    user = request.user.get_username() if request.user.is_authenticated else None
    return JsonResponse({"user": user, "cart": request.session.get("cart", []), "orders": len(orders()),
                         "messages": [str(m) for m in messages.get_messages(request)]})


@require_POST
def login(request: HttpRequest) -> HttpResponse:
    user = auth.authenticate(request, username=request.POST.get("username", ""),
                             password=request.POST.get("password", ""))
    if user is None:
        messages.error(request, "Wrong name or password.")
        raise Redirect("/")  # a PublishError: the message is committed with the redirect
    auth.login(request, user)  # cycle_key(): a new session key, the cart kept
    messages.success(request, f"Welcome, {user.get_username()}.")
    raise Redirect("/")


@require_POST
def add_to_cart(request: HttpRequest) -> HttpResponse:
    item = request.POST.get("item", "").strip()
    if item:
        request.session["cart"] = [*request.session.get("cart", []), item]
        messages.info(request, f"{item} is in your cart.")
    raise Redirect("/")


@require_POST
def checkout(request: HttpRequest) -> HttpResponse:
    if not request.user.is_authenticated:
        return HttpResponse("log in first", status=401)
    cart = request.session.get("cart", [])
    if not cart:
        messages.warning(request, "Your cart is empty.")
        raise Redirect("/")
    root = zodbsession.current_connection.root()
    if "shop.orders" not in root:
        root["shop.orders"] = PersistentList()
    root["shop.orders"].append({"user": request.user.get_username(), "items": list(cart)})
    request.session["cart"] = []
    request.session.save()  # saved now, in the request's transaction: the rollback must undo it
    if "unobtainium" in cart:
        raise SupplierError("the supplier has no unobtainium")
    messages.success(request, f"Order {len(root['shop.orders'])} placed.")
    raise Redirect("/")


@require_POST
def logout(request: HttpRequest) -> HttpResponse:
    auth.logout(request)  # flush(): the session is deleted and its cookie too
    raise Redirect("/")
