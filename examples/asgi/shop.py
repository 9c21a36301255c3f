"""A small shop in FastAPI on zodbsession: log in, fill a cart, check out, log out.

The cart lives in the session; the orders are the application's own data, in
the same ZODB database, reached from async endpoints with
``run_in_connection``. Checking out writes an order and empties the cart in
one transaction, so when the supplier call fails afterwards (put
``unobtainium`` in the cart to see it) both changes roll back together: the
order is not recorded and the cart is still full.

Run it under zodbsession's server, which wraps the bare ``api`` in
``SessionMiddleware`` itself::

    zodbsession serve --app examples.asgi.shop:api

or under uvicorn, the factory wrapping it on ``ZODBSESSION_STORAGE_URI``
(default ``file://var/Data.fs``)::

    uvicorn --factory examples.asgi.shop:make_app
"""

from __future__ import annotations

import os
from typing import Annotated, Any

from BTrees.IOBTree import IOBTree
from fastapi import Body, Depends, FastAPI, HTTPException, Request
from persistent.list import PersistentList

from zodbsession import RequestSession, open_db
from zodbsession.asgi import SessionMiddleware, run_in_connection

#: Where the shop keeps its orders: {order number -> PersistentList of items}.
ORDERS_KEY = "examples.asgi.orders"


class SupplierError(RuntimeError):
    """The supplier cannot deliver an item; raised after the order was written."""


def session_of(request: Request) -> RequestSession:
    """The request's session, as a FastAPI dependency."""
    return request.scope["zodbsession.session"]


Session = Annotated[RequestSession, Depends(session_of)]


def orders(connection: Any) -> IOBTree:
    """The shop's orders, made on first use (runs in a worker thread: it may load)."""
    root = connection.root()
    if ORDERS_KEY not in root:
        root[ORDERS_KEY] = IOBTree()
    return root[ORDERS_KEY]


def order_count(connection: Any) -> int:
    return len(orders(connection))


def place_order(connection: Any, items: list[str]) -> int:
    """Record an order; its number. A BTree insert may load a bucket: a worker thread's job."""
    book = orders(connection)
    number = (book.maxKey() + 1) if book else 1
    book[number] = PersistentList(items)
    return number


api = FastAPI(title="zodbsession shop")


@api.get("/cart")
async def show_cart(session: Session) -> dict[str, Any]:
    placed = await run_in_connection(order_count)
    return {"user": session.user_id, "cart": session.get("cart", []), "orders": placed}


@api.post("/login")
async def login(session: Session, user: Annotated[str, Body(embed=True)]) -> dict[str, Any]:
    if not user.strip():
        raise HTTPException(400, "a user name is needed")  # a 4xx: committed, nothing changed
    session.login(user.strip())
    return {"user": session.user_id}


@api.post("/cart")
async def add_to_cart(session: Session, item: Annotated[str, Body(embed=True)]) -> dict[str, Any]:
    # A new list rather than an append in place: assigning marks the session changed.
    session["cart"] = [*session.get("cart", []), item]
    return {"cart": session["cart"]}


@api.post("/checkout")
async def checkout(session: Session) -> dict[str, Any]:
    cart = session.get("cart", [])
    if not cart:
        raise HTTPException(409, "the cart is empty")
    number = await run_in_connection(place_order, list(cart))
    session["cart"] = []
    if "unobtainium" in cart:
        # After both writes: the abort takes back the order and the emptied cart.
        raise SupplierError("the supplier has no unobtainium")
    return {"order": number}


@api.post("/logout")
async def logout(session: Session) -> dict[str, Any]:
    session.logout()
    return {"user": None}


def make_app() -> SessionMiddleware:
    """The shop inside the middleware, on the storage ``ZODBSESSION_STORAGE_URI`` names."""
    return SessionMiddleware(api, open_db(os.environ.get("ZODBSESSION_STORAGE_URI", "file://var/Data.fs")))
