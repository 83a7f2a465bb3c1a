"""The local-runner tuning changes the runner's cost, never what a pipeline computes."""

from __future__ import annotations

import time
import types

import apache_beam as beam
import pytest
from apache_beam.coders import VarIntCoder
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream as BeamTestStream
from apache_beam.transforms import userstate
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import TimestampedValue

from streaming import local_runner
from streaming.beam_testing import Collect
from streaming.features.spec import DEFAULT_SPEC
from streaming.features.stream import CustomerStateFn, TerminalStateFn
from streaming.learning import LearnerFn
from streaming.scoring import ScoreFn


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
    assert tuned == local_runner.LocalRunnerTuning(True, True, 100, 30.0, True, True, True)
    assert local_runner.install(50, 0.5).pull_size == 50  # idempotent; pull settings may change
    local_runner.install()
    with pytest.raises(ValueError, match="pull_size must be >= 1"):
        local_runner.install(0)
    with pytest.raises(ValueError, match="pull_deadline must be > 0"):
        local_runner.install(10, 0)


@pytest.mark.parametrize("make", [
    lambda: CustomerStateFn(DEFAULT_SPEC), lambda: TerminalStateFn(DEFAULT_SPEC, keep_examples_days=8.0),
    lambda: ScoreFn("localhost:1", DEFAULT_SPEC), lambda: LearnerFn("/tmp/r", DEFAULT_SPEC, None), TimerFn,
    HoldsBoundMethodFn, lambda: beam.Map(lambda x: x).dofn, lambda: beam.ParDo(TimerFn()).dofn,
], ids=["customer", "terminal", "score", "learner", "timer", "bound-method", "map", "pardo-timer"])
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
    stream = (BeamTestStream()
              .add_elements([TimestampedValue(("a", 1), 1), TimestampedValue(("b", 1), 2), TimestampedValue(("a", 1), 3)])
              .advance_watermark_to(50)
              .add_elements([TimestampedValue(("a", 1), 60)])
              .advance_watermark_to_infinity())
    options = PipelineOptions(runner="BundleBasedDirectRunner")
    options.view_as(StandardOptions).streaming = True
    out = Collect("CollectTimers")
    with beam.Pipeline(options=options) as p:
        _ = p | stream | beam.ParDo(TimerFn()) | out
    assert sorted(out.results()) == [("a", 3), ("b", 1)]


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
    assert local_runner.function_args_key(fn.process) == ("method", TimerFn.process)
    assert local_runner.function_args_key(len) is None


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
