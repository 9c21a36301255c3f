"""How a Quixote request ends: Quixote's hooks decide, zodbsession's publisher commits or aborts.

``commit_changes`` (success, any Quixote ``PublishError``) commits the session
and the site's own data together; ``abort_changes`` (any other exception)
rolls both back; a conflict is retried with the request replayed.
"""

from __future__ import annotations

from quixotekit import COOKIE, get, post, raw

from zodbsession import SessionManager


def test_a_view_that_raises_rolls_back_the_session_and_the_sites_data(served):
    client = served.client()
    assert post(client, "/count") == (200, "1")
    status, page = post(client, "/fail")
    assert status == 500
    assert "Internal Server Error" in page and "the view failed" not in page  # Quixote's page, no traceback
    assert get(client, "/") == (200, "n=1 notes=0")


def test_access_error_answers_403_and_commits_the_session_and_the_data(served):
    client = served.client()
    status, page = post(client, "/deny")
    assert status == 403
    assert "Access denied" in page and "members only" in page
    status, page = post(client, "/deny")
    assert status == 403
    with served.db.transaction() as conn:
        assert list(conn.root()["notes"]) == ["denied", "denied"]
    assert get(client, "/") == (200, "n=0 notes=2")


def test_a_traversal_error_commits_like_any_publish_error(served):
    client = served.client()
    assert post(client, "/count") == (200, "1")
    assert get(client, "/nowhere")[0] == 404
    assert get(client, "/") == (200, "n=1 notes=0")


def test_zodbsessions_redirect_raised_in_a_view_commits_and_answers_303(served):
    client = served.client()
    assert post(client, "/count") == (200, "1")
    status, headers, _ = raw(served.url, "POST", "/leave", client.cookie(COOKIE))
    assert (status, dict(headers)["Location"]) == (303, "/")
    with served.db.transaction() as conn:
        assert SessionManager().get(conn, client.cookie(COOKIE))["left"] is True


def test_a_forced_conflict_is_retried_with_the_request_replayed(served):
    client = served.client()
    assert post(client, "/count") == (200, "1")
    # Attempt 1 reads n=1, another transaction commits n=101, attempt 1's write of n=2 conflicts;
    # attempt 2 reads 101 and writes 102.
    assert post(client, "/conflict") == (200, "102")
    assert served.site.attempts == [1, 2]
    assert get(client, "/") == (200, "n=102 notes=0")


def test_a_page_that_only_reads_writes_nothing(served):
    client = served.client()
    assert post(client, "/count") == (200, "1")
    before = served.db.lastTransaction()
    for _ in range(3):
        assert get(client, "/") == (200, "n=1 notes=0")
    assert served.db.lastTransaction() == before
