"""Pyramid's ``request.session`` is an actual dict (the ``dictkit`` script), like Pyramid's own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from dictkit import check_script, run_step
from pyramidkit import Apps, apps_fixture, route


@pytest.fixture
def apps() -> Iterator[Apps]:
    yield from apps_fixture()


def test_pyramid_request_session_is_a_dict(apps):
    def setup(config) -> None:
        route(config, "/{step}", lambda request: run_step(request.session, request.matchdict["step"]))

    app = apps(setup)
    check_script(lambda step: app.get(f"/{step}").json, json_dumps_works=True)
