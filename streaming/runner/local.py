"""Tuning of Beam's local streaming runner (``BundleBasedDirectRunner``), for local runs only.

Profiling the streaming job on Beam 2.77's local runner (``python -m loadtest.bench_stream``
with ``BENCH_STREAM_PROFILE``) showed that most of its time went to the runner's own
bookkeeping, not to the job. :func:`install` removes nine such costs and one leak; none changes what a
pipeline computes, and Dataflow never runs this code (the job calls it only for the local
runner):

1. **DoFn introspection.** ``userstate.get_dofn_specs`` inspects the signature of every method
   of a DoFn, and the runner calls it several times per bundle for every ParDo (~2 ms each):
   46 % of the job's time. Its answer depends only on the DoFn's class (and on which names the
   instance shadows), so it is memoised per class; a DoFn instance holding bound methods of
   its own is not cached.
2. **Timer scans.** After every task the runner's single worker thread asks every transform
   for fired timers by walking the state of *every key it has seen* — O(keys) per task, 24 %
   of the time at 5,000 keys and growing with them. A ParDo whose DoFn declares no timers can
   never have one, so its scan is skipped (GroupByKey and DoFns with timers scan as before).
3. **Pub/Sub pulls.** The reader pulls at most 10 messages per bundle with a 30 s deadline, and
   the emulator holds an empty pull until just before the deadline: an idle subscription (the
   labels topic before labels flow) stalls the whole pipeline ~29 s per pull. Here a pull asks
   for up to ``pull_size`` messages with ``return_immediately`` (an empty pull answers at once)
   and a ``pull_deadline`` s deadline (Beam's 30 s by default: a short deadline is no cure, as a
   busy emulator can take longer than it to answer, and the messages it leased to the abandoned
   pull then come back only after the subscription's ack deadline, 60 s by default). A deadline
   error counts as an empty pull. When no patched reader got a message for ``idle_after`` s,
   an empty pull sleeps ``idle_sleep`` s so an idle job does not spin. Messages are still
   acknowledged as Beam does (right after the pull). A subscription that was pulled from
   successfully and then is ``NOT_FOUND`` or ``UNAVAILABLE`` (the emulator restarted and its
   in-memory subscriptions are not recreated yet) counts as an empty pull, with a warning every
   10 s, instead of failing the read four times in milliseconds and the pipeline with it.
4. **Publisher clients.** ``WriteToPubSub`` creates a new ``PublisherClient`` (a gRPC channel)
   in ``setup()``, which the local runner calls for every bundle, and never closes it. Here
   one client per process and ordering mode is created and reused. A write to a topic that was
   written successfully before and is now ``NOT_FOUND``/``UNAVAILABLE`` is retried for up to
   ``WRITE_RETRY_SECONDS`` (the whole bundle again: at least once, so a message may be published
   twice — identical).
5. **Per-bundle DoFn set-up.** Every ParDo bundle starts with a pickle round trip of the DoFn
   (a fresh copy) and a DoFnRunner that inspects the signature of each DoFn method again. Here
   the DoFn is pickled once per transform and each bundle unpickles its own fresh copy, and a
   function's argument names and defaults are memoised per function object.
6. **Per-element state copies.** Each key's state is copied on first access in a bundle, with
   ``copy.deepcopy`` of its (for a DoFn without timers: empty) timer and global-state dicts.
   Empty ones are now created empty instead of deep-copied; anything else is copied as before.
7. **Watermark refreshes.** After every task each transform's watermark is recomputed by
   iterating every element of every pending bundle (Beam's own TODO asks for the minimum to be
   tracked per bundle). A committed bundle is immutable, so its minimum timestamp is computed
   once and memoised on it.
8. **State encoding per element.** A ``ReadModifyWrite`` state value was encoded on every
   ``write`` and decoded on every ``read`` (for a pickled per-key window state, a pickle round
   trip per event). Here, as in the portable SDK worker that Dataflow runs (whose state cache
   hands back the object last written), the value is kept as the object: ``read`` returns what
   was last written. The first value written per state spec still goes through its coder, so a
   value the coder cannot encode fails locally as it would on Dataflow. (A DoFn that mutates a
   value it read without writing it back breaks Beam's contract on either runner.) Beam retries
   a failed bundle from the committed state; as a failed attempt may have changed committed
   objects in place, a bundle that fails after it was handed one is not retried: the pipeline
   fails with the bundle's error (a failure before that is retried as before).
9. **Empty bundles.** A ParDo's output that got no elements (an idle dead-letter branch) was
   committed as an empty bundle and scheduled on every consumer, each a task with its own
   evaluator, DoFn copy and watermark update. Beam's watermark manager already ignores empty
   bundles ("they do not impact watermarks and should not trigger downstream execution");
   now the executor does not schedule them either.
10. **A leak.** Every Pub/Sub pull leaves an empty "unprocessed" bundle that reschedules the
    reader; it is made pending on the reader's watermark but, being empty, never removed, so
    the reader's pending set grew by one bundle per pull (20 a second on an idle job) and every
    refresh walked it. An empty bundle holds no watermark; it is now removed once processed.

Patches 1-4 live here, 5-10 in :mod:`streaming.runner.local_bundles`. :func:`install` is idempotent and checks that each patched Beam internal still has the shape
it was written for; when one does not (another Beam version), that patch is skipped with a
warning and the runner behaves as Beam ships it.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
import types
import warnings
import weakref
from dataclasses import dataclass

from streaming.runner.local_bundles import (cache_pending_minimum, cheap_bundle_setup, drop_empty_pending,
                                           fast_state_copy, keep_state_decoded, skip_empty_bundles)

log = logging.getLogger(__name__)

#: The Beam release these patches were written and measured against.
TESTED_BEAM = "2.77.0"


@dataclass(frozen=True)
class LocalRunnerTuning:
    """What :func:`install` applied (None: not applied)."""

    dofn_specs: bool
    timer_scan: bool
    pull_size: int | None
    pull_deadline: float | None
    publisher_cache: bool
    bundle_setup: bool = False
    state_copy: bool = False
    pending_minimum: bool = False
    decoded_state: bool = False
    skip_empty_bundles: bool = False
    pending_leak: bool = False


_LOCK = threading.Lock()
_INSTALLED: dict[str, object] = {}


def install(pull_size: int = 100, pull_deadline: float = 30.0, *, idle_sleep: float = 0.05,
            idle_after: float = 0.5) -> LocalRunnerTuning:
    """Apply the patches (once per process; later calls may change the pull settings)."""
    if pull_size < 1:
        raise ValueError(f"pull_size must be >= 1, got {pull_size}")
    if not pull_deadline > 0:
        raise ValueError(f"pull_deadline must be > 0 s, got {pull_deadline}")
    import apache_beam

    if apache_beam.__version__ != TESTED_BEAM:
        log.warning("local runner tuning was written for Beam %s, this is %s: each patch checks its target",
                    TESTED_BEAM, apache_beam.__version__)
    with _LOCK:
        _PULL.update(size=pull_size, deadline=pull_deadline, idle_sleep=idle_sleep, idle_after=idle_after)
        for name, patch in (("dofn_specs", _memoise_dofn_specs), ("timer_scan", _skip_timerless_scans),
                            ("pull", _patch_pull), ("publisher_cache", _cache_publishers),
                            ("bundle_setup", cheap_bundle_setup), ("state_copy", fast_state_copy),
                            ("pending_minimum", cache_pending_minimum), ("decoded_state", keep_state_decoded),
                            ("skip_empty_bundles", skip_empty_bundles), ("pending_leak", drop_empty_pending)):
            if name not in _INSTALLED:
                try:
                    _INSTALLED[name] = patch()
                except (AttributeError, TypeError, ImportError) as exc:
                    log.warning("local runner tuning %r not applied (Beam internals differ): %s", name, exc)
                    _INSTALLED[name] = False
        pulled = bool(_INSTALLED["pull"])
        return LocalRunnerTuning(bool(_INSTALLED["dofn_specs"]), bool(_INSTALLED["timer_scan"]),
                                 pull_size if pulled else None, pull_deadline if pulled else None,
                                 bool(_INSTALLED["publisher_cache"]), bool(_INSTALLED["bundle_setup"]),
                                 bool(_INSTALLED["state_copy"]), bool(_INSTALLED["pending_minimum"]),
                                 bool(_INSTALLED["decoded_state"]), bool(_INSTALLED["skip_empty_bundles"]),
                                 bool(_INSTALLED["pending_leak"]))


# --------------------------------------------------------------------------- 1. DoFn specs


def dofn_specs_key(dofn) -> tuple | None:
    """The memo key of ``get_dofn_specs(dofn)``: its class and the callables its instance shadows.

    ``get_dofn_specs`` looks at every attribute of the DoFn that is a *bound method*: class
    methods, unless the instance shadows the name with a plain callable (as ``beam.Map``'s
    wrapper does with ``process``), which it then skips. So the answer is a function of the
    class and of those names — unless the instance holds bound methods itself (None: no memo).
    """
    shadowing = []
    for name, value in vars(dofn).items():
        if isinstance(value, types.MethodType):
            return None
        if callable(value):
            shadowing.append(name)
    return type(dofn), tuple(sorted(shadowing))


def _memoise_dofn_specs():
    from apache_beam.runners.direct import transform_evaluator
    from apache_beam.transforms import userstate

    original = userstate.get_dofn_specs
    if getattr(original, "_streamscore_memo", False):
        return True
    memo: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # class -> {shadowing names: specs}

    def get_dofn_specs(dofn):
        key = dofn_specs_key(dofn)
        if key is None:
            return original(dofn)
        cls, names = key
        per_class = memo.get(cls)
        if per_class is None:
            per_class = memo[cls] = {}
        specs = per_class.get(names)
        if specs is None:
            state, timers = original(dofn)  # raises for an invalid DoFn, every time: never cached
            specs = per_class[names] = (frozenset(state), frozenset(timers))
        return set(specs[0]), set(specs[1])  # callers get their own sets, as from the original

    get_dofn_specs._streamscore_memo = True
    get_dofn_specs.__wrapped__ = original
    userstate.get_dofn_specs = get_dofn_specs  # is_stateful_dofn and validate_stateful_dofn call it
    transform_evaluator.get_dofn_specs = get_dofn_specs  # imported by name there
    return True


# --------------------------------------------------------------------------- 2. timer scans


def _skip_timerless_scans():
    from apache_beam.pipeline import AppliedPTransform
    from apache_beam.runners.direct import watermark_manager
    from apache_beam.transforms import core, userstate

    from apache_beam.runners.direct.util import TimerFiring
    from apache_beam.transforms.timeutil import TimeDomain

    REAL_TIME, WATERMARK = TimeDomain.REAL_TIME, TimeDomain.WATERMARK
    from apache_beam.transforms.trigger import InMemoryUnmergedState

    cls = watermark_manager._TransformWatermarks
    if getattr(cls, "_streamscore_patched", False):
        return True
    original_init = cls.__init__
    if "self.timers = " not in inspect.getsource(InMemoryUnmergedState.__init__):
        raise AttributeError("InMemoryUnmergedState keeps no `timers` dict")
    if "state.get_timers(" not in inspect.getsource(cls.extract_transform_timers):
        raise AttributeError("_TransformWatermarks.extract_transform_timers changed")
    if "for (name, time_domain, dynamic_timer_tag), timestamp in" not in inspect.getsource(
            InMemoryUnmergedState.get_timers):
        raise AttributeError("InMemoryUnmergedState.get_timers changed")

    def __init__(self, clock, keyed_states, transform):
        original_init(self, clock, keyed_states, transform)
        inner = transform.transform if isinstance(transform, AppliedPTransform) else None
        # Exactly a ParDo: subclasses run other evaluators that rely on the scan without declaring
        # timers in their DoFn — the direct runner's _GroupAlsoByWindow (a windowed GroupByKey's
        # triggers and end-of-window firings are timers of its evaluator) failed or stalled when skipped.
        self._streamscore_no_timers = (type(inner) is core.ParDo
                                       and not userstate.get_dofn_specs(inner.dofn)[1])

    def extract_transform_timers(self):
        if self._streamscore_no_timers:
            return [], False
        # Beam's loop, without its call per key that holds no timer at all (get_timers of an empty
        # dict answers ([], False)): a stage with a timer per few keys (the terminal stage's label
        # deadlines) is walked at the cost of a truth test per key.
        # get_timers(clear=False) is inlined: no call and no list copies per key.
        with self._lock:
            fired_timers = []
            has_realtime_timer = False
            watermark, now = self._input_watermark, None
            for encoded_key, state in self._keyed_states.items():
                timers = state.timers
                if not timers:
                    continue
                for window, per_window in timers.items():
                    for (name, time_domain, dynamic_timer_tag), timestamp in per_window.items():
                        if time_domain == REAL_TIME:
                            has_realtime_timer = True
                            if now is None:
                                now = self._clock.time()
                            marker = now
                        elif time_domain == WATERMARK:
                            marker = watermark
                        else:
                            continue  # Beam logs an error and compares with a stale marker; never set here
                        if timestamp <= marker:
                            fired_timers.append(TimerFiring(encoded_key, window, name, time_domain, timestamp,
                                                            dynamic_timer_tag=dynamic_timer_tag))
            self._fired_timers.update(fired_timers)
            return fired_timers, has_realtime_timer

    cls._streamscore_original_extract = cls.extract_transform_timers  # for the tests' comparison
    cls.__init__ = __init__
    cls.extract_transform_timers = extract_transform_timers
    cls._streamscore_patched = True
    return True


# --------------------------------------------------------------------------- 3. Pub/Sub pulls

_PULL: dict[str, float] = {}
_LAST_DATA = [0.0]  # monotonic time a patched reader last got messages
#: Subscriptions / topics this process used successfully: if one then disappears or its server is
#: unreachable (the emulator restarted, its in-memory subscriptions not recreated yet), the reader
#: waits and the writer retries instead of failing the bundle four times in a few milliseconds,
#: which killed the pipeline. One never used successfully still fails at once (a typo, a missing topic).
_SEEN_SUBSCRIPTIONS: set[str] = set()
_SEEN_TOPICS: set[str] = set()
_GONE_SLEEP = 0.5
#: How long a write keeps retrying a topic that existed before (then the bundle fails as Beam's would).
WRITE_RETRY_SECONDS = 120.0
_LAST_WARNED: dict[str, float] = {}


def _warn_gone(kind: str, path: str, exc: Exception) -> None:
    now = time.monotonic()
    if now - _LAST_WARNED.get(path, -1e9) >= 10.0:
        _LAST_WARNED[path] = now
        log.warning("Pub/Sub %s %s is gone or unreachable (%s: %s); waiting for it to come back",
                    kind, path, type(exc).__name__, str(exc)[:200])


def _patch_pull():
    from apache_beam.runners.direct import transform_evaluator as te
    from google.api_core import exceptions
    from google.pubsub_v1.types import PullResponse

    evaluator = te._PubSubReadEvaluator
    if getattr(evaluator, "_streamscore_patched", False):
        return True
    original = evaluator._read_from_pubsub
    evaluator._get_subscriber_client  # noqa: B018 - raises AttributeError if Beam changed

    def _read_from_pubsub(self, timestamp_attribute):
        client = self._get_subscriber_client(self._applied_ptransform)
        real_pull = client.pull

        def pull(*, subscription, max_messages, timeout):  # Beam passes 10 and 30
            try:
                with warnings.catch_warnings():  # return_immediately is deprecated for real Pub/Sub
                    warnings.simplefilter("ignore", DeprecationWarning)
                    response = real_pull(subscription=subscription, max_messages=int(_PULL["size"]),
                                         return_immediately=True, timeout=_PULL["deadline"])
            except exceptions.DeadlineExceeded:
                response = PullResponse()
            except (exceptions.NotFound, exceptions.ServiceUnavailable) as exc:
                if subscription not in _SEEN_SUBSCRIPTIONS:  # never existed: a configuration error, fail fast
                    raise
                _warn_gone("subscription", subscription, exc)  # it existed: wait for it, as Dataflow's reader does
                time.sleep(_GONE_SLEEP)
                response = PullResponse()
            else:
                _SEEN_SUBSCRIPTIONS.add(subscription)
            now = time.monotonic()
            if response.received_messages:
                _LAST_DATA[0] = now
            elif now - _LAST_DATA[0] > _PULL["idle_after"]:
                time.sleep(_PULL["idle_sleep"])
            return response

        client.pull = pull  # this evaluator's call only: the worker thread runs one task at a time
        try:
            return original(self, timestamp_attribute)
        finally:
            del client.pull

    evaluator._read_from_pubsub = _read_from_pubsub
    evaluator._streamscore_patched = True
    return True


# --------------------------------------------------------------------------- 4. publisher clients

_PUBLISHERS: dict[bool, object] = {}


def publisher_client(ordering: bool):
    """The process-wide ``PublisherClient`` (with message ordering or not), created once."""
    with _LOCK_PUBLISHERS:
        client = _PUBLISHERS.get(ordering)
        if client is None:
            from google.cloud import pubsub

            options = pubsub.types.PublisherOptions(enable_message_ordering=True) if ordering else None
            client = pubsub.PublisherClient(publisher_options=options) if options else pubsub.PublisherClient()
            _PUBLISHERS[ordering] = client
        return client


_LOCK_PUBLISHERS = threading.Lock()


def _cache_publishers():
    from apache_beam.io.gcp import pubsub as beam_pubsub

    fn = beam_pubsub._PubSubWriteDoFn
    if getattr(fn, "_streamscore_patched", False):
        return True
    original_setup = fn.setup
    if not callable(original_setup) or not hasattr(fn, "_flush"):
        raise AttributeError("_PubSubWriteDoFn has no setup/_flush")

    def setup(self):
        self._pub_client = publisher_client(bool(self.with_ordering))
        self._topic = self._pub_client.topic_path(self.project, self.short_topic_name)

    from google.api_core import exceptions

    original_flush = fn._flush

    def _flush(self):
        deadline = time.monotonic() + WRITE_RETRY_SECONDS
        while True:
            try:
                original_flush(self)  # keeps its buffer when it raises: a retry republishes all of it
            except (exceptions.NotFound, exceptions.ServiceUnavailable) as exc:
                if self._topic not in _SEEN_TOPICS or time.monotonic() > deadline:
                    raise
                _warn_gone("topic", self._topic, exc)
                time.sleep(_GONE_SLEEP)
                continue
            _SEEN_TOPICS.add(self._topic)
            return

    fn.setup = setup
    fn._flush = _flush
    fn._streamscore_patched = True
    return True
