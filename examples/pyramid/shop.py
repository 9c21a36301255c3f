"""A small Pyramid shop whose session, ZODB stock and SQL orders commit as one.

Each request runs in one pyramid_tm transaction: ``request.session``
(zodbsession), the stock in the app's own ZODB root (pyramid_zodbconn's
connection, the one the session uses too) and an order row in SQLite
(zope.sqlalchemy) commit together, or roll back together when the view
raises; a conflict is retried by pyramid_retry. Run it with
``python -m pyramid.scripts.pserve development.ini`` from this directory.
"""

from __future__ import annotations

from typing import Any

import pyramid_zodbconn
import zope.sqlalchemy
from persistent.mapping import PersistentMapping
from pyramid.config import Configurator
from pyramid.httpexceptions import HTTPSeeOther
from pyramid.request import Request
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

#: What the shop starts with, in the app's ZODB root.
INITIAL_STOCK = {"apple": 10, "pear": 10}


class Base(DeclarativeBase):
    pass


class Order(Base):
    """One item put in a cart, as the SQL side records it."""

    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    user: Mapped[str]
    item: Mapped[str]


def main(global_config: dict[str, Any], **settings: Any) -> Any:
    """The WSGI application ``pserve`` serves (``use = call:shop:main``)."""
    with Configurator(settings=settings) as config:
        config.include(includeme)
    return config.make_wsgi_app()


def includeme(config: Configurator) -> None:
    """The shop's configuration, separate from ``main`` so tests can add to it."""
    settings = config.get_settings()
    config.include("pyramid_zodbconn")
    config.include("zodbsession.pyramid")  # includes pyramid_tm and pyramid_retry too
    engine = create_engine(settings["shop.sql_url"])
    Base.metadata.create_all(engine)
    config.registry.sql_sessions = sessionmaker(bind=engine)
    config.add_request_method(sql, reify=True)
    config.set_default_csrf_options(require_csrf=True)
    for name, path in [("home", "/"), ("login", "/login"), ("add", "/cart/add"),
                       ("fail", "/cart/fail"), ("logout", "/logout")]:
        config.add_route(name, path)
    config.add_view(home, route_name="home", renderer="json")
    config.add_view(login, route_name="login", request_method="POST")
    config.add_view(add_to_cart, route_name="add", request_method="POST")
    config.add_view(add_then_fail, route_name="fail", request_method="POST")
    config.add_view(logout, route_name="logout", request_method="POST")
    config.add_exception_view(failed, renderer="json")


def sql(request: Request) -> Session:
    """``request.sql``: a SQLAlchemy session joined to the request's transaction."""
    session = request.registry.sql_sessions()
    zope.sqlalchemy.register(session, transaction_manager=request.tm)
    return session


def stock(request: Request) -> PersistentMapping:
    """The app's own ZODB data: items left, in pyramid_zodbconn's connection."""
    root = pyramid_zodbconn.get_connection(request).root()
    if "stock" not in root:
        root["stock"] = PersistentMapping(INITIAL_STOCK)
    return root["stock"]


def home(request: Request) -> dict[str, Any]:
    """Who is logged in, the cart, the flash messages, the stock, the orders, a CSRF token."""
    session = request.session
    return {
        "user": session.user_id,
        "cart": session.get("cart", []),
        "flash": session.pop_flash(),
        "stock": dict(stock(request)),
        "orders": request.sql.scalar(select(func.count()).select_from(Order)),
        "csrf_token": session.get_csrf_token(),
    }


def login(request: Request) -> HTTPSeeOther:
    """Log the user in: a new session id (``login`` rotates it), and a welcome."""
    user = request.POST["user"]
    request.session.login(user)
    request.session.flash(f"welcome, {user}")
    return HTTPSeeOther(request.route_url("home"))


def add_to_cart(request: Request) -> HTTPSeeOther:
    """Three stores, one transaction: the session's cart, the ZODB stock, a SQL order."""
    _add(request, request.POST["item"])
    return HTTPSeeOther(request.route_url("home"))


def add_then_fail(request: Request) -> None:
    """The same three changes, then an error: all three roll back."""
    _add(request, request.POST["item"])
    raise RuntimeError("the payment service is down")


def _add(request: Request, item: str) -> None:
    session = request.session
    session["cart"] = [*session.get("cart", []), item]
    stock(request)[item] -= 1
    request.sql.add(Order(user=session.user_id or "anonymous", item=item))


def logout(request: Request) -> HTTPSeeOther:
    """End the session on the server; the client is told to forget its cookie."""
    request.session.invalidate()
    return HTTPSeeOther(request.route_url("home"))


def failed(exc: Exception, request: Request) -> dict[str, str]:
    """Any error as JSON (an HTTP error keeps its code); pyramid_tm sees it and aborts."""
    request.response.status_int = getattr(exc, "code", 500)
    return {"error": type(exc).__name__}
