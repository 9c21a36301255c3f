"""A small Django shop on zodbsession: contrib.auth login, a cart, messages, a checkout."""
