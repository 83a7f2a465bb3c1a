"""Prometheus metrics of the predictor, on their own registry and HTTP port.

Each :class:`Telemetry` owns a ``CollectorRegistry`` (several servers may live in one test
process). Label children are cached so one observation is a dict lookup and a lock.

=========================================  ==============================================
``streamscore_predictor_requests_total``   RPCs by ``method`` and status ``code`` (ScoreStream
                                           messages as method ``ScoreStream.message``)
``streamscore_predictor_latency_seconds``  server time per RPC (per message for streams)
``streamscore_predictor_batch_rows``       rows per prediction (micro-batch size)
``streamscore_predictor_in_flight``        RPCs being served now
``streamscore_predictor_model_info``       1 for the served ``version`` (and ``backend``)
``streamscore_predictor_reloads_total``    model loads by ``result`` (loaded / refused)
=========================================  ==============================================
"""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

LATENCY_BUCKETS = (50e-6, 100e-6, 200e-6, 300e-6, 500e-6, 750e-6, 1e-3, 1.5e-3, 2.5e-3, 5e-3, 10e-3,
                   25e-3, 50e-3, 100e-3, 250e-3, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - scrapes are not worth a log line each
        pass


class Telemetry:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("streamscore_predictor_requests", "RPCs by method and status code",
                                ["method", "code"], registry=r)
        self.latency = Histogram("streamscore_predictor_latency_seconds",
                                 "Server time per RPC (per message for streaming RPCs)", ["method"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.batch_rows = Histogram("streamscore_predictor_batch_rows", "Rows per prediction (micro-batch size)",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.in_flight = Gauge("streamscore_predictor_in_flight", "RPCs being served now", registry=r)
        self.model_info = Gauge("streamscore_predictor_model_info", "1 for the model version being served",
                                ["version", "backend"], registry=r)
        self.reloads = Counter("streamscore_predictor_reloads", "Model loads by result", ["result"], registry=r)
        self._requests: dict[tuple[str, str], object] = {}
        self._latency: dict[str, object] = {}
        self._served: tuple[str, str] | None = None
        self._http = None

    def observe_rpc(self, method: str, code: str, seconds: float | None) -> None:
        child = self._requests.get((method, code))
        if child is None:
            child = self._requests[(method, code)] = self.requests.labels(method, code)
        child.inc()
        if seconds is not None and code == "OK":
            self.observe_latency(method, seconds)

    def observe_latency(self, method: str, seconds: float) -> None:
        child = self._latency.get(method)
        if child is None:
            child = self._latency[method] = self.latency.labels(method)
        child.observe(seconds)

    def observe_batch(self, rows: int) -> None:
        self.batch_rows.observe(rows)

    def serving(self, version: str, backend: str) -> None:
        if self._served is not None:
            self.model_info.remove(*self._served)
        self._served = (version, backend)
        self.model_info.labels(version, backend).set(1)

    def reload(self, result: str) -> None:
        self.reloads.labels(result).inc()

    # -- HTTP exposition --------------------------------------------------------------

    def serve_http(self, port: int, host: str = "0.0.0.0") -> int:
        """Expose ``/metrics`` on ``host:port`` (0 picks a free port); returns the bound port."""
        server = make_server(host, port, make_wsgi_app(self.registry), ThreadingWSGIServer,
                             handler_class=_QuietHandler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
                         name="metrics-http").start()
        self._http = server
        return server.server_port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
