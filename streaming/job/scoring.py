"""Scoring featurised transactions with the gRPC predictor, from inside the streaming job.

* One gRPC channel per worker process and target, kept in a module-level cache: on the local
  runner ``setup()``/``teardown()`` run for every bundle, so a DoFn-owned channel would be
  reconnected for every ten messages.
* A bundle's transactions are scored with one call, with a deadline: a KServe v2
  ``ModelInfer`` whose input tensor holds the whole batch (``[N, 15]`` FP64, raw bytes: one
  message each way, where a ``ScoreStream`` of N messages costs the client and the server a
  gRPC message each). If the predictor refuses that batch as invalid, the batch is scored
  again over ``ScoreStream``, whose per-message errors tell which transactions were refused.
* Transport failures (predictor down, deadline exceeded, overloaded) are retried with capped
  exponential backoff **without limit**: the job waits for the predictor, it never drops or
  skips an event. A message the predictor rejects (e.g. a NaN feature) is not retried: it
  goes to the dead-letter output with the predictor's reason, stage ``score``.
* A secured predictor (``serve --tls-cert/--tls-key --auth-token-file``): the channel is TLS
  with the given root certificates, and every call carries ``authorization: Bearer <token>``.
  The token is read from a file (a mounted secret, e.g. Secret Manager through the CSI driver
  or a Kubernetes Secret) on the worker, never shipped in the pipeline graph. A refused
  credential (``UNAUTHENTICATED``/``PERMISSION_DENIED``) is the job's configuration, not the
  event's fault: it is logged as an error, the token file is read again (so a rotated token is
  picked up) and the call is retried like an outage — events wait, none is dead-lettered or lost.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import apache_beam as beam
import grpc
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.metrics import Metrics
from apache_beam.utils.windowed_value import WindowedValue

import numpy as np

from protos.kserve.v2 import grpc_predict_v2_pb2 as kserve_pb
from protos.kserve.v2 import grpc_predict_v2_pb2_grpc as kserve_grpc
from protos.streamscore.v1 import scorer_pb2, scorer_pb2_grpc
from streaming.io.events import Score
from streaming.io.encoding import dead_letter_of_event, encode
from streaming.features.spec import FeatureSpec
from streaming.features.stream import FeaturedTransaction
from streaming.features.transaction import time_ns
from streaming.job.example_log import LogRecord
from streaming.job.guard import COUNTER as GUARD_COUNTER, element_dead_letter, failure_reason

log = logging.getLogger(__name__)

#: Codes worth retrying: the predictor is down, restarting, overloaded or slow.
RETRYABLE = frozenset({
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED, grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
})

#: Credentials refused: retried (with the token file read again), never blamed on the events.
AUTH_FAILURES = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})

_CHANNELS: dict[tuple, grpc.Channel] = {}
_LOCK = threading.Lock()

#: For a ``dns:///`` target (e.g. a Kubernetes headless Service, one A record per predictor pod):
#: spread calls over every resolved address instead of gRPC's default pick_first (one pod per channel).
ROUND_ROBIN_SERVICE_CONFIG = '{"loadBalancingConfig": [{"round_robin": {}}]}'


def channel_options(target: str) -> list[tuple[str, object]]:
    """The channel options for ``target``; ``dns:`` and address-list (``ipv4:``/``ipv6:``) targets balance per call."""
    options: list[tuple[str, object]] = [
        ("grpc.keepalive_time_ms", 30_000), ("grpc.max_receive_message_length", 16 * 1024 * 1024)]
    if target.startswith(("dns:", "ipv4:", "ipv6:")):
        options.append(("grpc.service_config", ROUND_ROBIN_SERVICE_CONFIG))
    return options


def channel_for(target: str, tls_roots: bytes | None = None) -> grpc.Channel:
    """The process-wide channel to ``target`` (created once, reused across bundles); TLS when
    ``tls_roots`` (PEM root certificates) is given, plaintext otherwise."""
    key = (target, tls_roots)
    with _LOCK:
        channel = _CHANNELS.get(key)
        if channel is None:
            options = channel_options(target)
            channel = (grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=tls_roots), options)
                       if tls_roots is not None else grpc.insecure_channel(target, options=options))
            _CHANNELS[key] = channel
        return channel


def read_token(path: str) -> str:
    """A bearer token from a file (surrounding whitespace dropped); a clear error when it is empty."""
    token = Path(path).read_text(encoding="utf-8").strip()
    if not token:
        raise ValueError(f"predictor token file {path} is empty")
    return token


def read_tls_roots(path: str) -> bytes:
    data = Path(path).read_bytes()
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise ValueError(f"predictor TLS roots {path}: expected PEM certificates (-----BEGIN CERTIFICATE-----)")
    return data


@dataclass(frozen=True)
class Scored:
    """The predictor's answer for one transaction: a score, or the reason it was refused."""

    transaction_id: str
    score: float | None
    model_version: str
    online_score: float | None = None
    online_model_version: str | None = None
    error: str | None = None


@dataclass
class RetryPolicy:
    """Capped exponential backoff; ``max_attempts=None`` retries for ever (the job's default)."""

    initial: float = 0.1
    maximum: float = 5.0
    multiplier: float = 2.0
    max_attempts: int | None = None

    def delays(self):
        delay, attempt = self.initial, 1
        while self.max_attempts is None or attempt < self.max_attempts:
            yield delay
            delay, attempt = min(delay * self.multiplier, self.maximum), attempt + 1


class PredictorUnavailable(RuntimeError):
    """Raised only when a finite retry policy is exhausted."""


class ScoringClient:
    """Scores batches of feature vectors (KServe ``ModelInfer``, else ``ScoreStream``), retrying transport failures."""

    def __init__(self, target: str, *, deadline: float = 10.0, token: str | None = None,
                 token_file: str | None = None, tls_roots: bytes | None = None,
                 retry: RetryPolicy | None = None, sleep: Callable[[float], None] = time.sleep):
        if token is not None and token_file is not None:
            raise ValueError("give the predictor token or its file, not both")
        self.target = target
        self.deadline = deadline
        self.token_file = token_file
        self.token = read_token(token_file) if token_file is not None else token
        self.tls_roots = tls_roots
        self.retry = retry or RetryPolicy()
        self.sleep = sleep
        self.retries = 0
        self.auth_failures = 0

    def _channel(self) -> grpc.Channel:
        return channel_for(self.target, self.tls_roots)

    def _stub(self) -> scorer_pb2_grpc.ScorerStub:
        return scorer_pb2_grpc.ScorerStub(self._channel())

    @property
    def _metadata(self):
        return (("authorization", f"Bearer {self.token}"),) if self.token else None

    def _infer(self, items: Sequence[tuple[str, Sequence[float]]]) -> list[Scored]:
        """The whole batch in one KServe v2 ``ModelInfer`` (raw FP64 tensor)."""
        X = np.ascontiguousarray(np.asarray([values for _, values in items], dtype="<f8"))
        request = kserve_pb.ModelInferRequest(model_name="production", raw_input_contents=[X.tobytes()])
        request.inputs.add(name="features", datatype="FP64", shape=list(X.shape))
        stub = kserve_grpc.GRPCInferenceServiceStub(self._channel())
        response = stub.ModelInfer(request, timeout=self.deadline, metadata=self._metadata)
        outputs = {out.name: np.frombuffer(raw, dtype="<f8")
                   for out, raw in zip(response.outputs, response.raw_output_contents)}
        scores, online = outputs.get("score"), outputs.get("online_score")
        if scores is None or len(scores) != len(items) or (online is not None and len(online) != len(items)):
            raise grpc.RpcError(f"predictor answered {len(response.outputs)} outputs for {len(items)} rows")
        online_version = (response.parameters["online_model_version"].string_param
                          if online is not None and "online_model_version" in response.parameters else None)
        return [Scored(tid, float(scores[i]), response.model_version,
                       None if online is None else float(online[i]), online_version)
                for i, (tid, _) in enumerate(items)]

    def _call(self, requests: list[scorer_pb2.ScoreRequest]) -> list[scorer_pb2.ScoreResponse]:
        responses = list(self._stub().ScoreStream(iter(requests), timeout=self.deadline, metadata=self._metadata))
        if len(responses) != len(requests):
            raise grpc.RpcError(f"predictor answered {len(responses)} of {len(requests)} messages")
        return responses

    def _stream(self, items: Sequence[tuple[str, Sequence[float]]]) -> list[Scored]:
        """Message by message over ``ScoreStream``: each refused one gets the predictor's reason."""
        requests = [scorer_pb2.ScoreRequest(transaction_id=tid, features=scorer_pb2.FeatureVector(values=list(values)))
                    for tid, values in items]
        out = []
        for response in self._call(requests):
            if response.HasField("error") and response.error.code:
                out.append(Scored(response.transaction_id, None, response.model_version,
                                  error=f"predictor rejected the features: {response.error.message}"))
            else:
                out.append(Scored(
                    response.transaction_id, response.score, response.model_version,
                    response.online_score if response.HasField("online_score") else None,
                    response.online_model_version if response.HasField("online_model_version") else None))
        return out

    def score_many(self, items: Sequence[tuple[str, Sequence[float]]]) -> list[Scored]:
        """``[(transaction_id, features)]`` → one :class:`Scored` each, in order."""
        if not items:
            return []
        delays = self.retry.delays()
        batched = True
        while True:
            try:
                return self._infer(items) if batched else self._stream(items)
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
                if batched and code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNIMPLEMENTED):
                    batched = False  # some row is refused (or no KServe here): find out which, one message each
                    continue
                if code in AUTH_FAILURES:
                    self.auth_failures += 1
                    log.error("predictor at %s refused the job's credentials (%s: %s); %d messages wait: fix the "
                              "token%s", self.target, code.name, exc.details(), len(items),
                              f" in {self.token_file} (read again before each retry)" if self.token_file else "")
                elif code not in RETRYABLE and hasattr(exc, "code"):
                    # the whole call was refused (e.g. auth): every message gets the reason
                    reason = f"predictor refused the batch: {code.name}: {exc.details()}"
                    return [Scored(tid, None, "", error=reason) for tid, _ in items]
                delay = next(delays, None)
                if delay is None:
                    raise PredictorUnavailable(f"predictor at {self.target} unavailable: {exc}") from exc
                self.retries += 1
                log.warning("predictor at %s: %s; retrying %d messages in %.1f s", self.target,
                            code.name if hasattr(code, "name") else code, len(items), delay)
                self.sleep(delay)
                if code in AUTH_FAILURES and self.token_file is not None:
                    with contextlib.suppress(OSError, ValueError):  # mid-rotation: keep the last good one
                        self.token = read_token(self.token_file)


# --------------------------------------------------------------------------- Beam

DEAD_LETTER = "dead_letter"
ALERTS = "alerts"
LOGGED = "logged"  # with log_records: (terminal_id, LogRecord) per scored transaction, for the example log


def score_message(featured: FeaturedTransaction, scored: Scored, spec: FeatureSpec) -> PubsubMessage:
    """The ``scores`` topic message for a scored transaction (see the event contract)."""
    tx = featured.transaction
    event = Score(tx.transaction_id, tx.event_time, scored.score, scored.model_version,
                  dict(zip(spec.names, featured.features)), scored.online_score, scored.online_model_version)
    return PubsubMessage(*encode(event))


class ScoreFn(beam.DoFn):
    """FeaturedTransaction → score message (main), alert message (``alerts``), DeadLetter (``dead_letter``).

    Buffers the bundle (up to ``max_batch``) and scores it with one ``ScoreStream`` call.
    """

    def __init__(self, target: str, spec: FeatureSpec, *, alert_threshold: float = 0.5, deadline: float = 10.0,
                 max_batch: int = 500, token: str | None = None, token_file: str | None = None,
                 tls_ca_file: str | None = None, log_records: bool = False):
        self.target = target
        self.log_records = log_records
        self.spec = spec
        self.alert_threshold = alert_threshold
        self.deadline = deadline
        self.max_batch = max_batch
        self.token = token
        self.token_file = token_file  # read on the worker: the token is not pickled into the pipeline
        self.tls_ca_file = tls_ca_file
        self._scored = Metrics.counter(self.__class__, "scored")
        self._alerts = Metrics.counter(self.__class__, "alerts")
        self._rejected = Metrics.counter(self.__class__, "rejected")
        self._retries = Metrics.counter(self.__class__, "retries")
        self._guard_failures = Metrics.counter(self.__class__, GUARD_COUNTER)
        self._auth_failures = Metrics.counter(self.__class__, "auth_failures")

    def setup(self):
        self._client = ScoringClient(self.target, deadline=self.deadline, token=self.token, token_file=self.token_file,
                                     tls_roots=read_tls_roots(self.tls_ca_file) if self.tls_ca_file else None)

    def start_bundle(self):
        self._buffer = []

    def process(self, featured, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
        self._buffer.append((featured, timestamp, window))
        if len(self._buffer) >= self.max_batch:
            yield from self._flush()

    def finish_bundle(self):
        yield from self._flush()

    def _flush(self):
        batch, self._buffer = self._buffer, []
        if not batch:
            return
        before, refused = self._client.retries, self._client.auth_failures
        try:
            results = self._client.score_many([(f.transaction.transaction_id, f.features) for f, _, _ in batch])
        except Exception as exc:  # the last-resort guard (streaming.job.guard): the batch's dead letters, not a crash
            self._guard_failures.inc()
            reason = failure_reason("score", exc)
            results = [Scored(f.transaction.transaction_id, None, "", error=reason) for f, _, _ in batch]
        self._retries.inc(self._client.retries - before)
        self._auth_failures.inc(self._client.auth_failures - refused)
        for (featured, timestamp, window), scored in zip(batch, results):
            try:
                outputs = list(self._outputs(featured, scored, timestamp, window))
            except Exception as exc:
                self._guard_failures.inc()
                outputs = [beam.pvalue.TaggedOutput(DEAD_LETTER, WindowedValue(
                    element_dead_letter(featured, failure_reason("score", exc), "score"), timestamp, [window]))]
            yield from outputs

    def _outputs(self, featured, scored: Scored, timestamp, window):
        if scored.error is not None:
            self._rejected.inc()
            dead = dead_letter_of_event(featured.transaction, scored.error, "score")
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, WindowedValue(dead, timestamp, [window]))
            return
        message = score_message(featured, scored, self.spec)
        self._scored.inc()
        yield WindowedValue(message, timestamp, [window])
        if scored.score >= self.alert_threshold:
            self._alerts.inc()
            yield beam.pvalue.TaggedOutput(ALERTS, WindowedValue(message, timestamp, [window]))
        if self.log_records:
            tx = featured.transaction
            record = LogRecord(tx.transaction_id, time_ns(tx.event_time), tx.customer_id, tx.terminal_id,
                               tuple(featured.features), scored.score, scored.model_version,
                               scored.online_score, scored.online_model_version)
            yield beam.pvalue.TaggedOutput(LOGGED, WindowedValue((tx.terminal_id, record), timestamp, [window]))
