"""Operations: work on a session database beside the requests.

Expiry (the janitor and the lease that elects it), maintenance (inspect,
revoke, pack), verification and the operator's metrics. They use the core only.
"""
