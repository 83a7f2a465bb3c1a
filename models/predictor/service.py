"""``streamscore.v1.Scorer``: a thin servicer that converts messages and calls the core.

``Score`` fails the call on bad input (the status and message come from the core's
errors). A lone unnamed row goes to :meth:`Scorer.score_now` first (native trees: one C call
on the request's floats, no numpy), and takes the general path when that declines. ``ScoreStream`` answers in request order and reports a bad message in that
message's response (``error``) without ending the stream; conditions of the server (no model
loaded yet: UNAVAILABLE, overloaded: RESOURCE_EXHAUSTED) end the call, so clients retry.
When an online (River) model is loaded, every response also carries ``online_score`` and
``online_model_version`` (computed in the same batch as ``score``); otherwise they are unset.
With a challenger in shadow (``Scorer.shadow``), every scored message is offered to it after
its response was built (:meth:`~models.predictor.shadow.ShadowScorer.observe`): the response
is the production result's alone.

``ScoreStream`` uses grpc.aio's reader/writer API: a reader task reads each message as it
arrives and scores it at once (native trees: µs, on the loop) or hands it to the
micro-batcher (XGBoost: messages that arrive while a prediction runs share the next one),
while the call's own coroutine writes the responses in order. Reads and writes are in flight
together (each completes through gRPC's poller thread; overlapping them halves the round
trips a message waits for), and per message there is no task, no queue object and, for
native trees, no future: a tuple appended to a deque.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time

import grpc

from models.predictor.core import Scorer
from models.predictor.errors import (DeadlineExceeded, Internal, InvalidArgument, PredictorError, Status,
                                     Undecodable, Unimplemented, rpc)
from protos.streamscore.v1 import scorer_pb2, scorer_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = scorer_pb2.DESCRIPTOR.services_by_name["Scorer"].full_name

#: Statuses that describe the server, not one message: they end a ScoreStream call (retryable).
SERVER_CONDITIONS = frozenset({Status.UNAVAILABLE, Status.RESOURCE_EXHAUSTED})

#: Messages of one stream that may be read ahead of their responses.
STREAM_WINDOW = 256

STREAM_MESSAGE = "ScoreStream.message"

_TRANSACTION_UNSUPPORTED = (
    "transaction input needs the online feature store: start the predictor with --online-store "
    "redis://HOST:PORT/DB (the store the streaming job writes), or send features (the values of the "
    "feature spec, in order)"
)

_EOF = grpc.aio.EOF
_Response = scorer_pb2.ScoreResponse
_ScoreError = scorer_pb2.ScoreError


def check_deadline(context) -> None:
    """Refuse work whose deadline has already passed (the client has given up)."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        raise DeadlineExceeded("the request's deadline passed before it could be scored")


def _internal(exc: Exception) -> Internal:
    log.error("ScoreStream message failed", exc_info=exc)
    return Internal(f"internal error ({type(exc).__name__}); see the server log")


_FeatureVector = scorer_pb2.FeatureVector


class _Raw:
    """A raw-transaction message in flight: the scoring outcome and the features it was computed from."""

    __slots__ = ("outcome", "raw")

    def __init__(self, outcome, raw):
        self.outcome, self.raw = outcome, raw


class _RawSlot:
    """A raw-transaction stream message waiting for its batch: the messages read (by any
    ScoreStream call) while the writers were busy share one MGET (:meth:`ScorerService._resolve_raw`);
    ``outcome`` is then set."""

    __slots__ = ("request", "outcome")

    def __init__(self, request):
        self.request, self.outcome = request, None


class ScorerService(scorer_pb2_grpc.ScorerServicer):
    """``raw`` (a :class:`~models.predictor.raw_input.RawTransactions`, optional) serves transaction input."""

    def __init__(self, scorer: Scorer, telemetry=None, raw=None):
        self._scorer = scorer
        self._raw = raw
        self._telemetry = telemetry
        self._message_latency = telemetry.latency_histogram(STREAM_MESSAGE) if telemetry is not None else None
        self._message_counts = telemetry.request_counts if telemetry is not None else None
        # Raw-transaction stream messages read but not yet fetched, of every ScoreStream call (one
        # event loop): the first writer to need one fetches them all in one MGET (_resolve_raw).
        self._raw_batch: list = []

    def _row(self, request: scorer_pb2.ScoreRequest):
        if type(request) is Undecodable:
            raise request.error()
        kind = request.WhichOneof("input")
        if kind != "features":
            if kind == "transaction":
                raise Unimplemented(_TRANSACTION_UNSUPPORTED, field="transaction")  # _submit/Score handle it
            raise InvalidArgument(f"input is required: set features ({len(self._scorer.feature_names)} values) "
                                  f"or transaction", field="input")
        self._scorer.resolve(request.model_name)
        features = request.features
        return self._scorer.features_row(features.values, features.names)

    def _raw_features(self, request):
        """The RawFeatures of a transaction request; its errors as PredictorError."""
        if self._raw is None:
            raise Unimplemented(_TRANSACTION_UNSUPPORTED, field="transaction")
        self._scorer.resolve(request.model_name)
        return self._raw.features(request.transaction)

    def _with_raw(self, response, raw):
        response.features.values.extend(raw.values)
        response.customer_known = raw.customer_known
        response.terminal_known = raw.terminal_known
        age = self._raw.state_age_ms(raw)
        if age is not None:
            response.state_age_ms = age
        return response

    @rpc("Score")
    async def Score(self, request, context):
        start = time.perf_counter_ns()
        if type(request) is not Undecodable and request.HasField("transaction"):
            return await self._score_transaction(request, context, start)
        if type(request) is not Undecodable and request.HasField("features"):
            features = request.features
            if not features.names:  # the usual request: one unnamed row, scored at once without numpy
                check_deadline(context)
                scored = self._scorer.score_now(features.values, request.model_name)
                if scored is not None:
                    shadow = self._scorer.shadow
                    if shadow is not None:
                        shadow.observe(features.values, request.transaction_id, scored[0], scored[1])
                    return _Response(transaction_id=request.transaction_id, score=scored[0], model_version=scored[1],
                                     latency_us=(time.perf_counter_ns() - start) // 1000)
        row = self._row(request)
        check_deadline(context)
        result = self._scorer.dispatch(row)
        if type(result) is not tuple:  # queued for the micro-batcher (XGBoost)
            result = await result
        response = self._response(request, start, result)
        shadow = self._scorer.shadow
        if shadow is not None:
            shadow.observe(row[0], request.transaction_id, float(result[0][0]), result[1])
        return response

    async def _score_transaction(self, request, context, start):
        raw = self._raw_features(request)
        check_deadline(context)
        scored = self._scorer.score_now(raw.values, request.model_name)  # native trees: no numpy
        shadow = self._scorer.shadow
        if scored is not None:
            if shadow is not None:
                shadow.observe(raw.values, request.transaction_id, scored[0], scored[1])
            return self._with_raw(_Response(transaction_id=request.transaction_id, score=scored[0],
                                            model_version=scored[1],
                                            latency_us=(time.perf_counter_ns() - start) // 1000), raw)
        result = self._scorer.dispatch(self._scorer.features_row(raw.values))
        if type(result) is not tuple:
            result = await result
        if shadow is not None:
            shadow.observe(raw.values, request.transaction_id, float(result[0][0]), result[1])
        return self._with_raw(self._response(request, start, result), raw)

    @staticmethod
    def _response(request, start, result):
        scores, version, online_scores, online_version = result
        if online_scores is None:
            return _Response(transaction_id=request.transaction_id, score=scores[0], model_version=version,
                             latency_us=(time.perf_counter_ns() - start) // 1000)
        return _Response(transaction_id=request.transaction_id, score=scores[0], model_version=version,
                         online_score=online_scores[0], online_model_version=online_version,
                         latency_us=(time.perf_counter_ns() - start) // 1000)

    @rpc("ScoreStream")
    async def ScoreStream(self, request_iterator, context):
        # The reader/writer API (a coroutine, not an async generator): responses go out with
        # context.write, messages come in through context.read in the reader task.
        pending: collections.deque = collections.deque()  # (request, start ns, outcome), in request order
        loop = asyncio.get_running_loop()
        wake: list = [None, None]  # [future the writer waits on, future the reader waits on (window full)]
        raw_batch = self._raw_batch  # shared by the calls: 4 streams of 8 in flight fetch like 1 of 32
        reader = loop.create_task(self._read(context, pending, wake, raw_batch))
        write, respond = context.write, self._respond
        try:
            while True:
                if pending:
                    request, start, outcome = pending.popleft()
                    if wake[1] is not None and not wake[1].done():
                        wake[1].set_result(None)  # the window has room again
                    if type(outcome) is _RawSlot:
                        if outcome.outcome is None:
                            self._resolve_raw(raw_batch)
                        outcome = outcome.outcome
                    if type(outcome) is not tuple:
                        outcome = await self._outcome(outcome)
                    await write(respond(request, start, outcome))
                elif reader.done():
                    reader.result()  # re-raises a failure of the request stream itself
                    return
                else:
                    wake[0] = loop.create_future()
                    await wake[0]
                    wake[0] = None
        finally:
            if reader.done():
                if not reader.cancelled():
                    reader.exception()  # retrieved: the writer's own failure is the one reported
            else:
                reader.cancel()

    async def _read(self, context, pending: collections.deque, wake: list, raw_batch: list) -> None:
        read, submit, now = context.read, self._submit, time.perf_counter_ns
        raw = self._raw
        try:
            while True:
                request = await read()
                if request is _EOF:
                    return
                if raw is not None and type(request) is not Undecodable and request.HasField("transaction"):
                    slot = _RawSlot(request)  # fetched with the others read before the writer gets to it
                    raw_batch.append(slot)
                    pending.append((request, now(), slot))
                else:
                    pending.append((request, now(), submit(request)))
                waiter = wake[0]
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
                if len(pending) >= STREAM_WINDOW:  # let the client's flow control push back
                    wake[1] = asyncio.get_running_loop().create_future()
                    await wake[1]
                    wake[1] = None
        finally:
            waiter = wake[0]  # always unblock the writer, even if reading failed
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def _respond(self, request, start: int, outcome, shadowed: bool = False) -> scorer_pb2.ScoreResponse:
        """The response to one stream message: its score, or what was wrong with it (and the
        message offered to the shadow, unless ``shadowed``: the caller does it).

        Conditions of the server rather than of the message (no model loaded yet, overloaded)
        end the whole call with their status instead, so the client retries the batch.
        """
        if type(outcome) is _Raw:
            inner = outcome.outcome
            if type(inner) is not tuple:
                return self._respond(request, start, inner)
            response = self._with_raw(self._respond(request, start, inner, shadowed=True), outcome.raw)
            shadow = self._scorer.shadow
            if shadow is not None:
                shadow.observe(outcome.raw.values, request.transaction_id, float(inner[0][0]), inner[1])
            return response
        if type(outcome) is tuple:
            scores, version, online_scores, online_version = outcome
            elapsed = time.perf_counter_ns() - start
            shadow = None if shadowed else self._scorer.shadow
            if shadow is not None:
                features = request.features
                shadow.observe(features.values if not features.names else
                               self._scorer.features_row(features.values, features.names)[0],
                               request.transaction_id, float(scores[0]), version)
            if self._message_latency is not None:
                counts = self._message_counts
                counts[(STREAM_MESSAGE, "OK")] = counts.get((STREAM_MESSAGE, "OK"), 0) + 1
                self._message_latency.observe(elapsed / 1e9)
            if online_scores is None:
                return _Response(transaction_id=request.transaction_id, score=scores[0], model_version=version,
                                 latency_us=elapsed // 1000)
            return _Response(transaction_id=request.transaction_id, score=scores[0], model_version=version,
                             online_score=online_scores[0], online_model_version=online_version,
                             latency_us=elapsed // 1000)
        if outcome.status in SERVER_CONDITIONS:
            raise outcome
        if self._telemetry is not None:
            self._telemetry.observe_rpc(STREAM_MESSAGE, outcome.status.name, None)
        return _Response(transaction_id=getattr(request, "transaction_id", ""),
                         error=_ScoreError(code=int(outcome.status), message=outcome.message))

    @classmethod
    async def _outcome(cls, pending):
        if type(pending) is _Raw:
            inner = pending.outcome
            return _Raw(inner if type(inner) is tuple else await cls._outcome(inner), pending.raw)
        if isinstance(pending, PredictorError):
            return pending
        try:
            return await pending
        except PredictorError as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - one message failed, not the stream
            return _internal(exc)

    def _resolve_raw(self, batch: list) -> None:
        """Fetch, featurise and score every raw-transaction slot of ``batch`` (one MGET for all), and empty it."""
        slots = batch[:]
        batch.clear()
        scorer = self._scorer
        valid, messages = [], []
        for slot in slots:
            try:
                scorer.resolve(slot.request.model_name)
            except PredictorError as exc:
                slot.outcome = exc
                continue
            valid.append(slot)
            messages.append(slot.request.transaction)
        if not valid:
            return
        try:
            results = self._raw.features_many(messages)
        except Exception as exc:  # noqa: BLE001 - these messages failed, not the stream
            error = _internal(exc)
            for slot in valid:
                slot.outcome = error
            return
        dispatch, features_row = scorer.dispatch, scorer.features_row
        for slot, raw in zip(valid, results):
            if isinstance(raw, PredictorError):
                slot.outcome = raw
                continue
            try:
                slot.outcome = _Raw(dispatch(features_row(raw.values)), raw)
            except PredictorError as exc:
                slot.outcome = exc
            except Exception as exc:  # noqa: BLE001 - one message failed, not the stream
                slot.outcome = _internal(exc)

    def _submit(self, request):
        """Score one message now (native trees: a result tuple) or queue it (a future); or its error."""
        try:
            if type(request) is not Undecodable and request.HasField("transaction"):
                raw = self._raw_features(request)
                return _Raw(self._scorer.dispatch(self._scorer.features_row(raw.values)), raw)
            return self._scorer.dispatch(self._row(request))
        except PredictorError as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - one message failed, not the stream
            return _internal(exc)
