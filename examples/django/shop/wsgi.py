"""The shop's WSGI application: ``zodbsession serve --app shop.wsgi:application`` wraps it.

Under another WSGI server, wrap it yourself so each request is one transaction::

    from zodbsession import SessionPublisher, open_db
    application = SessionPublisher(get_wsgi_application(), open_db("file://var/Data.fs"))
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")

application = get_wsgi_application()
