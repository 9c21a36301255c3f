"""Serving: finding the application, waitress and uvicorn, workers, the ZEO server, the CLI.

The top layer: it reads the settings (``zodbsession.config``) and may use every
layer below but the adapters and the test kit.
"""
