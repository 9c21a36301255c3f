"""The bundled demo: a WSGI application showing transactional sessions in a browser.

The application is ``zodbsession.demo.app:app``; ``python -m zodbsession.demo.app``
serves it on an in-memory database for a quick look. It is deliberately not
re-exported here, so that ``zodbsession.demo.app`` stays the module.
"""
