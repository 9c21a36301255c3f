"""zodbsession's benchmarks (issue #6): run ``python -m bench --quick`` or ``--full``.

One module per concern: ``workload`` (the app, clients, timing), ``populate``
(S sessions fast), ``contenders``, ``compare`` (interleaved rounds),
``scale``, ``expiry``, ``http_load``, ``profiling``, ``report`` and ``run``.
"""
