"""``PublishErrorMiddleware``: ``raise Redirect(...)`` in a Django view answers as the publisher would.

Django turns any exception a view raises into a 500 before a
``SessionPublisher`` around the WSGI app can see it, so the publisher would
abort a request that meant to commit. This middleware converts
``PublishError`` (and its ``Redirect``) into the ``HttpResponse`` it
stands for, with its status, headers and message: the response then goes
back out through the other middleware as any response does (the session
middleware saves the session, since the status is below 500) and the
publisher commits it, as its decision table says for a ``PublishError``.

Converting was chosen over re-raising past Django: re-raising needs
``DEBUG_PROPAGATE_EXCEPTIONS`` (which changes every other error too) and
would skip the response middleware, the session's save included.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.utils.deprecation import MiddlewareMixin

from zodbsession.core.errors import PublishError


class PublishErrorMiddleware(MiddlewareMixin):  # type: ignore[misc]  # Django is untyped
    """Answers a view's ``PublishError`` with its own status; leaves other exceptions to Django.

    Add ``"zodbsession.django.middleware.PublishErrorMiddleware"`` to
    ``MIDDLEWARE`` (anywhere: Django calls ``process_exception`` for the
    view's exceptions only). Works for sync and async views.
    """

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        """The response *exception* stands for, or None to let Django handle it."""
        if isinstance(exception, PublishError):
            return response_for(exception)
        return None


def response_for(error: PublishError) -> HttpResponse:
    """An ``HttpResponse`` with *error*'s status line, headers and message as text."""
    code, _, reason = error.status.partition(" ")
    response = HttpResponse(error.message, status=int(code), reason=reason or None,
                            content_type="text/plain; charset=utf-8")
    for name, value in error.headers:
        response[name] = value
    return response
