"""Live monitoring inside the streaming job (``stream --live-monitoring``).

:class:`LiveMonitorFn` (one key) receives one :class:`~streaming.job.example_log.MonitorBatch`
per bundle of the example-log stage: the feature vectors and scores of the transactions scored,
and the rows whose label arrived. It keeps

* per tumbling window of ``window_hours`` of **event time** (the transactions' own times, so a
  replay of old data is monitored as it happened), the count of scored vectors in each
  quantile bin of the production model's training reference
  (:func:`models.monitoring.load_reference`, read from the registry's ``production`` alias,
  checked again every ``refresh_seconds``) — numpy ``searchsorted`` + ``bincount`` per batch;
* a :class:`models.monitoring.LiveQuality`: AP and card precision@100 over the last
  ``quality_days`` of confirmed labels.

A window is emitted once the stream's event time (its latest scored transaction) has passed the
window's end by ``grace_hours``: a ``monitoring`` event (``kind: "stability"``,
:func:`models.monitoring.monitoring_event`) with the PSI of every feature and of the score, its
status under the ``warn``/``alarm`` thresholds, the variables in alarm, and the live quality at
that moment; ``window_start``/``window_end``/``rows`` say what it covers, ``late_rows`` how many
vectors came for windows already emitted (not counted in any). The last window of a replay is
emitted when later traffic moves the event time on.

The counts are binned against the reference current when the batch arrives: a window that
straddles a promotion is emitted once per reference version (each event names its version).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import apache_beam as beam
import numpy as np
import orjson
from apache_beam.coders import PickleCoder
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.metrics import Metrics
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec

from models.monitoring import SCORE, LiveQuality, Reference, Thresholds, monitoring_event, psi
from models.segments import segments_of
from streaming.features.spec import FeatureSpec
from streaming.io.events import SCHEMA_ATTRIBUTE
from streaming.job.example_log import MonitorBatch

SCHEMA_MONITORING = "streamscore.monitoring.v1"  # as streaming.job.learning's events
HOUR_NS = 3_600 * 10**9
#: registry → (when read, (production version, its reference) or None), per worker process: the
#: local runner unpickles a fresh DoFn per bundle, which would otherwise re-read and re-verify
#: the version every bundle.
_CURRENT: dict[str, tuple[float, tuple[str, Reference] | None]] = {}


@dataclass
class WindowCounts:
    rows: int = 0
    counts: dict[str, np.ndarray] = field(default_factory=dict)
    #: (segment family, segment) -> [transactions scored, alerts (score >= the alert threshold)]
    segments: dict[tuple[str, str], list[int]] = field(default_factory=dict)


@dataclass
class MonitorState:
    quality: LiveQuality
    windows: dict[tuple[int, str], WindowCounts] = field(default_factory=dict)  # (start ns, version) -> counts
    latest_ns: int | None = None
    emitted_until_ns: int | None = None  # every window ending at or before this was emitted
    late_rows: int = 0
    #: (event day in ns, family, segment) -> [labelled alerts, of them frauds]: precision per segment
    #: over the last ``quality_days`` event days, as the live AP's window
    labelled_segments: dict[tuple[int, str, str], list[int]] = field(default_factory=dict)


DAY_NS = 24 * HOUR_NS


def count_segments(into: dict, names, features: np.ndarray, keys: np.ndarray, first: np.ndarray,
                   second: np.ndarray) -> None:
    """For each row's ``(key, family, segment)``: add how many rows have ``first`` and how many
    ``second`` (boolean arrays) to ``into[(key, family, segment)] = [n_first, n_second]``."""
    assigned = segments_of(names, features)
    for key in np.unique(keys):
        rows = keys == key
        for family, segment_of in assigned.items():
            for segment in np.unique(segment_of[rows]):
                mask = rows & (segment_of == segment)
                counts = into.setdefault((int(key), family, str(segment)), [0, 0])
                counts[0] += int(first[mask].sum())
                counts[1] += int(second[mask].sum())


def window_counts(reference: Reference, names, times_ns: np.ndarray, features: np.ndarray, scores: np.ndarray,
                  window_ns: int) -> dict[int, WindowCounts]:
    """Bin counts per window start of a batch against ``reference`` (vectorised per variable)."""
    starts = (times_ns // window_ns) * window_ns
    out = {}
    columns = [(name, features[:, j]) for j, name in enumerate(names) if name in reference.bins]
    columns.append((SCORE, scores))
    for start in np.unique(starts):
        mask = starts == start
        wc = WindowCounts(int(mask.sum()))
        for name, values in columns:
            edges = np.asarray(reference.bins[name].edges)
            wc.counts[name] = np.bincount(np.searchsorted(edges, values[mask], side="left"), minlength=edges.size + 1)
        out[int(start)] = wc
    return out


def stability_of(reference: Reference, wc: WindowCounts) -> dict[str, float]:
    return {name: psi(reference.bins[name].shares, counts / max(counts.sum(), 1)) for name, counts in wc.counts.items()}


def _iso(ns: int) -> str:
    return str(np.datetime64(int(ns), "ns").astype("datetime64[s]")) + "Z"


def stability_message(event: dict) -> PubsubMessage:
    return PubsubMessage(orjson.dumps(event, option=orjson.OPT_SERIALIZE_NUMPY),
                         {SCHEMA_ATTRIBUTE: SCHEMA_MONITORING, "kind": event["kind"]})


class LiveMonitorFn(beam.DoFn):
    """(MONITOR_KEY, MonitorBatch) → ``monitoring`` messages (``kind: "stability"``) as windows close."""

    STATE = ReadModifyWriteStateSpec("monitor", PickleCoder())

    def __init__(self, registry: str | None, spec: FeatureSpec, *, window_hours: float = 24.0,
                 grace_hours: float = 1.0, quality_days: int = 7, thresholds: Thresholds = Thresholds(),
                 signing_key_file: str | None = None, refresh_seconds: float = 60.0,
                 reference: Callable[[], tuple[str, Reference] | None] | None = None,
                 clock: Callable[[], float] = time.monotonic, alert_threshold: float = 0.5):
        if not window_hours > 0 or grace_hours < 0:
            raise ValueError(f"window_hours must be > 0 and grace_hours >= 0, got {window_hours} and {grace_hours}")
        if registry is None and reference is None:
            raise ValueError("live monitoring needs a registry (the production model's training reference)")
        self.registry = registry
        self.spec = spec
        self.window_hours = window_hours
        self.grace_hours = grace_hours
        self.quality_days = quality_days
        self.thresholds = thresholds
        self.signing_key_file = signing_key_file
        self.refresh_seconds = refresh_seconds
        self.reference = reference  # tests inject (version, Reference); else read from the registry
        self.clock = clock
        self.alert_threshold = alert_threshold  # the job's --alert-threshold: what an alert is, per segment
        self._events = Metrics.counter(self.__class__, "stability_events")
        self._alarms = Metrics.counter(self.__class__, "stability_alarms")
        self._unreferenced = Metrics.counter(self.__class__, "rows_without_reference")
        self._late = Metrics.counter(self.__class__, "late_rows")

    def setup(self):
        self._current: tuple[str, Reference] | None = None
        self._references: dict[str, Reference] = {}
        self._checked = None
        self._registry = None

    def _open(self):
        from models.registry import Registry
        from models.signing import KeyRing

        if self._registry is None:
            keys = KeyRing.load(self.signing_key_file) if self.signing_key_file else None
            self._registry = Registry.open(self.registry, keys=keys)
        return self._registry

    def _reference(self) -> tuple[str, Reference] | None:
        now = self.clock()
        if self._checked is not None and now - self._checked < self.refresh_seconds:
            return self._current
        if self.reference is None and self.registry in _CURRENT:  # another bundle's copy of this DoFn read it
            checked, current = _CURRENT[self.registry]
            if now - checked < self.refresh_seconds:
                self._checked, self._current = checked, current
                if current is not None:
                    self._references[current[0]] = current[1]
                return current
        self._checked = now
        if self.reference is not None:
            self._current = self.reference()
        else:
            version = self._open().alias("production")["version"]
            reference = self._reference_of(version) if version is not None else None
            self._current = (version, reference) if reference is not None else None
            _CURRENT[self.registry] = (now, self._current)
        if self._current is not None:
            self._references[self._current[0]] = self._current[1]
        return self._current

    def process(self, element, state=beam.DoFn.StateParam(STATE)):
        _, batch = element
        current = state.read()
        if current is None:
            current = MonitorState(LiveQuality(window_days=self.quality_days))
        yield from self._update(current, batch)
        state.write(current)

    def _update(self, current: MonitorState, batch: MonitorBatch):
        window_ns = int(self.window_hours * HOUR_NS)
        if len(batch.labels):
            current.quality.update(batch.labelled_times_ns.astype("datetime64[ns]"), batch.labelled_customers,
                                   batch.labels, batch.labelled_scores)
            if batch.labelled_features is not None:
                alerts = batch.labelled_scores >= self.alert_threshold
                count_segments(current.labelled_segments, self.spec.names, batch.labelled_features,
                               (batch.labelled_times_ns // DAY_NS) * DAY_NS, alerts, alerts & (batch.labels == 1))
        if len(batch.times_ns):
            times, features, scores = batch.times_ns, batch.features, batch.scores
            if current.emitted_until_ns is not None:
                late = times < current.emitted_until_ns
                if late.any():
                    current.late_rows += int(late.sum())
                    self._late.inc(int(late.sum()))
                    times, features, scores = times[~late], features[~late], scores[~late]
            found = self._reference()
            if found is None:
                self._unreferenced.inc(len(times))
            elif len(times):
                version, reference = found
                for start, wc in window_counts(reference, self.spec.names, times, features, scores, window_ns).items():
                    into = current.windows.setdefault((start, version), WindowCounts())
                    into.rows += wc.rows
                    for name, counts in wc.counts.items():
                        into.counts[name] = into.counts[name] + counts if name in into.counts else counts
                scored = {}
                count_segments(scored, self.spec.names, features, (times // window_ns) * window_ns,
                               np.ones(len(times), dtype=bool), scores >= self.alert_threshold)
                for (start, family, segment), (n, alerts) in scored.items():
                    counts = current.windows[(start, version)].segments.setdefault((family, segment), [0, 0])
                    counts[0] += n
                    counts[1] += alerts
            latest = int(batch.times_ns.max())
            current.latest_ns = latest if current.latest_ns is None else max(current.latest_ns, latest)
        if current.latest_ns is None:
            return
        horizon = current.latest_ns - int(self.grace_hours * HOUR_NS)
        due = sorted(key for key in current.windows if key[0] + window_ns <= horizon)
        for start, version in due:
            wc = current.windows.pop((start, version))
            reference = self._reference_of(version)
            if reference is None:  # the version's reference went away (e.g. a promoted model without one)
                continue
            event = monitoring_event(stability_of(reference, wc), self.thresholds, model_version=version,
                                     live=current.quality.metrics(), at=_iso(start + window_ns))
            event.update(window_start=_iso(start), window_end=_iso(start + window_ns), rows=wc.rows,
                         late_rows=current.late_rows, source="stream",
                         segments=self._segments(current, wc), alert_threshold=self.alert_threshold)
            self._events.inc()
            if event["status"] == "alarm":
                self._alarms.inc()
            current.emitted_until_ns = max(current.emitted_until_ns or 0, start + window_ns)
            yield stability_message(event)

    def _segments(self, current: MonitorState, wc: WindowCounts) -> dict:
        """Per family and segment: the window's transactions and alert rate (score >= the alert
        threshold), and the precision of the labelled alerts over the last ``quality_days`` days."""
        if current.labelled_segments:
            last = max(day for day, _, _ in current.labelled_segments)
            first = last - (self.quality_days - 1) * DAY_NS
            current.labelled_segments = {k: v for k, v in current.labelled_segments.items() if k[0] >= first}
        labelled: dict[tuple[str, str], list[int]] = {}
        for (_, family, segment), (alerts, hits) in current.labelled_segments.items():
            counts = labelled.setdefault((family, segment), [0, 0])
            counts[0] += alerts
            counts[1] += hits
        out: dict[str, dict[str, dict]] = {}
        for (family, segment) in sorted(set(wc.segments) | set(labelled)):
            n, alerts = wc.segments.get((family, segment), (0, 0))
            labelled_alerts, hits = labelled.get((family, segment), (0, 0))
            out.setdefault(family, {})[segment] = {
                "transactions": n, "alert_rate": alerts / n if n else None,
                "labelled_alerts": labelled_alerts, "precision": hits / labelled_alerts if labelled_alerts else None}
        return out

    def _reference_of(self, version: str) -> Reference | None:
        """The training reference of ``version`` (cached; None for a version without one)."""
        if version not in self._references and self.reference is None:
            from models.monitoring import load_reference

            reference = load_reference(self._open(), version)
            if reference is None:
                return None
            self._references[version] = reference
        return self._references.get(version)
