"""The Quixote adapter under waitress with 8 threads: every request sees its own session.

Quixote's own WSGI wrapper refuses a threaded server; here 12 clients post
at once, 8 on sessions of their own and 4 sharing one, and not one increment
is lost, mixed up or answered with an error.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from quixotekit import COOKIE, TIMEOUT, get, post
from serverproc import Client
from ZODB import DB

ROUNDS = 25


def test_eight_own_sessions_and_four_on_one_shared_session_count_exactly(served):
    own = [served.client() for _ in range(8)]
    first = served.client()
    assert post(first, "/count") == (200, "1")  # the shared session, made before the others join it
    shared = [first, *(first.sharing_cookies(served.url) for _ in range(3))]

    def run(client: Client) -> list[tuple[int, str]]:
        return [post(client, "/count") for _ in range(ROUNDS)]

    with ThreadPoolExecutor(max_workers=12) as pool:
        futures = [pool.submit(run, client) for client in own + shared]
        answers = [future.result(timeout=10 * TIMEOUT) for future in futures]

    for client, replies in zip(own, answers[:8], strict=True):
        assert replies == [(200, str(n)) for n in range(1, ROUNDS + 1)]
        assert get(client, "/") == (200, f"n={ROUNDS} notes=0")
    shared_replies = [reply for replies in answers[8:] for reply in replies]
    assert all(status == 200 for status, _ in shared_replies), shared_replies
    assert sorted(int(text) for _, text in shared_replies) == list(range(2, 4 * ROUNDS + 2))
    assert get(first, "/") == (200, f"n={4 * ROUNDS + 1} notes=0")
    assert len({client.cookie(COOKIE) for client in [*own, first]}) == 9
    assert site_hits(served.db) == 8 * ROUNDS + 4 * ROUNDS + 1


def site_hits(db: DB) -> int:
    """The site's own counter, committed with each session's increment."""
    with db.transaction() as conn:
        return conn.root()["hits"]()
