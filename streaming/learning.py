"""Online learning inside the streaming job: one learner owns the River model.

Labelled examples (the exact feature vector each transaction was scored with, joined with its
late label by :class:`~streaming.features.stream.TerminalStateFn`) are keyed to one key, so a
single :class:`LearnerFn` sees them all, in order. For each example it

1. asks the predictor for the production model's score and feeds ``|label − score|`` to an
   ADWIN :class:`~models.online.DriftMonitor` (a drift event goes to the ``monitoring`` topic);
2. updates the :class:`~models.online.OnlineLearner` (predict first, then learn: prequential);
3. every ``snapshot_every_labels`` labels or ``snapshot_every_seconds`` seconds, writes a
   checksummed snapshot, signed with the job's key when it has one (:mod:`models.signing`), to
   the registry (``online`` alias) — the predictor hot-loads it — and
   reports it with the prequential metrics on the ``monitoring`` topic.

The seconds are kept by a processing-time timer, set when the first label after a snapshot
arrives: labels learned since the last snapshot are written within ``snapshot_every_seconds``
even when no further label comes (the end of a replay, a lull, fewer labels than
``snapshot_every_labels``). A check made only when a label arrives would leave them unwritten.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import apache_beam as beam
import orjson
from apache_beam.coders import PickleCoder
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Duration, Timestamp

from models.online import DriftMonitor, OnlineLearner
from streaming.events import SCHEMA_ATTRIBUTE
from streaming.features.spec import FeatureSpec
from streaming.guard import guarded
from streaming.labelled import Example
from streaming.scoring import ScoringClient, read_tls_roots

SCHEMA_MONITORING = "streamscore.monitoring.v1"
LEARNER_KEY = "learner"


def monitoring_message(kind: str, **fields) -> PubsubMessage:
    """A ``monitoring`` topic event (``kind``: ``drift`` or ``online_snapshot``)."""
    body = {"kind": kind, **fields}
    return PubsubMessage(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
                         {SCHEMA_ATTRIBUTE: SCHEMA_MONITORING, "kind": kind})


@dataclass
class LearnerState:
    learner: OnlineLearner
    drift: DriftMonitor
    since_snapshot: int
    last_snapshot_at: float
    version: str | None = None


class LearnerFn(beam.DoFn):
    """(LEARNER_KEY, Example) → monitoring messages; snapshots go to the registry."""

    STATE = ReadModifyWriteStateSpec("learner", PickleCoder())
    FLUSH = TimerSpec("flush", TimeDomain.REAL_TIME)

    def __init__(self, registry: str, spec: FeatureSpec, predictor: str | None, *,
                 snapshot_every_labels: int = 500, snapshot_every_seconds: float = 60.0,
                 clock: Callable[[], float] = time.time, signing_key_file: str | None = None,
                 predictor_token_file: str | None = None, predictor_tls_ca_file: str | None = None):
        self.registry = registry
        # Paths, read on the worker: no key or token is pickled into the pipeline graph. Without a
        # signing key the snapshots are unsigned (the command line allows that only with --allow-unsigned).
        self.signing_key_file = signing_key_file
        self.predictor_token_file = predictor_token_file
        self.predictor_tls_ca_file = predictor_tls_ca_file
        self.spec = spec
        self.predictor = predictor
        self.snapshot_every_labels = snapshot_every_labels
        self.snapshot_every_seconds = snapshot_every_seconds
        self.clock = clock
        self._learned = Metrics.counter(self.__class__, "labels_learned")
        self._drifts = Metrics.counter(self.__class__, "drifts")
        self._snapshots = Metrics.counter(self.__class__, "snapshots")

    def setup(self):
        from models.registry import Registry
        from models.signing import KeyRing

        keys = KeyRing.load(self.signing_key_file) if self.signing_key_file else None
        self._registry = Registry.open(self.registry, keys=keys)
        self._client = ScoringClient(
            self.predictor, token_file=self.predictor_token_file,
            tls_roots=read_tls_roots(self.predictor_tls_ca_file) if self.predictor_tls_ca_file else None,
        ) if self.predictor else None

    @guarded("learn")
    def process(self, element, state=beam.DoFn.StateParam(STATE), flush=beam.DoFn.TimerParam(FLUSH)):
        _, example = element
        current: LearnerState | None = state.read()
        if current is None:
            current = LearnerState(OnlineLearner(self.spec.names), DriftMonitor(), 0, self.clock())
        yield from self._drift(current, example)
        current.learner.learn_one(example.features, example.label)
        current.since_snapshot += 1
        self._learned.inc()
        due = (current.since_snapshot >= self.snapshot_every_labels
               or self.clock() - current.last_snapshot_at >= self.snapshot_every_seconds)
        if due:
            yield self._snapshot(current)
        elif current.since_snapshot == 1:  # the first label not in a snapshot: write it within the seconds
            flush.set(Timestamp.of(self.clock()) + Duration.of(self.snapshot_every_seconds))
        state.write(current)

    @on_timer(FLUSH)
    def on_flush(self, state=beam.DoFn.StateParam(STATE)):
        current: LearnerState | None = state.read()
        if current is not None and current.since_snapshot > 0:
            yield self._snapshot(current)
            state.write(current)

    def _drift(self, current: LearnerState, example: Example):
        if self._client is None:
            return
        scored = self._client.score_many([(example.transaction_id, example.features)])[0]
        if scored.score is None:
            return
        if current.drift.update(example.label, scored.score):
            self._drifts.inc()
            yield monitoring_message("drift", detector="ADWIN", model_version=scored.model_version,
                                     mean_error=current.drift.mean_error, labels=current.drift.updates,
                                     transaction_id=example.transaction_id)

    def _snapshot(self, current: LearnerState) -> PubsubMessage:
        metrics = current.learner.metrics()
        version = self._registry.register_online(
            current.learner.snapshot(),
            {"feature_names": list(self.spec.names), "labels_learned": current.learner.labels_seen,
             "prequential": metrics, "previous_version": current.version},
            spec_hash=self.spec.spec_hash)
        current.version, current.since_snapshot, current.last_snapshot_at = version, 0, self.clock()
        self._snapshots.inc()
        return monitoring_message("online_snapshot", version=version, **{
            k: (None if isinstance(v, float) and v != v else v) for k, v in metrics.items()})
