"""The online feature store: per-key feature state written by the stream, read by the predictor (issue 12).

* :mod:`streaming.store.encoding` — the compact, versioned bytes of one key's state (pure code);
* :mod:`streaming.store.redis_store` — the Redis writer (ordered by a Lua compare-and-set) and reader;
* :mod:`streaming.store.redis_server` — a throw-away ``redis-server`` on a free port (tests, ``up``).
"""
