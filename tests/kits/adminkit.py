"""The admin listener seen from a test: token-bearing requests, and `/metrics` parsed as Prometheus does."""

from __future__ import annotations

import http.client
from email.message import Message
from urllib.parse import urlencode

from prometheus_client.parser import text_string_to_metric_families
from serverproc import ServerProcess

TOKEN = "admin-token-for-the-integration-tests"


TIMEOUT = 10


Figures = dict[tuple[str, frozenset[tuple[str, str]]], float]


def admin_request(server: ServerProcess, method: str, path: str, *, token: str | None = TOKEN,
                  form: dict[str, str] | None = None) -> tuple[int, Message, bytes]:
    """One request to the admin listener, redirects not followed; Bearer *token* unless None."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    body = None
    if form is not None:
        body = urlencode(form).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    connection = http.client.HTTPConnection("127.0.0.1", server.admin_port, timeout=TIMEOUT)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.headers, response.read()  # headers: any case
    finally:
        connection.close()


def scrape(server: ServerProcess) -> Figures:
    """Every sample of ``/metrics``, keyed by (sample name, labels)."""
    status, headers, body = admin_request(server, "GET", "/metrics")
    assert status == 200, body
    assert headers["Content-Type"].startswith("text/plain; version=")
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples}


def value(found: Figures, name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


def requests_total(found: Figures) -> float:
    return sum(v for (name, _labels), v in found.items() if name == "zodbsession_requests_total")

