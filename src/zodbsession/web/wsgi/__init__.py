"""The WSGI front door: ``SessionPublisher``, its buffered response and the body kept for retries."""
