"""Model monitoring: the training reference, population stability (PSI) and live quality.

* :class:`Reference` — per feature and for the score, quantile bin edges computed on the
  training rows at ``train`` time and the share of training rows in each bin. It is stored
  with the model version in the registry as :data:`REFERENCE_FILE` (checksummed like every
  file of a version) and read back with :func:`load_reference`.
* :func:`psi` / :meth:`Reference.stability` — the population stability index of a live window
  against those bins: ``PSI = sum_b (a_b - e_b) * ln(a_b / e_b)`` over the bins ``b``, with
  ``e_b`` the training share and ``a_b`` the live share, both floored at :data:`PSI_FLOOR` so an
  empty bin does not give an infinite index. Conventional reading: below 0.1 stable, 0.1–0.25 a
  moderate shift, above 0.25 a significant one (the defaults of :class:`Thresholds`).
* :class:`LiveQuality` — average precision and card precision@k over a sliding window of
  labelled, scored transactions (the handbook metrics of :mod:`models.evaluation`).
* :func:`monitoring_event` — the ``monitoring`` event dict (``kind: "stability"``), and
  :class:`MonitoringGauges` — the same figures as Prometheus gauges.

Pure numpy/pandas (prometheus_client only for the gauges); the streaming job and the
predictor are the transports that feed it (``stream --live-monitoring``: :mod:`streaming.job.monitor`;
``monitor --follow``: :mod:`models.cli_monitor`; see docs/continuous-training.md).

>>> round(psi([0.5, 0.5], [0.25, 0.75]), 4)
0.2747
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from models.evaluation import TOP_K, average_precision, card_precision_at_k

REFERENCE_FILE = "reference.json"
SCORE = "score"  # the name the model's score goes under in a reference
DEFAULT_BINS = 10
PSI_FLOOR = 1e-4


def psi(expected: Sequence[float], actual: Sequence[float], floor: float = PSI_FLOOR) -> float:
    """Population stability index of bin shares ``actual`` against ``expected`` (each sums to 1)."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), floor)
    a = np.maximum(np.asarray(actual, dtype=np.float64), floor)
    if e.shape != a.shape or e.ndim != 1:
        raise ValueError(f"expected and actual must be 1-d bin shares of the same length, got {e.shape} and {a.shape}")
    return float(np.sum((a - e) * np.log(a / e)))


@dataclasses.dataclass(frozen=True)
class Bins:
    """Quantile bins of one variable: ``edges`` (ascending, distinct) cut the line into
    ``len(edges) + 1`` bins ``(-inf, e0], (e0, e1], ..., (e_last, inf)``; ``shares`` are the
    training rows' shares per bin."""

    edges: tuple[float, ...]
    shares: tuple[float, ...]

    @classmethod
    def fit(cls, values, n_bins: int = DEFAULT_BINS) -> Bins:
        x = _finite(values, "values")
        if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 2:
            raise ValueError(f"n_bins must be an integer >= 2, got {n_bins!r}")
        # Discrete variables (a 0/1 flag) give repeated quantiles: keep each edge once.
        inner = np.quantile(x, np.linspace(0.0, 1.0, n_bins + 1)[1:-1], method="lower")  # observed values
        edges = tuple(float(e) for e in np.unique(inner))
        return cls(edges, tuple(float(s) for s in cls._shares(edges, x)))

    @staticmethod
    def _shares(edges: Sequence[float], x: np.ndarray) -> np.ndarray:
        counts = np.bincount(np.searchsorted(np.asarray(edges), x, side="left"), minlength=len(edges) + 1)
        return counts / max(x.size, 1)

    def shares_of(self, values) -> np.ndarray:
        """The share of ``values`` in each bin."""
        return self._shares(self.edges, _finite(values, "values"))

    def stability(self, values, floor: float = PSI_FLOOR) -> float:
        """PSI of ``values`` against the training shares."""
        return psi(self.shares, self.shares_of(values), floor)


def _finite(values, name: str) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError(f"{name} must hold at least one number, got none")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} must be finite numbers, got NaN or infinity")
    return x


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """PSI above ``warn`` is a moderate shift, above ``alarm`` a significant one."""

    warn: float = 0.1
    alarm: float = 0.25

    def __post_init__(self) -> None:
        if not (0 <= self.warn <= self.alarm) or not math.isfinite(self.alarm):
            raise ValueError(f"PSI thresholds need 0 <= warn <= alarm < inf, got warn={self.warn!r} alarm={self.alarm!r}")

    def status(self, value: float) -> str:
        return "alarm" if value > self.alarm else ("warn" if value > self.warn else "ok")


@dataclasses.dataclass(frozen=True)
class Reference:
    """The training reference of a model version: :class:`Bins` per feature and for the score."""

    bins: Mapping[str, Bins]
    rows: int

    @classmethod
    def fit(cls, frame: pd.DataFrame, feature_names: Sequence[str], scores, n_bins: int = DEFAULT_BINS) -> Reference:
        missing = [n for n in feature_names if n not in frame.columns]
        if missing:
            raise ValueError(f"reference: the training rows lack feature column(s) {', '.join(missing)}")
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != (len(frame),):
            raise ValueError(f"reference: need one score per training row ({len(frame)}), got shape {scores.shape}")
        bins = {name: Bins.fit(frame[name].to_numpy(), n_bins) for name in feature_names}
        bins[SCORE] = Bins.fit(scores, n_bins)
        return cls(bins, len(frame))

    def stability(self, frame: pd.DataFrame, scores=None, floor: float = PSI_FLOOR) -> dict[str, float]:
        """PSI per feature present in the reference (and ``score`` when ``scores`` are given)."""
        missing = [n for n in self.bins if n != SCORE and n not in frame.columns]
        if missing:
            raise ValueError(f"stability: the live window lacks feature column(s) {', '.join(missing)}")
        out = {name: b.stability(frame[name].to_numpy(), floor) for name, b in self.bins.items() if name != SCORE}
        if scores is not None:
            out[SCORE] = self.bins[SCORE].stability(scores, floor)
        return out

    def to_json(self) -> bytes:
        body = {"kind": "quantile-bins", "rows": self.rows,
                "bins": {n: {"edges": list(b.edges), "shares": list(b.shares)} for n, b in self.bins.items()}}
        return json.dumps(body, sort_keys=True, indent=1).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes | str) -> Reference:
        try:
            body = json.loads(data)
            bins = {n: Bins(tuple(map(float, b["edges"])), tuple(map(float, b["shares"]))) for n, b in body["bins"].items()}
            rows = int(body["rows"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{REFERENCE_FILE}: expected {{'rows': int, 'bins': {{name: {{'edges', 'shares'}}}}}}, "
                             f"could not read it: {exc}") from exc
        for name, b in bins.items():
            if len(b.shares) != len(b.edges) + 1:
                raise ValueError(f"{REFERENCE_FILE}: bins of {name!r} need len(edges) + 1 shares, "
                                 f"got {len(b.edges)} edges and {len(b.shares)} shares")
        return cls(bins, rows)


def load_reference(registry, version: str) -> Reference | None:
    """The training reference stored with ``version`` (checksums verified), or ``None`` for a
    version registered before references existed."""
    files = registry.verify(registry.resolve(version))
    return Reference.from_json(files[REFERENCE_FILE]) if REFERENCE_FILE in files else None


# --------------------------------------------------------------------------- live quality


class LiveQuality:
    """AP and card precision@k over the last ``window_days`` days (event time) of labelled,
    scored transactions; older rows are dropped as newer ones arrive.

    Rows are kept as numpy chunks (appended per :meth:`update`, joined and pruned when
    :meth:`metrics` asks or when many chunks accumulate): the streaming job updates it once per
    bundle and pickles it with its state, which a growing DataFrame made costly.
    """

    def __init__(self, window_days: int = 7, k: int = TOP_K):
        if isinstance(window_days, bool) or not isinstance(window_days, int) or window_days < 1:
            raise ValueError(f"window_days must be an integer >= 1, got {window_days!r}")
        self.window_days = window_days
        self.k = k
        self._chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._latest: np.datetime64 | None = None

    def update(self, times, customers, labels, scores) -> None:
        t = np.asarray(pd.to_datetime(np.asarray(times)), dtype="datetime64[ns]")
        y = np.asarray(labels, dtype=np.int64)
        if not np.isin(y, (0, 1)).all():
            raise ValueError("labels must be 0 or 1")
        c, sc = np.asarray(customers), np.asarray(scores, dtype=np.float64)
        if not (len(t) == len(c) == len(y) == len(sc)):
            raise ValueError(f"times, customers, labels and scores must have one entry per row, got lengths "
                             f"{len(t)}, {len(c)}, {len(y)} and {len(sc)}")
        if not len(t):
            return
        latest = t.max()
        self._latest = latest if self._latest is None else max(self._latest, latest)
        self._chunks.append((t, c, y, sc))
        if len(self._chunks) > 64:
            self._compact()

    def _compact(self) -> None:
        if not self._chunks:
            return
        t, c, y, sc = (np.concatenate(parts) for parts in zip(*self._chunks))
        cutoff = self._latest.astype("datetime64[D]") - np.timedelta64(self.window_days - 1, "D")
        keep = t >= cutoff
        self._chunks = [(t[keep], c[keep], y[keep], sc[keep])] if keep.any() else []

    def metrics(self) -> dict:
        """``{"rows", "frauds", "average_precision", "card_precision@k"}`` (metrics ``None`` until
        the window holds both classes)."""
        self._compact()
        out = {"rows": 0, "frauds": 0, "average_precision": None, f"card_precision@{self.k}": None}
        if not self._chunks:
            return out
        ((t, c, y, sc),) = self._chunks
        out["rows"], out["frauds"] = len(y), int(y.sum())
        if 0 < y.sum() < len(y):
            out["average_precision"] = average_precision(y, sc)
            out[f"card_precision@{self.k}"] = card_precision_at_k(t.astype("datetime64[D]"), c, y, sc, k=self.k).mean
        return out


# --------------------------------------------------------------------------- events and gauges


def monitoring_event(stability: Mapping[str, float], thresholds: Thresholds = Thresholds(), *,
                     model_version: str | None = None, live: Mapping | None = None, at: str | None = None) -> dict:
    """The ``monitoring`` event for one window: PSI per variable, each one's status, the
    variables past the alarm threshold and the overall status (the worst)."""
    status = {name: thresholds.status(v) for name, v in stability.items()}
    order = ("ok", "warn", "alarm")
    worst = max(status.values(), key=order.index, default="ok")
    return {"kind": "stability", "at": at, "model_version": model_version,
            "psi": {n: round(float(v), 6) for n, v in stability.items()}, "psi_status": status,
            "drifted": sorted(n for n, s in status.items() if s == "alarm"), "status": worst,
            "thresholds": dataclasses.asdict(thresholds), "live": dict(live) if live is not None else None}


class MonitoringGauges:
    """Prometheus gauges for :func:`monitoring_event` dicts (on their own ``CollectorRegistry``
    unless one is given)."""

    def __init__(self, registry=None):
        from prometheus_client import CollectorRegistry, Gauge

        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.psi = Gauge("streamscore_monitoring_psi", "PSI of the live window against the training reference",
                         ["variable"], registry=r)
        self.alarm = Gauge("streamscore_monitoring_psi_alarm", "1 when a variable's PSI is past the alarm threshold",
                           ["variable"], registry=r)
        self.live = Gauge("streamscore_monitoring_live_quality", "Live quality over the sliding labelled window",
                          ["metric"], registry=r)
        self.status = Gauge("streamscore_monitoring_status", "The last window's overall status: 0 ok, 1 warn, 2 alarm",
                            registry=r)
        self.window_end = Gauge("streamscore_monitoring_window_end_seconds",
                                "Event-time end of the last window reported (Unix seconds; the stream's events only)",
                                registry=r)
        from models.served import ServedGauges

        self.online = ServedGauges(r)  # the online model's events: as served, and prequential

    def publish(self, event: Mapping) -> None:
        if event.get("kind") in ("online_served", "online_snapshot"):
            self.online.publish(event)
            return
        for name, value in event["psi"].items():
            self.psi.labels(variable=name).set(value)
            self.alarm.labels(variable=name).set(1.0 if event["psi_status"][name] == "alarm" else 0.0)
        for metric, value in (event.get("live") or {}).items():
            if value is not None:
                self.live.labels(metric=metric).set(float(value))
        self.status.set(("ok", "warn", "alarm").index(event.get("status", "ok")))
        if event.get("window_end"):
            self.window_end.set(pd.Timestamp(event["window_end"]).timestamp())
