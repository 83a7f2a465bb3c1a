"""The local-runner tuning changes the runner's cost, never what a pipeline computes."""

from __future__ import annotations

import time
import types

import apache_beam as beam
import pytest
from apache_beam.coders import VarIntCoder
from apache_beam.transforms import userstate
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer

from streaming.runner import local as local_runner
from streaming.runner import local_bundles
from streaming.runner.testing import replay
from streaming.features.spec import DEFAULT_SPEC
from streaming.features.stream import CustomerStateFn, TerminalFeaturesFn, TerminalStateFn
from streaming.job.learning import LearnerFn
from streaming.job.scoring import ScoreFn


class _Outputs(beam.PTransform):
    """``transforms`` (name -> a function of the input PCollection) as the dict of outputs ``replay`` collects."""

    def __init__(self, **transforms):
        super().__init__()
        self.transforms = transforms

    def expand(self, pcoll):
        return {name: make(pcoll) for name, make in self.transforms.items()}


def _at(element) -> float:
    """Test elements are ``(key, t)`` pairs or plain numbers ``t``: their event time in seconds."""
    return float(element[1] if isinstance(element, tuple) else element)


def _run_pardo(batches, dofn) -> list:
    return sorted(replay(batches, _Outputs(main=lambda p: p | beam.ParDo(dofn)), _at)["main"])


@pytest.fixture(scope="module", autouse=True)
def tuned():
    return local_runner.install()


class TimerFn(beam.DoFn):
    """Counts per key; an event-time timer at 100 s emits the count."""

    COUNT = ReadModifyWriteStateSpec("count", VarIntCoder())
    FLUSH = TimerSpec("flush", TimeDomain.WATERMARK)

    def process(self, element, count=beam.DoFn.StateParam(COUNT), flush=beam.DoFn.TimerParam(FLUSH)):
        count.write((count.read() or 0) + 1)
        flush.set(100)

    @on_timer(FLUSH)
    def on_flush(self, key=beam.DoFn.KeyParam, count=beam.DoFn.StateParam(COUNT)):
        yield key, count.read()


class HoldsBoundMethodFn(beam.DoFn):
    def __init__(self):
        self.callback = self.process  # a bound method in the instance: never memoised

    def process(self, element):
        yield element


def _original_specs(dofn):
    """What Beam's own get_dofn_specs answers (the memo wraps it)."""
    return userstate.get_dofn_specs.__wrapped__(dofn)


def test_install_reports_every_patch(tuned):
    assert tuned == local_runner.LocalRunnerTuning(True, True, 100, 30.0, True, True, True, True, True, True, True)
    assert local_runner.install(50, 0.5).pull_size == 50  # idempotent; pull settings may change
    local_runner.install()
    with pytest.raises(ValueError, match="pull_size must be >= 1"):
        local_runner.install(0)
    with pytest.raises(ValueError, match="pull_deadline must be > 0"):
        local_runner.install(10, 0)


@pytest.mark.parametrize("make", [
    lambda: CustomerStateFn(DEFAULT_SPEC), lambda: TerminalStateFn(DEFAULT_SPEC, keep_examples_days=8.0),
    lambda: TerminalFeaturesFn(DEFAULT_SPEC),
    lambda: ScoreFn("localhost:1", DEFAULT_SPEC), lambda: LearnerFn("/tmp/r", DEFAULT_SPEC, None), TimerFn,
    HoldsBoundMethodFn, lambda: beam.Map(lambda x: x).dofn, lambda: beam.ParDo(TimerFn()).dofn,
], ids=["customer", "terminal", "terminal-features", "score", "learner", "timer", "bound-method", "map", "pardo-timer"])
def test_memoised_specs_equal_beams_answer(make):
    first, second = make(), make()
    expected = _original_specs(first)
    assert userstate.get_dofn_specs(first) == expected
    assert userstate.get_dofn_specs(second) == expected  # from the memo for memoisable classes
    got = userstate.get_dofn_specs(second)
    got[0].add("mutated")  # callers get their own sets
    assert userstate.get_dofn_specs(second) == expected


def test_memo_key_is_the_class_and_the_shadowed_names():
    assert local_runner.dofn_specs_key(TimerFn()) == (TimerFn, ())
    assert local_runner.dofn_specs_key(HoldsBoundMethodFn()) is None
    wrapped = beam.Map(len).dofn  # beam.Map's wrapper shadows `process` with the plain callable
    cls, names = local_runner.dofn_specs_key(wrapped)
    assert "process" in names and cls is type(wrapped)
    shadowing = TimerFn()
    shadowing.process = types.SimpleNamespace  # a callable, not a bound method: skipped by Beam too
    assert local_runner.dofn_specs_key(shadowing) == (TimerFn, ("process",))
    assert userstate.get_dofn_specs(shadowing) == _original_specs(shadowing)


def test_invalid_dofn_still_raises_every_time():
    class Twice(beam.DoFn):
        STATE = ReadModifyWriteStateSpec("s", VarIntCoder())

        def process(self, element, a=beam.DoFn.StateParam(STATE), b=beam.DoFn.StateParam(STATE)):
            yield element

    for _ in range(2):
        with pytest.raises(ValueError, match="duplicate"):
            userstate.get_dofn_specs(Twice())


def test_timers_still_fire_on_the_tuned_runner():
    """The timer scan is skipped only for DoFns without timers: a DoFn with one still fires."""
    assert _run_pardo([[("a", 1), ("b", 2), ("a", 3)], [("a", 60)]], TimerFn()) == [("a", 3), ("b", 1)]


def test_a_windowed_group_by_key_still_fires_on_the_tuned_runner():
    """Regression: Beam's _GroupAlsoByWindow is a ParDo subclass whose DoFn declares no timers, but
    its evaluator fires the windows by timers; skipping its scan failed the pipeline."""
    from apache_beam.transforms import window

    grouped = replay([[("a", 1), ("b", 2), ("a", 3)], [("a", 15)], [("b", 27)]], _Outputs(
        main=lambda p: p | beam.WindowInto(window.FixedWindows(10)) | beam.GroupByKey()
        | beam.MapTuple(lambda k, vs: (k, tuple(sorted(vs))))), _at)["main"]
    assert sorted(grouped) == [("a", (1, 3)), ("a", (15,)), ("b", (2,)), ("b", (27,))]


def test_only_plain_pardos_without_timers_skip_the_scan():
    from apache_beam.runners.direct import watermark_manager
    from apache_beam.runners.direct.direct_runner import _GroupAlsoByWindow

    from apache_beam.pipeline import AppliedPTransform
    from apache_beam.transforms.core import Windowing
    from apache_beam.transforms.window import GlobalWindows

    def skips(transform) -> bool:
        applied = AppliedPTransform(None, transform, "t", {}, None, None)
        return watermark_manager._TransformWatermarks(None, {}, applied)._streamscore_no_timers

    assert skips(beam.ParDo(HoldsBoundMethodFn()))
    assert not skips(beam.ParDo(TimerFn()))
    assert not skips(_GroupAlsoByWindow(Windowing(GlobalWindows())))


def test_the_inlined_timer_scan_equals_beams():
    from apache_beam.pipeline import AppliedPTransform
    from apache_beam.runners.direct import watermark_manager
    from apache_beam.transforms.trigger import InMemoryUnmergedState
    from apache_beam.utils.timestamp import Timestamp

    class Clock:
        def time(self):
            return Timestamp(50)

    def scan(extract):
        applied = AppliedPTransform(None, beam.ParDo(TimerFn()), "t", {}, None, None)
        marks = watermark_manager._TransformWatermarks(Clock(), {}, applied)
        states = {}
        for key, timers in [("none", []), ("due", [("w1", "a", TimeDomain.WATERMARK, 10)]),
                            ("later", [("w1", "a", TimeDomain.WATERMARK, 1000)]),
                            ("rt-due", [("w2", "b", TimeDomain.REAL_TIME, 40)]),
                            ("rt-later", [("w2", "b", TimeDomain.REAL_TIME, 60)]),
                            ("mixed", [("w1", "a", TimeDomain.WATERMARK, 20), ("w2", "a", TimeDomain.WATERMARK, 21),
                                       ("w2", "c", TimeDomain.WATERMARK, 5000)])]:
            state = states[key] = InMemoryUnmergedState()
            for window, name, domain, at in timers:
                state.set_timer(window, name, domain, Timestamp(at))
        marks._keyed_states = states
        marks._input_watermark = Timestamp(30)
        fired, realtime = extract(marks)
        return sorted((f.encoded_key, f.window, f.name, f.time_domain, f.timestamp) for f in fired), realtime

    cls = watermark_manager._TransformWatermarks
    assert scan(cls.extract_transform_timers) == scan(cls._streamscore_original_extract)
    fired, realtime = scan(cls.extract_transform_timers)
    assert realtime and [f[0] for f in fired] == ["due", "mixed", "mixed", "rt-due"]


class _FakeSubscriber:
    def __init__(self, responses):
        self.calls, self.responses = [], list(responses)

    def pull(self, *, subscription, max_messages, timeout, return_immediately=False):
        self.calls.append((max_messages, timeout, return_immediately))
        response = self.responses.pop(0)
        if isinstance(response, Exception):
            raise response
        return response


def test_pull_asks_for_the_tuned_size_and_deadline_and_treats_a_timeout_as_empty(monkeypatch):
    from apache_beam.runners.direct import transform_evaluator as te
    from google.api_core import exceptions
    from google.pubsub_v1.types import PullResponse, ReceivedMessage

    local_runner.install(7, 0.25, idle_sleep=0.0)
    try:
        message = ReceivedMessage(ack_id="a1")
        message.message.data = b"x"
        message.message.publish_time = "2018-04-01T00:00:00Z"
        fake = _FakeSubscriber([PullResponse(received_messages=[message]), exceptions.DeadlineExceeded("idle")])
        acked = []
        fake.acknowledge = lambda *, subscription, ack_ids: acked.extend(ack_ids)
        monkeypatch.setattr(te._PubSubReadEvaluator, "_get_subscriber_client", classmethod(lambda cls, t: fake))
        evaluator = te._PubSubReadEvaluator.__new__(te._PubSubReadEvaluator)
        evaluator._applied_ptransform, evaluator._sub_name = object(), "projects/p/subscriptions/s"
        first = evaluator._read_from_pubsub(None)
        second = evaluator._read_from_pubsub(None)
    finally:
        local_runner.install()
    assert fake.calls == [(7, 0.25, True), (7, 0.25, True)]  # Beam asks for 10 with 30 s, waiting when empty
    assert [m.data for _, m in first] == [b"x"] and second == [] and acked == ["a1"]
    assert not hasattr(fake, "pull") or isinstance(fake.pull, types.MethodType)  # the wrapper was removed


def test_an_idle_pull_sleeps_so_an_idle_job_does_not_spin(monkeypatch):
    from apache_beam.runners.direct import transform_evaluator as te
    from google.pubsub_v1.types import PullResponse

    local_runner.install(10, 0.1, idle_sleep=0.2, idle_after=0.0)
    try:
        fake = _FakeSubscriber([PullResponse()])
        monkeypatch.setattr(te._PubSubReadEvaluator, "_get_subscriber_client", classmethod(lambda cls, t: fake))
        evaluator = te._PubSubReadEvaluator.__new__(te._PubSubReadEvaluator)
        evaluator._applied_ptransform, evaluator._sub_name = object(), "s"
        started = time.monotonic()
        assert evaluator._read_from_pubsub(None) == []
        slept = time.monotonic() - started
    finally:
        local_runner.install()
    assert slept >= 0.2  # a lower bound on a sleep, not a speed threshold


def test_a_subscription_that_existed_and_vanishes_is_waited_for_one_never_seen_fails(monkeypatch):
    from apache_beam.runners.direct import transform_evaluator as te
    from google.api_core import exceptions
    from google.pubsub_v1.types import PullResponse

    local_runner.install(5, 0.25, idle_sleep=0.0)
    monkeypatch.setattr(local_runner, "_GONE_SLEEP", 0.0)
    try:
        fake = _FakeSubscriber([PullResponse(), exceptions.NotFound("Subscription does not exist"),
                                exceptions.ServiceUnavailable("down"), exceptions.NotFound("Subscription does not exist")])
        fake.acknowledge = lambda *, subscription, ack_ids: None
        monkeypatch.setattr(te._PubSubReadEvaluator, "_get_subscriber_client", classmethod(lambda cls, t: fake))
        evaluator = te._PubSubReadEvaluator.__new__(te._PubSubReadEvaluator)
        evaluator._applied_ptransform, evaluator._sub_name = object(), "projects/p/subscriptions/seen-then-gone"
        assert evaluator._read_from_pubsub(None) == []  # pulled once: it exists
        assert evaluator._read_from_pubsub(None) == []  # gone (the emulator restarted): an empty pull
        assert evaluator._read_from_pubsub(None) == []  # unreachable: the same
        evaluator._sub_name = "projects/p/subscriptions/never-seen"
        with pytest.raises(exceptions.NotFound):  # a subscription that never existed still fails at once
            evaluator._read_from_pubsub(None)
    finally:
        local_runner.install()


def test_a_write_to_a_topic_that_existed_is_retried_while_it_is_gone(monkeypatch):
    from apache_beam.io.gcp.pubsub import WriteToPubSub, _PubSubWriteDoFn
    from google.api_core import exceptions

    monkeypatch.setattr(local_runner, "_GONE_SLEEP", 0.0)
    outcomes = []

    class Future:
        def __init__(self, error):
            self.error = error

        def result(self, timeout=None):
            if self.error:
                raise self.error

    class Client:
        def __init__(self, errors):
            self.errors, self.published = list(errors), []

        def publish(self, topic, data, **attrs):
            self.published.append(data)
            return Future(self.errors.pop(0) if self.errors else None)

    def flush(topic, errors):
        fn = _PubSubWriteDoFn(WriteToPubSub(topic))
        fn._pub_client, fn._topic = Client(errors), topic
        from apache_beam.io.gcp.pubsub import PubsubMessage

        fn._buffer = [PubsubMessage(b"m", {})._to_proto_str(for_publish=True)]
        try:
            fn._flush()
            outcomes.append(("ok", len(fn._pub_client.published)))
        except exceptions.NotFound:
            outcomes.append(("failed", len(fn._pub_client.published)))

    flush("projects/local-project/topics/seen", [])  # written once: it exists
    flush("projects/local-project/topics/seen", [exceptions.NotFound("gone"), exceptions.ServiceUnavailable("down")])
    flush("projects/local-project/topics/never-seen", [exceptions.NotFound("no such topic")])
    assert outcomes == [("ok", 1), ("ok", 3), ("failed", 1)]  # retried (the message published again), or not


def test_writers_share_one_publisher_client_per_ordering_mode(monkeypatch):
    from apache_beam.io.gcp.pubsub import WriteToPubSub, _PubSubWriteDoFn

    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:1")
    fns = [_PubSubWriteDoFn(WriteToPubSub("projects/local-project/topics/t")) for _ in range(2)]
    for fn in fns:
        fn.setup()
    assert fns[0]._pub_client is fns[1]._pub_client is local_runner.publisher_client(False)
    assert fns[0]._topic == "projects/local-project/topics/t"
    assert local_runner.publisher_client(True) is not local_runner.publisher_client(False)


def test_each_bundle_gets_a_fresh_copy_of_the_dofn_pickled_once():
    from apache_beam.runners.direct import transform_evaluator

    fn = CustomerStateFn(DEFAULT_SPEC)
    first, second = (transform_evaluator.pickler.roundtrip(fn) for _ in range(2))
    assert first is not second and first is not fn and type(first) is CustomerStateFn
    assert vars(first).keys() == vars(fn).keys() and first.spec == fn.spec
    first.spec = None  # a bundle's copy is its own: the next bundle's is untouched
    assert transform_evaluator.pickler.roundtrip(fn).spec == DEFAULT_SPEC


def test_memoised_function_arguments_equal_inspects_answer():
    from apache_beam.transforms import core

    def plain(a, b=2, *, c=3):
        return a

    original = core.get_function_args_defaults.__wrapped__
    fn = TimerFn()
    for f in (fn.process, fn.on_flush, plain, TimerFn().process, len, beam.Map(len).dofn.process):
        assert core.get_function_args_defaults(f) == original(f)
        assert core.get_function_args_defaults(f) == original(f)  # the memoised answer
    args, defaults = core.get_function_args_defaults(fn.process)
    args.append("mutated")
    assert core.get_function_args_defaults(fn.process) == original(fn.process)  # callers get their own lists
    assert local_bundles.function_args_key(fn.process) == ("method", TimerFn.process)
    assert local_bundles.function_args_key(len) is None


def test_state_copies_are_independent_and_equal_to_beams():
    from apache_beam.transforms import trigger
    from apache_beam.transforms.timeutil import TimeDomain as Domain

    state = trigger.InMemoryUnmergedState()
    tag = trigger._ReadModifyWriteStateTag("s")
    state.add_state("w", tag, [b"v1"])
    fast = state.copy()
    assert fast.state == state.state and fast.timers == {} and fast.global_state == {}
    fast.add_state("w", tag, [b"v2"])
    assert state.get_state("w", tag) == [b"v1"]  # the copy is independent
    state.set_timer("w", "t", Domain.WATERMARK, 5)
    slow = state.copy()  # with timers: Beam's own copy, deep
    assert slow.timers == state.timers and slow.timers is not state.timers


def _committed_bundle(timestamps, commit=True):
    from apache_beam.runners.direct.bundle_factory import BundleFactory
    from apache_beam.transforms.window import GlobalWindows

    bundle = BundleFactory(stacked=True).create_bundle(beam.pvalue.PBegin(beam.Pipeline()))
    for i, t in enumerate(timestamps):
        bundle.add(GlobalWindows.windowed_value(i, timestamp=t))
    if commit:
        bundle.commit(None)
    return bundle


def test_pending_minimum_is_the_minimum_and_memoised_only_once_committed():
    from apache_beam.runners.direct.watermark_manager import WatermarkManager
    from apache_beam.utils.timestamp import Timestamp

    bundle = _committed_bundle([5, 3, 3, 9])
    assert local_bundles.bundle_minimum(bundle) == (True, Timestamp(3))
    assert bundle._streamscore_minimum == (True, Timestamp(3))
    assert local_bundles.bundle_minimum(_committed_bundle([])) == (False, WatermarkManager.WATERMARK_POS_INF)
    open_bundle = _committed_bundle([7], commit=False)
    assert local_bundles.bundle_minimum(open_bundle) == (True, Timestamp(7))
    open_bundle.add(beam.transforms.window.GlobalWindows.windowed_value(0, timestamp=1))
    assert local_bundles.bundle_minimum(open_bundle) == (True, Timestamp(1))  # not memoised while it can change


@pytest.mark.parametrize("pending", [[], [[4, 2]], [[4, 2], [8], []]], ids=["none", "one", "several"])
def test_watermark_refresh_equals_beams(pending):
    from apache_beam.runners.direct.clock import RealClock
    from apache_beam.runners.direct.watermark_manager import _TransformWatermarks

    results = []
    for refresh in (_TransformWatermarks.refresh, _TransformWatermarks.refresh.__wrapped__):
        upstream = _TransformWatermarks(RealClock(), {}, "upstream")
        upstream._output_watermark = beam.utils.timestamp.Timestamp(6)
        tw = _TransformWatermarks(RealClock(), {}, "t")
        tw.update_input_transform_watermarks([upstream])
        for timestamps in pending:
            tw.add_pending(_committed_bundle(timestamps))
        tw.hold({"k": beam.utils.timestamp.Timestamp(5)})
        results.append((refresh(tw), tw._input_watermark, tw._output_watermark, refresh(tw)))
    assert results[0] == results[1]


class ListStateFn(beam.DoFn):
    """Keeps a list per key in state (a mutable value) and emits the list so far."""

    SEEN = ReadModifyWriteStateSpec("seen", beam.coders.PickleCoder())

    def process(self, element, seen=beam.DoFn.StateParam(SEEN)):
        key, value = element
        values = seen.read() or []
        values.append(value)
        seen.write(values)
        yield key, tuple(values)


def test_state_values_are_kept_decoded_and_results_are_unchanged():
    assert _run_pardo([[("a", 1), ("b", 2), ("a", 3)], [("a", 4), ("b", 5)]], ListStateFn()) == [
        ("a", (1,)), ("a", (1, 3)), ("a", (1, 3, 4)), ("b", (2,)), ("b", (2, 5))]


def test_decoded_state_returns_the_written_object_and_still_checks_the_coder():
    from apache_beam.runners.direct import direct_userstate

    def runtime(spec, stored):
        return direct_userstate.ReadModifyWriteRuntimeState(spec, None, lambda: stored)

    spec = ReadModifyWriteStateSpec("fresh", beam.coders.PickleCoder())
    state = runtime(spec, [])
    assert state.read() is None
    value = {"n": [1]}
    state.write(value)
    assert state.read() is value and state.is_modified()
    assert type(state._value[0]) is local_bundles.DecodedValue  # what commit stores: no encoding per element
    encoded = runtime(spec, [beam.coders.PickleCoder().encode({"n": [2]})])  # stored by an untuned runner
    assert encoded.read() == {"n": [2]}
    bad = runtime(ReadModifyWriteStateSpec("ints", VarIntCoder()), [])
    with pytest.raises(TypeError):  # the first value written per spec still goes through its coder
        bad.write("not an int")


def test_empty_bundles_are_not_scheduled():
    from apache_beam.runners.direct import executor

    scheduled = []
    fake = types.SimpleNamespace(value_to_consumers=None, default_completion_callback=None,
                                 schedule_consumption=lambda t, bundle, timers, cb: scheduled.append((t, bundle)))
    full, empty = _committed_bundle([1]), _committed_bundle([])
    fake.value_to_consumers = {full.pcollection: ["consumer"]}
    executor._ExecutorServiceParallelExecutor.schedule_consumers(fake, empty)
    assert scheduled == []  # Beam's own watermark manager never makes an empty bundle pending either
    executor._ExecutorServiceParallelExecutor.schedule_consumers(fake, full)
    assert scheduled == [("consumer", full)]


class _SplitDead(beam.PTransform):
    """2 goes to a ``dead`` branch (empty in most bundles) that also sees the main output."""

    def expand(self, pcoll):
        split = pcoll | beam.Map(lambda x: beam.pvalue.TaggedOutput("dead", x) if x == 2 else x).with_outputs(
            "dead", main="main")
        return {"main": split.main | "Double" >> beam.Map(lambda x: 2 * x),
                "dead": (split.dead, split.main) | beam.Flatten() | "Keep" >> beam.Map(lambda x: -x)}


def test_outputs_flow_when_a_branch_is_empty_in_most_bundles():
    out = replay([[1, 2], [3]], _SplitDead(), _at)
    assert sorted(out["main"]) == [2, 6] and sorted(out["dead"]) == [-3, -2, -1]


def test_processed_empty_bundles_leave_the_pending_set():
    """Beam adds each read's empty 'unprocessed' bundle to the reader's pending set and never removed it."""
    from apache_beam.runners.direct.clock import RealClock
    from apache_beam.runners.direct.watermark_manager import WatermarkManager

    from apache_beam.runners.direct.watermark_manager import _TransformWatermarks

    root = "reader"  # stands in for the AppliedPTransform (only used as a key here)
    manager = WatermarkManager.__new__(WatermarkManager)
    tw = _TransformWatermarks(RealClock(), {}, root)
    manager._transform_to_watermarks, manager._root_transforms, manager._value_to_consumers = {root: tw}, {root}, {}
    previous = None
    for _ in range(5):  # five pulls: each processes the last unprocessed bundle and leaves a new one
        unprocessed = _committed_bundle([])
        manager._update_pending(previous, root, [], [], [unprocessed])
        previous = unprocessed
    assert tw._pending == {previous}
    kept = _committed_bundle([3])  # a bundle with elements is removed as before, only once processed
    manager._update_pending(previous, root, [], [], [kept])
    assert tw._pending == {kept}


class FailOnceFn(beam.DoFn):
    """Counts per key in a mutable state value; the first attempt at element ``fail_at`` raises."""

    SEEN = ReadModifyWriteStateSpec("seen", beam.coders.PickleCoder())
    failures = []

    def __init__(self, fail_at, before_state):
        self.fail_at, self.before_state = fail_at, before_state

    def process(self, element, seen=beam.DoFn.StateParam(SEEN)):
        key, value = element
        if self.before_state and value == self.fail_at and not FailOnceFn.failures:
            FailOnceFn.failures.append(value)
            raise RuntimeError("transient")
        counts = seen.read() or {"n": 0}
        counts["n"] += 1  # in place: the committed object itself, with decoded state
        if not self.before_state and value == self.fail_at and not FailOnceFn.failures:
            FailOnceFn.failures.append(value)
            raise RuntimeError("transient")
        seen.write(counts)
        yield key, counts["n"]


def _run_fail_once(fail_at, before_state):
    FailOnceFn.failures.clear()
    return _run_pardo([[("a", 1)], [("a", 2)]], FailOnceFn(fail_at, before_state))


def test_a_bundle_failing_before_it_touched_committed_state_is_retried():
    assert _run_fail_once(2, before_state=True) == [("a", 1), ("a", 2)]
    assert FailOnceFn.failures == [2]


def test_a_bundle_failing_after_changing_committed_state_in_place_fails_the_pipeline():
    """Retrying it would count element 2 twice ("a", 3): it fails with its error instead."""
    with pytest.raises(Exception, match="transient"):
        _run_fail_once(2, before_state=False)
