"""The front doors: HTTP on the core.

The session cookie, what a response built from a session carries, and the two
doors that run a request in a transaction: ``wsgi`` (``SessionPublisher``) and
``asgi`` (``SessionMiddleware``). They know nothing of the server that runs them.
"""
