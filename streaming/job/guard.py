"""The last-resort guard of every DoFn of the job: one element's exception is its dead letter.

The parser (:mod:`streaming.io.events`) validates everything the later stages rely on, so a stage
should never raise on an element. If one still does (a bug, a case nobody thought of), the
local runner retries the bundle four times and then fails the pipeline, and on Pub/Sub the
unacknowledged message comes back and kills it again: one message stops the job. So each
stage's ``process`` is wrapped by :func:`guarded`:

* its outputs for the element are buffered, and emitted only when ``process`` finished —
  an element that fails emits nothing but its dead letter (never "scored *and* dead-lettered");
* an ``Exception`` becomes a :class:`~streaming.io.events.DeadLetter` of that stage on the
  ``dead_letter`` output, reason ``"<stage> stage failed: <Type>: <message>"``, with the
  element's bytes (:func:`element_dead_letter`), and the stage's Beam counter
  ``guard_failures`` moves. ``BaseException`` (``KeyboardInterrupt``, ``SystemExit``) is not
  caught: stopping the worker is not an element's fault.

Stateful stages must not leave half-updated state behind: with the local runner's decoded
state (:mod:`streaming.runner.local`, patch 8) the state object is changed in place, so a
failure after a change would persist even though nothing is written. The state classes
(:class:`~streaming.features.state.CustomerState`, ``TerminalState``) therefore validate
everything before they change anything, and the DoFns compute what can fail before they
call them.
"""

from __future__ import annotations

import functools
from typing import Any

import apache_beam as beam
import orjson
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.metrics import Metrics

from streaming.io.events import DeadLetter, Label, Transaction
from streaming.io.encoding import dead_letter, dead_letter_of_event

DEAD_LETTER = "dead_letter"
COUNTER = "guard_failures"


def _inner(element: Any) -> Any:
    """The event inside a keyed element ``(key, value)`` or a stage's ``(Transaction, features)`` pair."""
    for _ in range(3):
        if isinstance(element, tuple) and len(element) == 2 and not hasattr(element, "_fields"):
            key, value = element
            element = key if isinstance(key, (Transaction, Label)) else value
        elif hasattr(element, "transaction") and isinstance(element.transaction, Transaction):
            element = element.transaction  # a FeaturedTransaction
        else:
            break
    return element


def element_dead_letter(element: Any, error: str, stage: str) -> DeadLetter:
    """A dead letter for whatever a stage was given: message, event, keyed event or example. Never raises."""
    try:
        if isinstance(element, PubsubMessage):
            return dead_letter(element.data, element.attributes, error, stage)
        inner = _inner(element)
        if isinstance(inner, (Transaction, Label)):
            return dead_letter_of_event(inner, error, stage)
        if hasattr(inner, "features") and hasattr(inner, "transaction_id"):  # a labelled Example
            body = {"transaction_id": str(inner.transaction_id), "label": getattr(inner, "label", None),
                    "features": [float(v) for v in inner.features]}
            return dead_letter(orjson.dumps(body), {}, error, stage)
        return dead_letter(repr(inner), {}, error, stage)
    except Exception as exc:  # the guard of the guard: keep the element's repr at least
        return dead_letter(repr(element), {}, f"{error} (and its dead letter failed: {type(exc).__name__})", stage)


def failure_reason(stage: str, exc: BaseException) -> str:
    return f"{stage} stage failed: {type(exc).__name__}: {exc}"


def guarded(stage: str):
    """Decorate a DoFn's ``process``: see the module docs. Beam still sees the original signature."""

    def decorate(process):
        @functools.wraps(process)
        def run(self, element, *args, **kwargs):
            try:
                outputs = list(process(self, element, *args, **kwargs) or ())
            except Exception as exc:
                Metrics.counter(type(self), COUNTER).inc()
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, element_dead_letter(element, failure_reason(stage, exc),
                                                                                stage))
                return
            yield from outputs

        return run

    return decorate
