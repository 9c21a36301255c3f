"""A Quixote 3.8 guestbook on zodbsession: ``site.py``."""
