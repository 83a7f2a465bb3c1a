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

Starting: the first example of a key finds its state empty, and the learner starts from the
newest matching snapshot, the production model's training window, or cold
(:func:`models.online_start.warm_start`); an ``online_start`` monitoring event says which.

Gate: no snapshot is written before the learner has seen ``min_class_labels`` labels of each
class (a model that has seen no fraud ranks at random; the previous snapshot keeps serving).

Versions are content-derived (:meth:`models.registry.Registry.register_online`): a bundle
retried after its snapshot was written rewrites the same version.

Failures of the snapshot write (the registry is a bucket or a disk: it can be down, full or slow)
never fail the pipeline and never dead-letter an example: the example was already learned, so a
dead letter would report it lost although it is in the model. The write is retried with capped
exponential backoff (``snapshot_retry_seconds`` doubling up to ``snapshot_retry_max_seconds``),
by the flush timer, so labels learned meanwhile are in the next successful snapshot. Each failure
moves the ``snapshot_failures`` counter, is logged, and is reported on the ``monitoring`` topic
(``online_snapshot_failed``: the error, the attempt, the next retry in seconds). The flush timer's
callback is guarded as a whole (there is no element to dead-letter): anything else it raises is
counted in ``timer_failures``, logged and reported the same way, and the timer is set again.

Sharding (``shards > 1``): examples are keyed by :func:`models.online_shards.shard_of` to N
learner keys. Each shard emits its member's snapshot on the ``members`` output instead of
registering it; :class:`CombineMembersFn` (one key) keeps the latest member of every shard and,
once all N have reported, registers their combination (:func:`models.online_shards.combine`).
"""

from __future__ import annotations

import logging
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

from models.online import DEFAULT_LEARNER, DriftMonitor, OnlineLearner
from models.online_shards import combine, combined_key, shard_key, shard_of
from streaming.io.encoding import _safe_text
from streaming.io.events import SCHEMA_ATTRIBUTE
from streaming.features.spec import FeatureSpec
from streaming.job.guard import guarded
from streaming.job.labelled import Example
from streaming.job.scoring import ScoringClient, read_tls_roots

SCHEMA_MONITORING = "streamscore.monitoring.v1"
LEARNER_KEY = "learner"
COMBINE_KEY = "combine"
MEMBERS = "members"

log = logging.getLogger(__name__)


def key_example(example: Example, shards: int = 1) -> tuple[str, Example]:
    """``(learner key, example)``: the one key, or the shard of the example's transaction id."""
    return (LEARNER_KEY if shards == 1 else shard_key(shard_of(example.transaction_id, shards), shards)), example


def monitoring_message(kind: str, **fields) -> PubsubMessage:
    """A ``monitoring`` topic event (``kind``: ``drift``, ``online_start``, ``online_snapshot``, ``online_snapshot_failed``)."""
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
    # Snapshot-write failures in a row and the clock time of the next attempt. Defaults, so a
    # state pickled before these fields existed loads unchanged (a dataclass default is a class attribute).
    failures: int = 0
    retry_at: float = 0.0


class LearnerFn(beam.DoFn):
    """(learner key, Example) → monitoring messages; snapshots go to the registry (or, sharded,
    to the ``members`` output as ``(COMBINE_KEY, (shard, snapshot bytes))``)."""

    STATE = ReadModifyWriteStateSpec("learner", PickleCoder())
    FLUSH = TimerSpec("flush", TimeDomain.REAL_TIME)

    def __init__(self, registry: str, spec: FeatureSpec, predictor: str | None, *,
                 snapshot_every_labels: int = 500, snapshot_every_seconds: float = 60.0,
                 clock: Callable[[], float] = time.time, learner: str = DEFAULT_LEARNER, shards: int = 1,
                 min_class_labels: int = 10, warm_start: bool = True, signing_key_file: str | None = None,
                 predictor_token_file: str | None = None, predictor_tls_ca_file: str | None = None,
                 snapshot_retry_seconds: float = 1.0, snapshot_retry_max_seconds: float = 60.0):
        if not 0 < snapshot_retry_seconds <= snapshot_retry_max_seconds:
            raise ValueError(f"snapshot_retry_seconds must be > 0 and <= snapshot_retry_max_seconds, got "
                             f"{snapshot_retry_seconds} and {snapshot_retry_max_seconds}")
        if shards < 1:
            raise ValueError(f"shards must be >= 1, got {shards}")
        if min_class_labels < 0:
            raise ValueError(f"min_class_labels must be >= 0, got {min_class_labels}")
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
        self.learner = learner
        self.shards = shards
        self.min_class_labels = min_class_labels
        self.warm_start = warm_start
        self.snapshot_retry_seconds = snapshot_retry_seconds
        self.snapshot_retry_max_seconds = snapshot_retry_max_seconds
        self._learned = Metrics.counter(self.__class__, "labels_learned")
        self._drifts = Metrics.counter(self.__class__, "drifts")
        self._snapshots = Metrics.counter(self.__class__, "snapshots")
        self._gated = Metrics.counter(self.__class__, "snapshots_gated")
        self._snapshot_failures = Metrics.counter(self.__class__, "snapshot_failures")
        self._timer_failures = Metrics.counter(self.__class__, "timer_failures")

    def setup(self):
        from models.registry import Registry
        from models.signing import KeyRing

        keys = KeyRing.load(self.signing_key_file) if self.signing_key_file else None
        self._registry = Registry.open(self.registry, keys=keys)
        self._client = ScoringClient(
            self.predictor, token_file=self.predictor_token_file,
            tls_roots=read_tls_roots(self.predictor_tls_ca_file) if self.predictor_tls_ca_file else None,
        ) if self.predictor else None

    def _start(self, key: str) -> tuple[LearnerState, PubsubMessage]:
        from models.online import learner_factory
        from models.online_start import warm_start

        if self.warm_start:
            shard = int(key.rsplit("-", 1)[1]) if self.shards > 1 else 0
            learner, info = warm_start(
                self._registry, self.spec, learner_key=key, learner=self.learner, shards=self.shards, shard=shard,
                combined_key=combined_key(self.shards), member=shard if self.shards > 1 else None)
        else:
            learner = OnlineLearner(self.spec.names, learner_factory(self.learner))
            info = {"learner_key": key, "learner": self.learner, "start": "cold", "labels": 0, "refused": None}
        return LearnerState(learner, DriftMonitor(), 0, self.clock()), monitoring_message("online_start", **info)

    @guarded("learn")
    def process(self, element, state=beam.DoFn.StateParam(STATE), flush=beam.DoFn.TimerParam(FLUSH)):
        key, example = element
        current: LearnerState | None = state.read()
        if current is None:
            current, started = self._start(key)
            yield started
            if orjson.loads(started.data)["start"] == "training_window":  # serve it before any live label
                yield from self._snapshot(key, current, flush)
        yield from self._drift(current, example)
        current.learner.learn_one(example.features, example.label)
        # Learned: nothing below may raise (the guard would dead-letter an example that is in the model).
        current.since_snapshot += 1
        self._learned.inc()
        now = self.clock()
        if current.failures:  # a failed write is retried by the timer (or here) once its backoff passed
            due = now >= current.retry_at
        else:
            due = (current.since_snapshot >= self.snapshot_every_labels
                   or now - current.last_snapshot_at >= self.snapshot_every_seconds)
        if due:
            yield from self._snapshot(key, current, flush)
        elif current.since_snapshot == 1 and not current.failures:  # the first label not in a snapshot
            flush.set(Timestamp.of(now) + Duration.of(self.snapshot_every_seconds))
        state.write(current)

    @on_timer(FLUSH)
    def on_flush(self, key=beam.DoFn.KeyParam, state=beam.DoFn.StateParam(STATE), flush=beam.DoFn.TimerParam(FLUSH)):
        # Guarded as a whole: a timer has no element to dead-letter, and an exception here would
        # fail the bundle (the local runner gives up after 4 attempts: the pipeline dies).
        outputs: list = []
        current: LearnerState | None = None
        try:
            current = state.read()
            if current is not None and current.since_snapshot > 0:
                outputs = list(self._snapshot(key, current, flush))
                state.write(current)
        except Exception as exc:
            self._timer_failures.inc()
            attempt = (current.failures + 1) if isinstance(current, LearnerState) else 1
            delay = self._backoff(attempt)
            log.warning("learner %s: flush timer failed (%s: %s); again in %g s", key, type(exc).__name__, exc, delay)
            try:
                flush.set(Timestamp.of(self.clock()) + Duration.of(delay))
            except Exception:  # noqa: S110 - reported just below; the next label sets it again
                log.exception("learner %s: could not set the flush timer again", key)
            outputs = [failure_message(key, "timer", exc, attempt, delay)]
        yield from outputs

    def _backoff(self, attempt: int) -> float:
        """Seconds before retry ``attempt`` (1, 2, ...): doubling from ``snapshot_retry_seconds``, capped."""
        return min(self.snapshot_retry_max_seconds, self.snapshot_retry_seconds * 2.0 ** min(attempt - 1, 60))

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

    def _gate(self, learner: OnlineLearner) -> bool:
        frauds = learner.frauds_seen
        return frauds >= self.min_class_labels and learner.labels_seen - frauds >= self.min_class_labels

    def _snapshot(self, key: str, current: LearnerState, flush=None):
        """Write (or, sharded, emit) a snapshot. A failure is counted, reported and retried with backoff
        by the flush timer; it never raises (see the module docs)."""
        learner = current.learner
        if not self._gate(learner):
            self._gated.inc()
            current.last_snapshot_at = self.clock()  # try again after the next interval, not on every label
            return
        try:
            metrics = learner.metrics()
            if self.shards > 1:
                member = (COMBINE_KEY, (int(key.rsplit("-", 1)[1]), learner.snapshot()))
            else:
                version = register_snapshot(self._registry, learner, self.spec, key, self.learner, current.version)
        except Exception as exc:
            self._snapshot_failures.inc()
            current.failures += 1
            delay = self._backoff(current.failures)
            current.retry_at = self.clock() + delay
            log.warning("learner %s: snapshot write failed (attempt %d, %s: %s); retrying in %g s",
                        key, current.failures, type(exc).__name__, exc, delay)
            if flush is not None:
                flush.set(Timestamp.of(self.clock()) + Duration.of(delay))
            yield failure_message(key, "write", exc, current.failures, delay)
            return
        current.since_snapshot, current.last_snapshot_at = 0, self.clock()
        current.failures, current.retry_at = 0, 0.0
        if self.shards > 1:
            yield beam.pvalue.TaggedOutput(MEMBERS, member)
            return
        current.version = version
        self._snapshots.inc()
        yield snapshot_message(version, metrics, learner_key=key)


def failure_message(key: str, where: str, exc: BaseException, attempt: int, retry_in: float) -> PubsubMessage:
    """The ``online_snapshot_failed`` monitoring event (``where``: ``write`` or ``timer``)."""
    return monitoring_message("online_snapshot_failed", learner_key=key, where=where,
                              error=_safe_text(f"{type(exc).__name__}: {exc}", 500), attempt=attempt, retry_in_seconds=retry_in)


def register_snapshot(registry, learner: OnlineLearner, spec: FeatureSpec, key: str, kind: str,
                      previous: str | None, **extra) -> str:
    """Register ``learner`` under a content-derived version (a retry rewrites the same one)."""
    return registry.register_online(
        learner.snapshot(),
        {"feature_names": list(spec.names), "labels_learned": learner.labels_seen, "frauds_learned": learner.frauds_seen,
         "prequential": learner.metrics(), "learner": kind, "learner_key": key,
         "previous_version": previous, **extra},
        spec_hash=spec.spec_hash, learner_key=key, labels_seen=learner.labels_seen)


def snapshot_message(version: str, metrics: dict, **fields) -> PubsubMessage:
    return monitoring_message("online_snapshot", version=version, **fields, **{
        k: (None if isinstance(v, float) and v != v else v) for k, v in metrics.items()})


class CombineMembersFn(beam.DoFn):
    """(COMBINE_KEY, (shard, member snapshot)) → monitoring messages; registers the combined snapshot
    once every one of the ``shards`` members has reported, and again on every newer member."""

    MEMBERS_STATE = ReadModifyWriteStateSpec("members", PickleCoder())

    def __init__(self, registry: str, spec: FeatureSpec, shards: int, learner: str = DEFAULT_LEARNER,
                 signing_key_file: str | None = None):
        self.registry = registry
        self.spec = spec
        self.shards = shards
        self.learner = learner
        self.signing_key_file = signing_key_file  # a path, read on the worker (see LearnerFn)
        self._snapshots = Metrics.counter(self.__class__, "snapshots")

    def setup(self):
        from models.registry import Registry
        from models.signing import KeyRing

        keys = KeyRing.load(self.signing_key_file) if self.signing_key_file else None
        self._registry = Registry.open(self.registry, keys=keys)

    def process(self, element, state=beam.DoFn.StateParam(MEMBERS_STATE)):
        _, (shard, snapshot) = element
        members: dict[int, bytes] = state.read() or {}
        members[shard] = snapshot
        state.write(members)
        if len(members) < self.shards:
            return
        combined = combine([OnlineLearner.restore(members[i]) for i in range(self.shards)])
        key = combined_key(self.shards)
        version = register_snapshot(self._registry, combined, self.spec, key, self.learner, None, shards=self.shards)
        self._snapshots.inc()
        yield snapshot_message(version, combined.metrics(), learner_key=key, shards=self.shards)
