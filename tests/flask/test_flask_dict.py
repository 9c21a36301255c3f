"""``flask.session`` behaves as a dict (the ``dictkit`` script), as Flask's own session does.

Like Flask's own session, ``flask.session`` is a proxy that ``json.dumps``
refuses (``jsonify(session.copy())`` is the way in both).
"""

from __future__ import annotations

from dictkit import check_script, run_step
from flask import Flask, jsonify, session

from zodbsession.flask import ZODBSession


def make_app() -> Flask:
    app = Flask(__name__)
    app.config.update(ZODBSESSION_URI="memory://", ZODBSESSION_JANITOR_INTERVAL=0)
    ZODBSession(app)

    @app.get("/<step>")
    def step(step: str):
        return jsonify(run_step(session, step))

    return app


def test_flask_session_behaves_as_a_dict():
    app = make_app()
    with app.test_client() as client:
        check_script(lambda step: client.get(f"/{step}").get_json(), json_dumps_works=False)
    app.extensions["zodbsession"].close()
