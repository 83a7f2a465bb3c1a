"""Prometheus metrics of the predictor, on their own registry and HTTP port.

Each :class:`Telemetry` owns a ``CollectorRegistry`` (several servers may live in one test
process).

=========================================  ==============================================
``streamscore_predictor_requests_total``   RPCs by ``method`` and status ``code`` (ScoreStream
                                           messages as method ``ScoreStream.message``)
``streamscore_predictor_latency_seconds``  server time per RPC (per message for streams)
``streamscore_predictor_batch_rows``       rows per prediction (micro-batch size)
``streamscore_predictor_in_flight``        RPCs being served now
``streamscore_predictor_model_info``       1 for the served ``version`` (and ``backend``)
``streamscore_predictor_reloads_total``    model loads by ``result`` (loaded / refused)
``streamscore_predictor_online_model_info``  1 for the served online (River) ``version``
                                           (and ``form``: numpy / river); absent without one
``streamscore_predictor_online_reloads_total``  online snapshot loads by ``result``
``streamscore_predictor_shadow_model_info``  1 for the ``version`` served in shadow (the
                                           registry's ``challenger``); absent without one
``streamscore_predictor_shadow_reloads_total``  shadow model loads by ``result``
``streamscore_predictor_shadow_score``     scores of the shadowed events, by ``role``
                                           (production / shadow) and ``version``
``streamscore_predictor_shadow_events_total``  events scored in shadow, by shadow ``version``
``streamscore_predictor_shadow_alerts_total``  of those, the shadow's scores above the alert
                                           threshold (``serve --shadow-alert-threshold``)
``streamscore_predictor_shadow_disagreements_total``  of those, the events where the shadow's
                                           alert decision differs from production's
``streamscore_predictor_shadow_dropped_total``  events not shadowed (its queue was full)
``streamscore_predictor_shadow_failures_total``  shadow predictions that raised
=========================================  ==============================================

The per-request series (requests, latency, batch rows) are observed on the hot path, once
or twice per stream message: there they are plain counters (an int added to, a bucket found
by ``bisect``; no lock, no ``prometheus_client`` call) kept by the event-loop thread that
serves the RPCs, and turned into metric families only when ``/metrics`` is scraped. A scrape
from the HTTP thread may see an observation half-recorded (its bucket counted, its sum not
yet): a histogram's ``_count`` is always the sum of its buckets.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.utils import floatToGoString

LATENCY_BUCKETS = (50e-6, 100e-6, 200e-6, 300e-6, 500e-6, 750e-6, 1e-3, 1.5e-3, 2.5e-3, 5e-3, 10e-3,
                   25e-3, 50e-3, 100e-3, 250e-3, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - scrapes are not worth a log line each
        pass


class FastHistogram:
    """A histogram without locks, for observations made by one thread (the event loop)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Iterable[float]):
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # first bound >= value: Prometheus "le"
        self.sum += value

    def observe_many(self, values) -> None:
        """Observe every value of a float array at once (numpy: the shadow's batches)."""
        import numpy as np

        values = np.asarray(values, dtype=np.float64)
        counts = np.bincount(np.searchsorted(self.bounds, values, side="left"), minlength=len(self.counts))
        for i in np.flatnonzero(counts).tolist():
            self.counts[i] += int(counts[i])
        self.sum += float(values.sum())

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative ``(le, count)`` pairs, as exposed."""
        counts, out, total = list(self.counts), [], 0
        for bound, count in zip((*self.bounds, float("inf")), counts):
            total += count
            out.append((floatToGoString(bound), float(total)))
        return out


class _HotPathCollector:
    """Exposes the lock-free series of a :class:`Telemetry` when the registry is scraped."""

    def __init__(self, telemetry: Telemetry):
        self._t = telemetry

    def describe(self):
        return []  # collected lazily; no duplicate-name check needed beyond ours

    def collect(self):
        t = self._t
        requests = CounterMetricFamily("streamscore_predictor_requests", "RPCs by method and status code",
                                       labels=["method", "code"])
        for (method, code), count in list(t.request_counts.items()):
            requests.add_metric([method, code], float(count))
        yield requests
        latency = HistogramMetricFamily("streamscore_predictor_latency_seconds",
                                        "Server time per RPC (per message for streaming RPCs)", labels=["method"])
        for method, histogram in list(t.latencies.items()):
            latency.add_metric([method], histogram.buckets(), histogram.sum)
        yield latency
        batch = HistogramMetricFamily("streamscore_predictor_batch_rows", "Rows per prediction (micro-batch size)")
        batch.add_metric([], t.batch_rows.buckets(), t.batch_rows.sum)
        yield batch
        if t.shadow_stats is not None:
            yield from _shadow_families(t.shadow_stats)


def _shadow_families(stats):
    """The :class:`~models.predictor.shadow.ShadowStats` counters as metric families."""
    scores = HistogramMetricFamily("streamscore_predictor_shadow_score",
                                   "Scores of the events scored in shadow, by role (production / shadow)",
                                   labels=["role", "version"])
    for (role, version), histogram in list(stats.scores.items()):
        scores.add_metric([role, version], histogram.buckets(), histogram.sum)
    yield scores
    for name, doc, counts in (("events", "Events scored in shadow", stats.events),
                              ("alerts", "Shadow scores above the alert threshold", stats.alerts),
                              ("disagreements", "Shadowed events whose alert decision differs from production's",
                               stats.disagreements)):
        family = CounterMetricFamily(f"streamscore_predictor_shadow_{name}", doc, labels=["version"])
        for version, count in list(counts.items()):
            family.add_metric([version], float(count))
        yield family
    yield CounterMetricFamily("streamscore_predictor_shadow_dropped", "Events not shadowed: the shadow queue was full",
                              value=float(stats.dropped))
    yield CounterMetricFamily("streamscore_predictor_shadow_failures", "Shadow predictions that raised",
                              value=float(stats.failures))


class Telemetry:
    """The predictor's metrics. ``observe_*`` are meant for the event-loop thread (no locks)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        #: (method, code) -> requests answered with that code
        self.request_counts: dict[tuple[str, str], int] = {}
        #: method -> server-time histogram of its successful requests
        self.latencies: dict[str, FastHistogram] = {}
        self.batch_rows = FastHistogram(BATCH_BUCKETS)
        r.register(_HotPathCollector(self))
        self.in_flight = Gauge("streamscore_predictor_in_flight", "RPCs being served now", registry=r)
        self.model_info = Gauge("streamscore_predictor_model_info", "1 for the model version being served",
                                ["version", "backend"], registry=r)
        self.reloads = Counter("streamscore_predictor_reloads", "Model loads by result", ["result"], registry=r)
        self.online_model_info = Gauge("streamscore_predictor_online_model_info",
                                       "1 for the online (River) model version being served", ["version", "form"],
                                       registry=r)
        self.online_reloads = Counter("streamscore_predictor_online_reloads", "Online model snapshot loads by result",
                                      ["result"], registry=r)
        self.online_store_unknown = Counter(
            "streamscore_predictor_online_store_unknown",
            "Raw transactions whose card or terminal had no state in the online store (scored as new)",
            ["entity"], registry=r)
        self.shadow_model_info = Gauge("streamscore_predictor_shadow_model_info",
                                       "1 for the model version scored in shadow (the registry's challenger)",
                                       ["version"], registry=r)
        self.shadow_reloads = Counter("streamscore_predictor_shadow_reloads", "Shadow model loads by result",
                                      ["result"], registry=r)
        #: the shadow scorer's counters (models.predictor.shadow.ShadowStats), when one is set up
        self.shadow_stats = None
        self._served_shadow: str | None = None
        self._served: tuple[str, str] | None = None
        self._served_online: tuple[str, str] | None = None
        self._http = None

    def observe_rpc(self, method: str, code: str, seconds: float | None) -> None:
        key = (method, code)
        counts = self.request_counts
        counts[key] = counts.get(key, 0) + 1
        if seconds is not None and code == "OK":
            self.observe_latency(method, seconds)

    def observe_latency(self, method: str, seconds: float) -> None:
        histogram = self.latencies.get(method)
        if histogram is None:
            histogram = self.latencies[method] = FastHistogram(LATENCY_BUCKETS)
        histogram.observe(seconds)

    def latency_histogram(self, method: str) -> FastHistogram:
        """The histogram of ``method`` (callers on the hot path keep it and ``observe`` directly)."""
        histogram = self.latencies.get(method)
        if histogram is None:
            histogram = self.latencies[method] = FastHistogram(LATENCY_BUCKETS)
        return histogram

    def observe_batch(self, rows: int) -> None:
        self.batch_rows.observe(rows)

    def track_in_flight(self, read: Callable[[], float]) -> None:
        """Report ``read()`` as the RPCs in flight at every scrape (no update per RPC)."""
        self.in_flight.set_function(read)

    def serving(self, version: str, backend: str) -> None:
        if self._served is not None:
            self.model_info.remove(*self._served)
        self._served = (version, backend)
        self.model_info.labels(version, backend).set(1)

    def serving_online(self, version: str, form: str) -> None:
        if self._served_online is not None:
            self.online_model_info.remove(*self._served_online)
        self._served_online = (version, form)
        self.online_model_info.labels(version, form).set(1)

    def serving_shadow(self, version: str | None) -> None:
        """The version scored in shadow now (None: none)."""
        if self._served_shadow is not None:
            self.shadow_model_info.remove(self._served_shadow)
        self._served_shadow = version
        if version is not None:
            self.shadow_model_info.labels(version).set(1)

    def reload(self, result: str, alias: str = "production") -> None:
        """Count a model load (``result``: loaded / refused) of the ``production``, ``online`` or
        ``challenger`` alias."""
        counter = {"production": self.reloads, "challenger": self.shadow_reloads}.get(alias, self.online_reloads)
        counter.labels(result).inc()

    # -- HTTP exposition --------------------------------------------------------------

    def serve_http(self, port: int, host: str = "0.0.0.0") -> int:
        """Expose ``/metrics`` on ``host:port`` (0 picks a free port); returns the bound port."""
        server = make_server(host, port, make_wsgi_app(self.registry), ThreadingWSGIServer,
                             handler_class=_QuietHandler)
        # The poll interval only bounds how long close() waits; a short one would wake this thread
        # (and take the GIL from the event loop) many times a second for nothing.
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.25}, daemon=True,
                         name="metrics-http").start()
        self._http = server
        return server.server_port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
