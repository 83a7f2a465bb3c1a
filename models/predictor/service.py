"""``streamscore.v1.Scorer``: a thin servicer that converts messages and calls the core.

``Score`` fails the call on bad input (the status and message come from the core's
errors). ``ScoreStream`` answers in request order and reports a bad message in that
message's response (``error``) without ending the stream; conditions of the server (no model
loaded yet: UNAVAILABLE, overloaded: RESOURCE_EXHAUSTED) end the call, so clients retry. With a backend that predicts off
the event loop (XGBoost) it pipelines: it keeps reading while earlier messages are being
predicted, so messages that arrive together share a batch; with native trees (µs, in the
caller) it answers each message as it reads it.
"""

from __future__ import annotations

import asyncio
import logging
import time

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

_TRANSACTION_UNSUPPORTED = (
    "transaction input is not supported by the predictor: features need per-customer and per-terminal "
    "state, which lives in the streaming job; send features (the values of the feature spec, in order)"
)


def check_deadline(context) -> None:
    """Refuse work whose deadline has already passed (the client has given up)."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        raise DeadlineExceeded("the request's deadline passed before it could be scored")


def _internal(exc: Exception) -> Internal:
    log.error("ScoreStream message failed", exc_info=exc)
    return Internal(f"internal error ({type(exc).__name__}); see the server log")


class ScorerService(scorer_pb2_grpc.ScorerServicer):
    def __init__(self, scorer: Scorer, telemetry=None):
        self._scorer = scorer
        self._telemetry = telemetry

    def _row(self, request: scorer_pb2.ScoreRequest):
        if type(request) is Undecodable:
            raise request.error()
        kind = request.WhichOneof("input")
        if kind != "features":
            if kind == "transaction":
                raise Unimplemented(_TRANSACTION_UNSUPPORTED, field="transaction")
            raise InvalidArgument(f"input is required: set features ({len(self._scorer.feature_names)} values) "
                                  f"or transaction", field="input")
        self._scorer.resolve(request.model_name)
        features = request.features
        return self._scorer.features_row(features.values, features.names)

    @rpc("Score")
    async def Score(self, request, context):
        start = time.perf_counter_ns()
        row = self._row(request)
        check_deadline(context)
        scores, version = await self._scorer.submit(row)
        return scorer_pb2.ScoreResponse(transaction_id=request.transaction_id, score=scores[0],
                                        model_version=version,
                                        latency_us=(time.perf_counter_ns() - start) // 1000)

    @rpc("ScoreStream")
    async def ScoreStream(self, request_iterator, context):
        if self._scorer.offloaded:
            stream = self._pipelined(request_iterator)
        else:
            stream = self._sequential(request_iterator)
        async for response in stream:
            yield response

    def _respond(self, request, start: int, outcome) -> scorer_pb2.ScoreResponse:
        """The response to one stream message: its score, or what was wrong with it.

        Conditions of the server rather than of the message (no model loaded yet, overloaded)
        end the whole call with their status instead, so the client retries the batch.
        """
        telemetry = self._telemetry
        if isinstance(outcome, PredictorError):
            if outcome.status in SERVER_CONDITIONS:
                raise outcome
            if telemetry is not None:
                telemetry.observe_rpc("ScoreStream.message", outcome.status.name, None)
            return scorer_pb2.ScoreResponse(transaction_id=getattr(request, "transaction_id", ""),
                                            error=scorer_pb2.ScoreError(code=int(outcome.status),
                                                                        message=outcome.message))
        scores, version = outcome
        elapsed = time.perf_counter_ns() - start
        if telemetry is not None:
            telemetry.observe_rpc("ScoreStream.message", "OK", elapsed / 1e9)
        return scorer_pb2.ScoreResponse(transaction_id=request.transaction_id, score=scores[0],
                                        model_version=version, latency_us=elapsed // 1000)

    async def _outcome(self, pending):
        if isinstance(pending, PredictorError):
            return pending
        try:
            return await pending
        except PredictorError as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - one message failed, not the stream
            return _internal(exc)

    def _submit(self, request):
        try:
            return self._scorer.submit(self._row(request))
        except PredictorError as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - one message failed, not the stream
            return _internal(exc)

    async def _sequential(self, request_iterator):
        """Native trees predict in the caller, in µs: answer each message as it is read."""
        async for request in request_iterator:
            start = time.perf_counter_ns()
            yield self._respond(request, start, await self._outcome(self._submit(request)))

    async def _pipelined(self, request_iterator):
        """Predictions off the loop: keep reading while earlier messages are predicted, so that
        messages arriving together share a batch; answer in request order."""
        window: asyncio.Queue = asyncio.Queue(STREAM_WINDOW)
        reader = asyncio.ensure_future(self._read(request_iterator, window))
        try:
            while (item := await window.get()) is not None:
                request, start, pending = item
                yield self._respond(request, start, await self._outcome(pending))
            await reader  # re-raises a failure of the request stream itself
        finally:
            reader.cancel()

    async def _read(self, request_iterator, window: asyncio.Queue) -> None:
        try:
            async for request in request_iterator:
                await window.put((request, time.perf_counter_ns(), self._submit(request)))
        finally:
            # Always unblock the writer, even if reading failed (the failure surfaces from `await reader`).
            try:
                window.put_nowait(None)
            except asyncio.QueueFull:
                await window.put(None)
