"""``streamscore serve``: assemble the grpc.aio predictor and run it until SIGTERM.

One port serves ``streamscore.v1.Scorer``, KServe v2 ``inference.GRPCInferenceService``,
``grpc.health.v1.Health`` (NOT_SERVING until a model is loaded) and server reflection;
Prometheus metrics are on their own HTTP port. With a registry, the predictor also follows
its ``online`` alias (the River model the streaming job's learner snapshots) and every
response carries ``online_score``/``online_model_version`` while one is loaded
(``--no-online`` turns that off). It also follows the registry's ``challenger`` alias: that
version is scored in shadow next to production on every request, its scores exported and
logged (``--shadow-log DIR``), never returned (``models/predictor/shadow.py``; ``--no-shadow``
turns it off). A :class:`GuardInterceptor` checks the
bearer token (when one is set) and bounds the RPCs in flight (RESOURCE_EXHAUSTED beyond
it, instead of queueing without limit). SIGTERM/SIGINT drain: health goes NOT_SERVING,
new RPCs are refused, RPCs in flight get ``--grace`` seconds to finish, then the process
exits. The serving process freezes what start-up (and each model load) left alive out of the
garbage collector's scans (:func:`settle_gc`): a full collection would otherwise stall every
RPC in flight for tens of milliseconds. ``--grpc-io`` picks gRPC core's I/O (:data:`GRPC_IO`):
``iomgr`` by default (the server's completion-queue thread reads and writes the sockets
itself), or ``event-engine`` (gRPC's default since 1.80: EventEngine threads do, one thread
hop more per completion); gRPC reads the choice once, when it is imported, so ``streamscore
serve`` re-executes itself with it set when it is not in effect yet (:func:`restart_with_grpc_io`).

    streamscore serve --registry registry/ --port 50051 [--metrics-port 9464]
        [--tls-cert cert.pem --tls-key key.pem] [--auth-token-file FILE]
        [--max-in-flight 512] [--poll-interval 2] [--backend auto|native|xgboost] [--no-online]
        [--grpc-io iomgr|event-engine] [--no-shadow] [--shadow-log DIR] [--shadow-model-file FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import hmac
import inspect
import logging
import os
import signal
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from models.predictor import kserve, service
from models.predictor.backends import BACKENDS
from models.predictor.core import Scorer
from models.predictor.lifecycle import ONLINE, FileSource, ModelSource, ModelWatcher, RegistrySource, ShadowFileSource
from models.predictor.shadow import CHALLENGER, ShadowScorer, ShadowSettings
from models.predictor.metrics import Telemetry
from models.predictor.errors import Undecodable
from models.predictor.grpc_io import grpc_io_env, grpc_io_in_effect
from models.signing import KeyRing, add_trust_arguments, keys_from_args
from models.predictor.raw_input import RawTransactions
from streaming.store.redis_store import check_url

log = logging.getLogger(__name__)

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
SERVED = (service.SERVICE_NAME, kserve.SERVICE_NAME)
AUTH_TOKEN_ENV = "STREAMSCORE_AUTH_TOKEN"

#: gRPC core's I/O for the serving process: "iomgr" (the I/O manager gRPC used before 1.80)
#: or "event-engine" (gRPC's default since 1.80).
GRPC_IO = ("iomgr", "event-engine")

@dataclasses.dataclass(frozen=True)
class ServerSettings:
    """Everything ``streamscore serve`` can be told; built once from flags (and env) at the edge."""

    registry: str | Path | None = None  # a directory or gs://bucket/prefix
    model_file: Path | None = None  # instead of a registry: serve this file (benchmarks, debugging)
    host: str = "0.0.0.0"
    port: int = 50051
    metrics_port: int | None = 9464  # None: no metrics HTTP server; 0: any free port
    tls_cert: Path | None = None
    tls_key: Path | None = None
    auth_token: str | None = None
    max_in_flight: int = 512
    max_message_bytes: int = 4 * 1024 * 1024
    poll_interval: float = 2.0
    grace: float = 10.0
    backend: str = "auto"
    max_batch_size: int = 256
    settle_gc: bool = False  # the serving process's GC (see settle_gc); `streamscore serve` sets it
    online: bool = True  # follow the registry's online alias and answer online scores too
    # The registry key ring (models.signing.KeyRing) versions must be signed by; None only with
    # allow_unsigned (local development: checksums only, so registry write access = code execution).
    signing_keys: KeyRing | None = None
    allow_unsigned: bool = False
    # gRPC core's I/O (see GRPC_IO). It only takes effect before gRPC is imported: `streamscore
    # serve` sees to it (restart_with_grpc_io); a PredictorServer built in a process that already
    # imported grpc (tests) has that process's I/O. iomgr, measured on a busy 2-core box: ~10 %
    # less server CPU per sequential unary call and ~25 % less per stream message.
    grpc_io: str = "iomgr"
    # The online feature store the streaming job writes (redis://HOST:PORT/DB, rediss://...):
    # enables transaction input (docs/online-store.md). Read only: the predictor never writes it.
    online_store: str | None = None
    # Score the registry's challenger alias in shadow (or shadow_model_file's model), with these settings.
    shadow: bool = True
    shadow_model_file: Path | None = None
    shadow_settings: ShadowSettings = ShadowSettings()

    def __post_init__(self):
        if self.registry is not None and self.model_file is not None:
            raise ValueError("give --registry or --model-file, not both")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together: give both or neither")
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {self.max_in_flight}")
        if self.poll_interval <= 0:
            raise ValueError(f"poll_interval must be > 0 seconds, got {self.poll_interval}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.grpc_io not in GRPC_IO:
            raise ValueError(f"grpc_io must be one of {', '.join(GRPC_IO)}, got {self.grpc_io!r}")
        if self.registry is not None and self.signing_keys is None and not self.allow_unsigned:
            raise ValueError("a registry is served only with its key ring (--signing-key-file) or, for local "
                             "development, --allow-unsigned")
        if self.online_store is not None:
            check_url(self.online_store)
        if self.shadow_model_file is not None and not self.shadow:
            raise ValueError("--shadow-model-file and --no-shadow contradict each other")


def restart_with_grpc_io(settings: ServerSettings, argv: list[str], *, env=os.environ, execve=os.execve) -> None:
    """Make ``settings.grpc_io`` the I/O of this process: gRPC read ``GRPC_EXPERIMENTS`` when this
    module imported it, so when the variable asks for the other I/O, replace the process (same
    pid, for supervisors) by ``python -m models.predictor.server ARGV`` with it set. Returns when
    the I/O is already in effect. Only for ``streamscore serve``'s own process."""
    if grpc_io_in_effect(env) == settings.grpc_io:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    execve(sys.executable, [sys.executable, "-m", "models.predictor.server", *argv], grpc_io_env(settings.grpc_io, env))


def settle_gc() -> None:
    """Keep the cyclic garbage collector out of the request path's tail latency.

    What is alive once the server is up and a model is loaded (modules, the model, gRPC's
    state: ~60k tracked objects) stays alive: collect once, then freeze it into the permanent
    generation, so that later collections only scan what requests create. A full collection of
    all of it takes 15-30 ms, a latency spike for every RPC in flight. Called after start-up and
    after every model swap (unfreezing first, so the replaced model's cyclic garbage, if any, is
    collected then instead of kept forever). Process-wide: only for the serving process.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class GuardInterceptor(grpc.aio.ServerInterceptor):
    """Bearer-token check and the bound on RPCs in flight, in front of every service but health."""

    def __init__(self, *, auth_token: str | None, max_in_flight: int, telemetry: Telemetry | None = None):
        self._token = f"Bearer {auth_token}".encode() if auth_token else None
        self._max = max_in_flight
        self._telemetry = telemetry
        self.in_flight = 0
        self._wrapped: dict[int, grpc.RpcMethodHandler] = {}

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method.startswith(f"/{HEALTH_SERVICE}/"):
            return handler
        if self._token is not None and not self._authorized(details.invocation_metadata):
            if self._telemetry is not None:
                self._telemetry.observe_rpc(details.method.rsplit("/", 1)[-1], "UNAUTHENTICATED", None)
            return _refusal(handler, grpc.StatusCode.UNAUTHENTICATED,
                            'missing or wrong credentials: send metadata "authorization: Bearer <token>"')
        wrapped = self._wrapped.get(id(handler))
        if wrapped is None:
            wrapped = self._wrapped[id(handler)] = self._bounded(handler, details.method.rsplit("/", 1)[-1])
        return wrapped

    def _authorized(self, metadata) -> bool:
        for key, value in metadata or ():
            if key == "authorization":
                value = value.encode() if isinstance(value, str) else value
                return hmac.compare_digest(value, self._token)
        return False

    def _overloaded(self, method: str) -> str:
        """Count a refusal (the server is at its limit) and say why."""
        if self._telemetry is not None:
            self._telemetry.observe_rpc(method, "RESOURCE_EXHAUSTED", None)
        return f"server is at its limit of {self._max} RPCs in flight; retry with backoff"

    def _bounded(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        # The count is a plain int (this runs on the event loop); the in-flight gauge reads it
        # when scraped (Telemetry.track_in_flight), so an RPC costs no metric update here.
        guard = self
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(request, context):
                if guard.in_flight >= guard._max:
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, guard._overloaded(method))
                guard.in_flight += 1
                try:
                    return await inner(request, context)
                finally:
                    guard.in_flight -= 1

            return grpc.unary_unary_rpc_method_handler(unary, handler.request_deserializer,
                                                       handler.response_serializer)
        if handler.stream_stream is not None:
            inner_stream = handler.stream_stream
            if inspect.iscoroutinefunction(inner_stream):  # reader/writer API (context.read / write)
                async def stream(request_iterator, context):
                    if guard.in_flight >= guard._max:
                        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, guard._overloaded(method))
                    guard.in_flight += 1
                    try:
                        await inner_stream(request_iterator, context)
                    finally:
                        guard.in_flight -= 1
            else:  # an async generator of responses
                async def stream(request_iterator, context):
                    if guard.in_flight >= guard._max:
                        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, guard._overloaded(method))
                    guard.in_flight += 1
                    try:
                        async for response in inner_stream(request_iterator, context):
                            yield response
                    finally:
                        guard.in_flight -= 1

            return grpc.stream_stream_rpc_method_handler(stream, handler.request_deserializer,
                                                         handler.response_serializer)
        return handler  # unary-stream / stream-unary: none served here


def _refusal(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    if handler.stream_stream is not None or handler.stream_unary is not None:
        async def refuse_stream(request_iterator, context):
            await context.abort(code, message)
            yield  # pragma: no cover - makes this an async generator

        return grpc.stream_stream_rpc_method_handler(refuse_stream, handler.request_deserializer,
                                                     handler.response_serializer)

    async def refuse(request, context):
        await context.abort(code, message)

    return grpc.unary_unary_rpc_method_handler(refuse, handler.request_deserializer, handler.response_serializer)


class GenericOnly:
    """A server as generated ``add_*Servicer_to_server`` functions see it, that takes their
    handlers as generic handlers only, not also as registered methods. grpc.aio keeps one
    pending accept per registered method and waits on all of them (``asyncio.wait``) for every
    call it accepts, so each registered method costs every call, ours too, ~1.4 µs (measured:
    12.3 µs per accept with one pending future, 17.8 with five). Health and reflection are
    called rarely; served generically, they cost those calls a dictionary lookup instead."""

    def __init__(self, server: grpc.aio.Server):
        self._server = server

    def add_generic_rpc_handlers(self, handlers) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service_name: str, handlers) -> None:
        pass  # the same handlers came through add_generic_rpc_handlers


def safe_deserializer(message_class):
    """``FromString`` that returns :class:`Undecodable` instead of raising on bad bytes."""
    parse, type_name = message_class.FromString, message_class.DESCRIPTOR.full_name

    def deserialize(data: bytes):
        try:
            return parse(data)
        except Exception as exc:  # noqa: BLE001 - DecodeError and friends: answered as INVALID_ARGUMENT
            return Undecodable(type_name, len(data), str(exc) or type(exc).__name__)

    return deserialize


def service_handler(servicer, full_name: str) -> grpc.GenericRpcHandler:
    """Method handlers for every RPC of ``full_name`` (from its descriptor), with safe deserializers."""
    from google.protobuf import descriptor_pool, message_factory

    descriptor = descriptor_pool.Default().FindServiceByName(full_name)
    handlers = {}
    for method in descriptor.methods:
        behaviour = getattr(servicer, method.name)
        request = safe_deserializer(message_factory.GetMessageClass(method.input_type))
        response = message_factory.GetMessageClass(method.output_type).SerializeToString
        if method.client_streaming and method.server_streaming:
            make = grpc.stream_stream_rpc_method_handler
        elif method.client_streaming:
            make = grpc.stream_unary_rpc_method_handler
        elif method.server_streaming:
            make = grpc.unary_stream_rpc_method_handler
        else:
            make = grpc.unary_unary_rpc_method_handler
        handlers[method.name] = make(behaviour, request_deserializer=request, response_serializer=response)
    return grpc.method_handlers_generic_handler(full_name, handlers)


class PredictorServer:
    """The predictor as an object: ``await start()``, ``port``, ``await stop()``.

    ``scorer`` may be given (tests swap models in directly); with ``settings.registry`` (or
    ``settings.model_file``, or a ``source``) a :class:`ModelWatcher` loads the production
    version and follows the alias; with ``settings.online`` and a source that has online
    models (the registry), a second one follows the ``online`` alias.
    """

    def __init__(self, settings: ServerSettings, *, scorer: Scorer | None = None, source: ModelSource | None = None):
        self.settings = settings
        self.telemetry = Telemetry()
        self.scorer = scorer or Scorer(max_batch_size=settings.max_batch_size)
        if self.scorer.batcher.on_batch is None:
            self.scorer.batcher.on_batch = self.telemetry.observe_batch
        self.health = health.aio.HealthServicer()
        self.guard = GuardInterceptor(auth_token=settings.auth_token, max_in_flight=settings.max_in_flight,
                                      telemetry=self.telemetry)
        self.telemetry.track_in_flight(lambda: self.guard.in_flight)
        if source is None and settings.registry is not None:
            # opening does not read: an empty registry is fine
            source = RegistrySource(settings.registry, keys=settings.signing_keys)
        elif source is None and settings.model_file is not None:
            source = FileSource(settings.model_file)
        self.watcher = (ModelWatcher(self.scorer, source, poll_interval=settings.poll_interval,
                                     backend=settings.backend, telemetry=self.telemetry, on_swap=self._on_swap)
                        if source is not None else None)
        self.online_watcher = (ModelWatcher(self.scorer, source, alias=ONLINE, poll_interval=settings.poll_interval,
                                            telemetry=self.telemetry, on_swap=self._on_online_swap)
                               if settings.online and callable(getattr(source, "online_version", None)) else None)
        shadow_source = (ShadowFileSource(settings.shadow_model_file) if settings.shadow_model_file is not None
                         else source if callable(getattr(source, "challenger_version", None)) else None)
        self.shadow_watcher = None
        if settings.shadow and shadow_source is not None:
            self.scorer.shadow = ShadowScorer(len(self.scorer.feature_names), settings.shadow_settings)
            self.telemetry.shadow_stats = self.scorer.shadow.stats
            self.shadow_watcher = ModelWatcher(self.scorer, shadow_source, alias=CHALLENGER,
                                               poll_interval=settings.poll_interval, backend=settings.backend,
                                               telemetry=self.telemetry, on_swap=self._on_shadow_swap)
        self.raw = (RawTransactions.open(settings.online_store, self.scorer.feature_names,
                                         on_unknown=self._count_unknown)
                    if settings.online_store else None)
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._watch_tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        s = self.settings
        options = [("grpc.max_receive_message_length", s.max_message_bytes),
                   ("grpc.max_send_message_length", s.max_message_bytes),
                   ("grpc.so_reuseport", 0)]  # a port already in use is an error, not silently shared
        server = grpc.aio.server(interceptors=[self.guard], options=options)
        server.add_generic_rpc_handlers((
            service_handler(service.ScorerService(self.scorer, self.telemetry, self.raw), service.SERVICE_NAME),
            service_handler(kserve.InferenceService(self.scorer, self.telemetry), kserve.SERVICE_NAME)))
        generic = GenericOnly(server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, generic)
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            reflection.aio.ReflectionServicer((*SERVED, HEALTH_SERVICE, reflection.SERVICE_NAME)), generic)
        address = f"{s.host}:{s.port}"
        if s.tls_cert is not None:
            credentials = grpc.ssl_server_credentials([(Path(s.tls_key).read_bytes(), Path(s.tls_cert).read_bytes())])
            self.port = server.add_secure_port(address, credentials)
        else:
            self.port = server.add_insecure_port(address)
        if not self.port:
            raise OSError(f"could not listen on {address}")
        if self.scorer.model is not None:
            self.telemetry.serving(self.scorer.model.version, self.scorer.model.backend.name)
        if self.scorer.online_model is not None:
            self.telemetry.serving_online(self.scorer.online_model.version, self.scorer.online_model.form.name)
        await self._set_health()
        await server.start()
        self._server = server
        if s.settle_gc:
            settle_gc()
        if s.metrics_port is not None:
            self.metrics_port = self.telemetry.serve_http(s.metrics_port, s.host)
        for watcher in (self.watcher, self.online_watcher, self.shadow_watcher):
            if watcher is not None:
                self._watch_tasks.append(asyncio.create_task(watcher.run(), name=f"{watcher.alias}-watcher"))
        log.info("predictor listening on %s:%s (%s), metrics on %s", s.host, self.port,
                 "TLS" if s.tls_cert else "plaintext", self.metrics_port)

    def _count_unknown(self, entity: str) -> None:
        self.telemetry.online_store_unknown.labels(entity).inc()

    async def _on_swap(self, model) -> None:
        self.telemetry.serving(model.version, model.backend.name)
        await self._set_health()
        if self.settings.settle_gc:
            settle_gc()

    def _on_online_swap(self, model) -> None:
        # No settle_gc here: snapshots arrive every few seconds, and a full collection each time
        # would be the latency spike settle_gc exists to avoid; an online model is a few objects.
        self.telemetry.serving_online(model.version, model.form.name)

    def _on_shadow_swap(self, model) -> None:
        self.telemetry.serving_shadow(None if model is None else model.version)

    async def _set_health(self) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if self.scorer.ready
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in ("", *SERVED):
            await self.health.set(name, status)

    async def stop(self, grace: float | None = None) -> None:
        """Drain: health NOT_SERVING, refuse new RPCs, let those in flight finish within ``grace``."""
        for task in self._watch_tasks:
            task.cancel()
        await asyncio.gather(*self._watch_tasks, return_exceptions=True)
        self._watch_tasks = []
        await self.health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(self.settings.grace if grace is None else grace)
        self.telemetry.close()
        if self.scorer.shadow is not None:
            self.scorer.shadow.flush()  # what was scored so far is logged
            self.scorer.shadow.close()
        self.scorer.close()

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


async def serve(settings: ServerSettings) -> None:
    """Run until SIGTERM or SIGINT, then drain and stop."""
    server = PredictorServer(settings)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"streamscore serve: listening on {settings.host}:{server.port}"
          + (f", metrics on :{server.metrics_port}" if server.metrics_port is not None else "")
          + f" (gRPC {grpc_io_in_effect()} I/O)", flush=True)
    await stop.wait()
    print(f"streamscore serve: draining ({server.guard.in_flight} RPCs in flight, grace {settings.grace:g} s)",
          flush=True)
    await server.stop()
    print("streamscore serve: stopped", flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamscore serve", description="The low-latency gRPC predictor: "
                                "streamscore.v1.Scorer and KServe v2 over the registry's production model.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--registry", help="model registry: a directory or gs://bucket/prefix (serves its production alias)")
    source.add_argument("--model-file", type=Path,
                        help="serve this XGBoost model file instead (benchmarks, debugging; no spec check)")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=50051, help="gRPC port (default 50051; 0 picks a free one)")
    p.add_argument("--metrics-port", type=int, default=9464,
                   help="Prometheus /metrics HTTP port (default 9464; -1 disables)")
    p.add_argument("--tls-cert", type=Path, help="PEM certificate chain: serve TLS (needs --tls-key)")
    p.add_argument("--tls-key", type=Path, help="PEM private key for --tls-cert")
    p.add_argument("--auth-token-file", type=Path,
                   help=f"require 'authorization: Bearer <token>' with the token in this file "
                        f"(or set {AUTH_TOKEN_ENV}); health checks stay open")
    p.add_argument("--auth-token", help=f"the token itself (visible in `ps`: prefer --auth-token-file or {AUTH_TOKEN_ENV})")
    p.add_argument("--max-in-flight", type=int, default=512, help="RPCs in flight before RESOURCE_EXHAUSTED (512)")
    p.add_argument("--max-message-bytes", type=int, default=4 * 1024 * 1024, help="largest message (4 MiB)")
    p.add_argument("--poll-interval", type=float, default=2.0, help="seconds between registry checks (2)")
    p.add_argument("--grace", type=float, default=10.0, help="seconds RPCs in flight get on shutdown (10)")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="auto (native compiled trees when possible), native, or xgboost")
    p.add_argument("--max-batch-size", type=int, default=256, help="rows per micro-batch (256)")
    p.add_argument("--no-online", dest="online", action="store_false",
                   help="do not load the registry's online (River) model: responses carry no online_score "
                        "(for latency-critical deployments)")
    p.add_argument("--grpc-io", choices=GRPC_IO, default="iomgr",
                   help="gRPC core's I/O: iomgr (default: the completion-queue thread does the socket I/O; less "
                        "CPU and one thread hop fewer per call) or event-engine (gRPC's default since 1.80)")
    p.add_argument("--event-loop", choices=("auto", "asyncio", "uvloop"), default="auto",
                   help="auto: uvloop when installed (less gRPC overhead per request), else asyncio")
    p.add_argument("--online-store", default=None, metavar="URL",
                   help="the online feature store the streaming job writes (redis://HOST:PORT/DB or "
                        "rediss://:PASSWORD@HOST:PORT/DB): enables Score(transaction=...)")
    p.add_argument("--no-shadow", dest="shadow", action="store_false",
                   help="do not score the registry's challenger alias in shadow")
    p.add_argument("--shadow-log", type=Path, metavar="DIR",
                   help="write one JSON line per event scored in shadow to DIR/shadow-HOST-PID.jsonl (read by "
                        "`streamscore controller --shadow-log`); default: metrics only")
    p.add_argument("--shadow-log-max-mb", type=float, default=64.0,
                   help="rotate the shadow log past this size (MB; one old file kept; default 64)")
    p.add_argument("--shadow-alert-threshold", type=float, default=0.5,
                   help="score above which an event is an alert, for the shadow's alert and disagreement counts (0.5)")
    p.add_argument("--shadow-model-file", type=Path,
                   help="score this XGBoost model file in shadow instead of the registry's challenger "
                        "(benchmarks, debugging)")
    p.add_argument("--log-level", default="INFO", help="logging level (INFO)")
    add_trust_arguments(p, signs=False)
    return p


def settings_from_args(args: argparse.Namespace, env=os.environ) -> ServerSettings:
    token = args.auth_token or env.get(AUTH_TOKEN_ENV) or None
    if args.auth_token_file is not None:
        token = args.auth_token_file.read_text().strip()
        if not token:
            raise ValueError(f"--auth-token-file {args.auth_token_file} is empty")
    if args.registry is not None and not args.registry.startswith("gs://") and not Path(args.registry).is_dir():
        raise ValueError(f"--registry {args.registry} is not a directory (or gs://bucket/prefix)")
    if args.model_file is not None and not args.model_file.is_file():
        raise ValueError(f"--model-file {args.model_file} is not a file")
    keys = keys_from_args(args, signs=False, env=env) if args.registry is not None else None
    if args.shadow_model_file is not None and not args.shadow_model_file.is_file():
        raise ValueError(f"--shadow-model-file {args.shadow_model_file} is not a file")
    shadow = ShadowSettings(log_dir=args.shadow_log, log_max_bytes=int(args.shadow_log_max_mb * 1024 * 1024),
                            alert_threshold=args.shadow_alert_threshold)
    return ServerSettings(registry=args.registry, model_file=args.model_file, host=args.host, port=args.port,
                          metrics_port=None if args.metrics_port < 0 else args.metrics_port,
                          tls_cert=args.tls_cert, tls_key=args.tls_key, auth_token=token,
                          max_in_flight=args.max_in_flight, max_message_bytes=args.max_message_bytes,
                          poll_interval=args.poll_interval, grace=args.grace, backend=args.backend,
                          max_batch_size=args.max_batch_size, settle_gc=True, online=args.online,
                          grpc_io=args.grpc_io, signing_keys=keys, allow_unsigned=args.allow_unsigned,
                          online_store=args.online_store, shadow=args.shadow,
                          shadow_model_file=args.shadow_model_file, shadow_settings=shadow)


def run(argv: list[str] | None = None) -> int:
    """``streamscore serve``: serve until SIGTERM/SIGINT, then drain."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args)
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    restart_with_grpc_io(settings, argv)  # returns once gRPC's I/O is the one asked for
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    loop_factory = None
    if args.event_loop != "asyncio":
        try:
            import uvloop
            loop_factory = uvloop.new_event_loop
        except ImportError:
            if args.event_loop == "uvloop":
                parser.error("--event-loop uvloop: uvloop is not installed")
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(run())
