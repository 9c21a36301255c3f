"""The core: sessions and the request's transaction, with no HTTP, no server and no operator.

The persistent ``Session`` and its container, the manager's policy, the scoped
registry, the request-transaction core with its outcome table, retry policy and
commit protocol, the per-session locks, and opening a database from a URI.
Everything above it (``web``, ``ops``, ``serve``, the adapters) builds on these
modules; they import nothing above them (``tests/project/test_layers.py``).
"""
