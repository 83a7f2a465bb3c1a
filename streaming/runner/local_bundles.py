"""The local runner's bundle-level patches (5-10 of :mod:`streaming.runner.local`, which explains each
and installs them): per-bundle DoFn set-up, state copies, pending minimum, decoded state values,
empty bundles, and the pending-bundle leak."""

from __future__ import annotations

import copy as copy_module
import logging
import threading
import types
import weakref

log = logging.getLogger("streaming.runner.local")


# --------------------------------------------------------------------------- 5. bundle set-up


class _PicklerOncePerDoFn:
    """Stands in for ``pickler`` in the ParDo evaluator: ``roundtrip`` pickles each DoFn once."""

    def __init__(self, pickler):
        self._pickler = pickler
        self._pickled: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def roundtrip(self, obj):
        try:
            data = self._pickled.get(obj)
        except TypeError:  # not weak-referenceable: as Beam does it
            return self._pickler.roundtrip(obj)
        if data is None:
            data = self._pickled[obj] = self._pickler.dumps(obj)
        return self._pickler.loads(data)  # a fresh copy for every bundle, as before

    def __getattr__(self, name):
        return getattr(self._pickler, name)


def function_args_key(f):
    """The function whose signature ``get_function_args_defaults(f)`` reads, or None (no memo).

    A plain Python function is its own key; a bound method's answer (its ``self`` left out)
    depends only on its function. Anything else (partials, builtins, callables) is not memoised.
    """
    if isinstance(f, types.MethodType) and isinstance(f.__func__, types.FunctionType):
        return ("method", f.__func__)
    if isinstance(f, types.FunctionType):
        return ("function", f)
    return None


def cheap_bundle_setup():
    from apache_beam.runners.direct import transform_evaluator
    from apache_beam.transforms import core

    if not isinstance(transform_evaluator.pickler, _PicklerOncePerDoFn):
        transform_evaluator.pickler.roundtrip  # noqa: B018 - raises AttributeError if Beam changed
        transform_evaluator.pickler = _PicklerOncePerDoFn(transform_evaluator.pickler)
    original = core.get_function_args_defaults
    if getattr(original, "_streamscore_memo", False):
        return True
    memo = {"method": weakref.WeakKeyDictionary(), "function": weakref.WeakKeyDictionary()}

    def get_function_args_defaults(f):
        key = function_args_key(f)
        if key is None:
            return original(f)
        kind, fn = key
        cached = memo[kind].get(fn)
        if cached is None:
            args, defaults = original(f)
            cached = memo[kind][fn] = (tuple(args), tuple(defaults))
        return list(cached[0]), list(cached[1])  # callers get their own lists, as from the original

    get_function_args_defaults._streamscore_memo = True
    get_function_args_defaults.__wrapped__ = original
    core.get_function_args_defaults = get_function_args_defaults  # get_function_arguments calls it
    return True


# --------------------------------------------------------------------------- 6. state copies


def fast_state_copy():
    from apache_beam.transforms import trigger

    cls = trigger.InMemoryUnmergedState
    if getattr(cls, "_streamscore_patched", False):
        return True
    original = cls.copy

    def copy(self):
        if self.global_state:
            return original(self)
        cloned = cls(defensive_copy=self.defensive_copy)  # what the original builds, globals empty
        for window, timers in self.timers.items():
            # {window: {(name, domain, tag): Timestamp}}: windows, keys and timestamps are immutable,
            # so two dict levels copied equal the original's deepcopy (which costs ~20 us a key)
            cloned.timers[window] = dict(timers)
        for window, tags in self.state.items():
            for tag, values in tags.items():
                cloned.state[window][tag] = copy_module.copy(values)  # as the original
        return cloned

    cls.copy = copy
    cls._streamscore_patched = True
    return True


# --------------------------------------------------------------------------- 7. pending minimum


def bundle_minimum(bundle):
    """``(has elements, minimum element timestamp)`` of a bundle; memoised once it is committed."""
    cached = getattr(bundle, "_streamscore_minimum", None)
    if cached is not None:
        return cached
    from apache_beam.runners.direct.watermark_manager import WatermarkManager

    has, low = False, WatermarkManager.WATERMARK_POS_INF
    for wv in bundle.get_elements_iterable():
        has = True
        if wv.timestamp < low:
            low = wv.timestamp
    if bundle._committed:  # immutable from now on
        bundle._streamscore_minimum = (has, low)
    return has, low


def cache_pending_minimum():
    from apache_beam.runners.direct import watermark_manager
    from apache_beam.runners.direct.bundle_factory import _Bundle

    cls = watermark_manager._TransformWatermarks
    if getattr(cls, "_streamscore_minimum_patched", False):
        return True
    for name in ("_pending", "_input_transform_watermarks", "_input_watermark", "_output_watermark",
                 "_keyed_earliest_holds", "_lock"):
        if name not in cls.refresh.__code__.co_names:
            raise AttributeError(f"_TransformWatermarks.refresh no longer uses {name}")
    if "_committed" not in _Bundle.__init__.__code__.co_names:
        raise AttributeError("_Bundle has no _committed flag")
    manager = watermark_manager.WatermarkManager
    granularity = watermark_manager.TIME_GRANULARITY

    def refresh(self) -> bool:  # Beam's refresh, with each pending bundle's minimum computed once
        with self._lock:
            min_pending_timestamp = manager.WATERMARK_POS_INF
            has_pending_elements = False
            for input_bundle in self._pending:
                has, low = bundle_minimum(input_bundle)
                if has:
                    has_pending_elements = True
                    if low < min_pending_timestamp:
                        min_pending_timestamp = low
            pending_holder = manager.WATERMARK_POS_INF
            if has_pending_elements:
                pending_holder = min_pending_timestamp - granularity
            input_watermarks = [tw.output_watermark for tw in self._input_transform_watermarks]
            input_watermarks.append(manager.WATERMARK_POS_INF)
            producer_watermark = min(input_watermarks)
            self._input_watermark = max(self._input_watermark, min(pending_holder, producer_watermark))
            earliest_hold = manager.WATERMARK_POS_INF
            for hold in self._keyed_earliest_holds.values():
                if hold < earliest_hold:
                    earliest_hold = hold
            new_output_watermark = min(self._input_watermark, earliest_hold)
            advanced = new_output_watermark > self._output_watermark
            self._output_watermark = new_output_watermark
            return advanced

    refresh.__wrapped__ = cls.refresh
    cls.refresh = refresh
    cls._streamscore_minimum_patched = True
    return True


# --------------------------------------------------------------------------- 8. decoded state values


class DecodedValue:
    """A ReadModifyWrite state value kept as the object itself (patch 8)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


def keep_state_decoded():
    from apache_beam.runners.direct import direct_userstate

    cls = direct_userstate.ReadModifyWriteRuntimeState
    if getattr(cls, "_streamscore_patched", False):
        return True
    original_read, original_write = cls.read, cls.write
    for name in ("_value", "_cleared", "_modified", "_current_value_accessor"):
        if name not in original_read.__code__.co_names + original_write.__code__.co_names \
                + cls.__init__.__code__.co_names + direct_userstate.DirectRuntimeState.__init__.__code__.co_names:
            raise AttributeError(f"ReadModifyWriteRuntimeState no longer uses {name}")
    checked: set = set()  # state specs whose coder was exercised once

    def read(self):
        if self._cleared:
            return None
        if self._value is direct_userstate.UNREAD_VALUE:
            self._value = self._current_value_accessor()
        if not self._value:
            return None
        stored = self._value[0]
        if type(stored) is DecodedValue:
            if stored is not self._streamscore_written:  # committed by an earlier bundle: lent to this one
                _ATTEMPT.lent = True
            return stored.value
        return self._decode(stored)

    def write(self, value):
        spec = self._state_spec
        if spec not in checked:  # the coder must still handle the value, as it must on Dataflow
            self._decode(self._encode(value))
            checked.add(spec)
        self._cleared = False
        self._modified = True
        self._streamscore_written = DecodedValue(value)
        self._value = [self._streamscore_written]

    _no_retry_after_lending()  # first: when it cannot be installed (raises), state stays encoded as Beam ships it
    read.__wrapped__, write.__wrapped__ = original_read, original_write
    cls.read, cls.write = read, write
    cls._streamscore_written = None
    cls._streamscore_patched = True
    return True


_ATTEMPT = threading.local()  # .lent: the running bundle attempt was handed a committed state object


def _no_retry_after_lending():
    """A bundle that failed after it was handed committed state objects is not retried.

    Beam's local runner retries a failed bundle up to 4 times, from the state as committed. With
    patch 8 the failed attempt may have changed those objects in place, so a retry could see
    half of its own work (e.g. report its transactions as duplicates). Such a bundle fails the
    pipeline at once, with its error, instead of being retried from a state that is not the one
    committed. A failure before any state object was handed out is retried as before.
    """
    from apache_beam.runners.direct import executor

    cls = executor.TransformExecutor
    if getattr(cls, "_streamscore_patched", False):
        return
    original = cls.attempt_call
    if "_max_retries_per_bundle" not in cls.call.__code__.co_names or "_retry_count" not in cls.call.__code__.co_names:
        raise AttributeError("TransformExecutor.call no longer retries with _retry_count/_max_retries_per_bundle")

    def attempt_call(self, *args, **kwargs):
        _ATTEMPT.lent = False
        try:
            return original(self, *args, **kwargs)
        except Exception:
            if getattr(_ATTEMPT, "lent", False):
                log.error("bundle of %s failed after changing its state in place; not retried (local runner "
                          "tuning, decoded state): the pipeline fails with this error", self._applied_ptransform)
                self._retry_count = self._max_retries_per_bundle - 1  # call() counts this attempt and gives up
            raise
        finally:
            _ATTEMPT.lent = False

    attempt_call.__wrapped__ = original
    cls.attempt_call = attempt_call
    cls._streamscore_patched = True


# --------------------------------------------------------------------------- 9. empty bundles


def skip_empty_bundles():
    from apache_beam.runners.direct import executor, watermark_manager

    cls = executor._ExecutorServiceParallelExecutor
    if getattr(cls, "_streamscore_patched", False):
        return True
    original = cls.schedule_consumers
    if "has_elements" not in watermark_manager.WatermarkManager._update_pending.__code__.co_names:
        raise AttributeError("the watermark manager no longer filters empty bundles")

    def schedule_consumers(self, committed_bundle):
        if not committed_bundle.has_elements():  # never made pending either: nothing waits for it
            return
        original(self, committed_bundle)

    schedule_consumers.__wrapped__ = original
    cls.schedule_consumers = schedule_consumers
    cls._streamscore_patched = True
    return True


# --------------------------------------------------------------------------- 10. pending leak


def drop_empty_pending():
    from apache_beam.runners.direct import watermark_manager

    cls = watermark_manager.WatermarkManager
    if getattr(cls, "_streamscore_patched", False):
        return True
    original = cls._update_pending
    if "remove_pending" not in original.__code__.co_names or "_transform_to_watermarks" not in original.__code__.co_names:
        raise AttributeError("WatermarkManager._update_pending changed")

    def _update_pending(self, input_committed_bundle, applied_ptransform, *args, **kwargs):
        original(self, input_committed_bundle, applied_ptransform, *args, **kwargs)
        if input_committed_bundle is not None and not input_committed_bundle.has_elements():
            self._transform_to_watermarks[applied_ptransform].remove_pending(input_committed_bundle)

    _update_pending.__wrapped__ = original
    cls._update_pending = _update_pending
    cls._streamscore_patched = True
    return True
