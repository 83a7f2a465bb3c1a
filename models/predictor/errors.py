"""Predictor errors carry their own status; :func:`rpc` maps them to gRPC codes in one place.

The scoring core raises :class:`PredictorError` subclasses (no gRPC import needed: the
status is a :class:`Status`, numbered like ``google.rpc.Code``). Every servicer method is
decorated with :func:`rpc`, which turns them into ``context.abort(code, message)``, turns
any other exception into ``INTERNAL`` (logged with its traceback, never silently dropped),
and records the outcome in the servicer's telemetry.

>>> err = InvalidArgument("features.values must have 15 values, got 3", field="features.values")
>>> err.status.name, err.field
('INVALID_ARGUMENT', 'features.values')
"""

from __future__ import annotations

import asyncio
import enum
import functools
import inspect
import logging
import time
from typing import Any

log = logging.getLogger(__name__)


class Status(enum.IntEnum):
    """Status codes, numbered as ``google.rpc.Code`` (and ``grpc.StatusCode``)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class PredictorError(Exception):
    """An error the predictor answers with a status. ``field`` names the offending input, if any."""

    status: Status = Status.INTERNAL

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


class Internal(PredictorError):
    """A bug, reported without its details (they go to the log)."""

    status = Status.INTERNAL


class InvalidArgument(PredictorError):
    status = Status.INVALID_ARGUMENT


class ModelNotFound(PredictorError):
    status = Status.NOT_FOUND


class NotReady(PredictorError):
    """No model is loaded yet (the server is up but not SERVING)."""

    status = Status.UNAVAILABLE


class StoreUnavailable(PredictorError):
    """The online feature store (raw-transaction input) could not be read; feature vectors still work."""

    status = Status.UNAVAILABLE


class Overloaded(PredictorError):
    status = Status.RESOURCE_EXHAUSTED


class DeadlineExceeded(PredictorError):
    status = Status.DEADLINE_EXCEEDED


class Unimplemented(PredictorError):
    status = Status.UNIMPLEMENTED


class ModelRejected(PredictorError):
    """A model version that must not be served: corrupt files, another feature spec, bad warm-up."""

    status = Status.FAILED_PRECONDITION


RPC_MARKER = "__streamscore_rpc__"


class Undecodable:
    """Stands in for a request whose bytes did not parse (see ``server.safe_deserializer``).

    Deserializing happens before any servicer code runs; returning this instead of raising
    lets the servicer answer INVALID_ARGUMENT (and a stream carry on) instead of gRPC's
    bare UNKNOWN.
    """

    __slots__ = ("type_name", "size", "reason")

    def __init__(self, type_name: str, size: int, reason: str):
        self.type_name, self.size, self.reason = type_name, size, reason

    def error(self) -> InvalidArgument:
        return InvalidArgument(f"request is not a valid {self.type_name} ({self.size} bytes): {self.reason}",
                               field="request")


def status_of(exc: BaseException) -> Status:
    """The status a raised exception is answered with."""
    if isinstance(exc, PredictorError):
        return exc.status
    if isinstance(exc, asyncio.CancelledError):
        return Status.CANCELLED
    return Status.INTERNAL


def rpc(method_name: str):
    """Wrap an async servicer method (unary, or an async generator for streams).

    ``PredictorError`` -> ``context.abort(its status, its message)``; any other exception ->
    ``INTERNAL`` with the exception type (details go to the log). When the servicer has a
    ``_telemetry`` attribute the call's status and latency are recorded under ``method_name``.
    """
    import grpc  # the transport edge: the scoring core never imports grpc

    def outcome(exc: BaseException) -> tuple[Status, str]:
        if isinstance(exc, PredictorError):
            return exc.status, exc.message
        log.error("%s failed", method_name, exc_info=exc)
        return Status.INTERNAL, f"internal error ({type(exc).__name__}); see the server log"

    def observe(self: Any, status: Status, start: float) -> None:
        telemetry = getattr(self, "_telemetry", None)
        if telemetry is not None:
            telemetry.observe_rpc(method_name, status.name, time.perf_counter() - start)

    def decorate(func):
        if inspect.isasyncgenfunction(func):
            @functools.wraps(func)
            async def stream_wrapper(self, request_iterator, context):
                start = time.perf_counter()
                try:
                    async for response in func(self, request_iterator, context):
                        yield response
                except (grpc.aio.AbortError, asyncio.CancelledError) as exc:
                    observe(self, status_of(exc) if isinstance(exc, asyncio.CancelledError) else Status.UNKNOWN, start)
                    raise
                except Exception as exc:  # noqa: BLE001 - mapped to a status, logged when unexpected
                    status, message = outcome(exc)
                    observe(self, status, start)  # before abort: the client may look at metrics next
                    await context.abort(grpc.StatusCode[status.name], message)
                else:
                    observe(self, Status.OK, start)

            wrapper = stream_wrapper
        elif inspect.iscoroutinefunction(func):
            @functools.wraps(func)
            async def unary_wrapper(self, request, context):
                start = time.perf_counter()
                try:
                    if type(request) is Undecodable:
                        raise request.error()
                    response = await func(self, request, context)
                except (grpc.aio.AbortError, asyncio.CancelledError) as exc:
                    observe(self, status_of(exc) if isinstance(exc, asyncio.CancelledError) else Status.UNKNOWN, start)
                    raise
                except Exception as exc:  # noqa: BLE001 - mapped to a status, logged when unexpected
                    status, message = outcome(exc)
                    observe(self, status, start)  # before abort: the client may look at metrics next
                    await context.abort(grpc.StatusCode[status.name], message)
                observe(self, Status.OK, start)
                return response

            wrapper = unary_wrapper
        else:
            raise TypeError(f"@rpc needs an async method or async generator, got {func!r}")
        setattr(wrapper, RPC_MARKER, method_name)
        return wrapper

    return decorate
