"""The producer: replay a transactions file onto Pub/Sub, with labels arriving later.

``streamscore publish --input TX (--speedup X | --rate R)`` reads a dataset
(:func:`streaming.io.datasets.read_table`) and publishes one stream, ordered by publish time:

* every transaction at its event time, to the transactions topic;
* unless ``--no-labels`` (and only when the file has ``TX_FRAUD``), its label at
  ``reported_at = event_time + delay``, to the labels topic: frauds are reported uniformly
  between 1 and 7 days later (``--fraud-delay-days MIN,MAX``), genuine outcomes are
  confirmed after 7 days (``--genuine-delay-days D``), drawn with ``--seed``.

Ties are broken by kind (transactions first), then by dataset order. Labels reported after
the last transaction are still published, so the stream runs on past it by the delay.

Pacing: ``--speedup X`` publishes each message when ``(publish time - first publish time) / X``
wall seconds have passed since the start; ``--rate R`` publishes ``R`` messages per second,
transactions and labels alike. A very high rate means "as fast as possible".

The client library reads ``PUBSUB_EMULATOR_HOST`` itself; ``--emulator-host HOST:PORT``
points at an emulator explicitly (without credentials). Every publish is confirmed; a failed
one is retried (bounded, with backoff) so nothing is lost, and a permanent error (no such
topic, permission denied) stops the run with its reason.
"""

from __future__ import annotations

import argparse
import heapq
import math
import queue
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from streaming.io.datasets import DatasetError, iter_labels, iter_transactions, read_table
from streaming.io.encoding import encode
from streaming.io.pubsub_local import DEFAULT_PROJECT, topic_path

PROG = "streamscore publish"
NS_PER_DAY = 86_400 * 10**9
TRANSACTION, LABEL = 0, 1  # the kind sort key: transactions first at equal times


class PublishError(RuntimeError):
    """Publishing failed for good (after retries, or a permanent error)."""


@dataclass(frozen=True)
class LabelDelay:
    """When labels become known: frauds uniformly in ``fraud_days``, genuine after ``genuine_days``."""

    fraud_days: tuple[float, float] = (1.0, 7.0)
    genuine_days: float = 7.0

    def __post_init__(self):
        low, high = self.fraud_days
        if not (math.isfinite(low) and math.isfinite(high) and 0 <= low <= high):
            raise ValueError(f"fraud delay must be MIN,MAX days with 0 <= MIN <= MAX, got {low:g},{high:g}")
        if not (math.isfinite(self.genuine_days) and self.genuine_days >= 0):
            raise ValueError(f"genuine delay must be a number of days >= 0, got {self.genuine_days:g}")


@dataclass(frozen=True)
class TopicPaths:
    """Full topic paths; ``labels=None`` publishes no labels."""

    transactions: str
    labels: str | None = None

    @classmethod
    def for_project(cls, project: str, transactions: str = "transactions", labels: str | None = "labels") -> TopicPaths:
        return cls(topic_path(project, transactions), topic_path(project, labels) if labels else None)


@dataclass
class PublishReport:
    """What was published (confirmed by the server) and how long it took, in seconds."""

    transactions: int = 0
    labels: int = 0
    elapsed: float = 0.0
    retries: int = 0

    @property
    def messages(self) -> int:
        return self.transactions + self.labels

    @property
    def rate(self) -> float:
        return self.messages / self.elapsed if self.elapsed > 0 else float("inf")

    def summary(self, project: str) -> str:
        rate = f"{self.rate:,.0f} msg/s" if math.isfinite(self.rate) else "instant"
        return (f"published {self.transactions} transactions and {self.labels} labels to {project} "
                f"in {self.elapsed:.1f} s ({rate})")


# --------------------------------------------------------------------------- the timeline


def schedule_labels(df: pd.DataFrame, delay: LabelDelay = LabelDelay(), seed: int = 0) -> np.ndarray:
    """``reported_at`` (``datetime64[ns]``, whole seconds) for every row of ``df`` (needs ``TX_FRAUD``).

    One uniform draw per row, so the result depends only on the row order and the seed.
    """
    if "TX_FRAUD" not in df.columns:
        raise DatasetError("the dataset has no TX_FRAUD column, so it has no labels to publish")
    rng = np.random.default_rng(seed)
    low, high = delay.fraud_days
    fraud_days = rng.uniform(low, high, size=len(df))
    days = np.where(df["TX_FRAUD"].to_numpy() == 1, fraud_days, delay.genuine_days)
    seconds = np.floor(days * 86_400).astype("int64")
    event = df["TX_DATETIME"].to_numpy().astype("datetime64[ns]")
    return event + seconds.astype("timedelta64[s]").astype("timedelta64[ns]")


def _timeline(df: pd.DataFrame, reported_at: np.ndarray | None) -> Iterator[tuple[int, int, int, object]]:
    """``(publish time ns, kind, seq, event)`` in publish order: two sorted streams merged."""
    tx_times = df["TX_DATETIME"].to_numpy().astype("datetime64[ns]").astype("int64").tolist()
    transactions = ((t, TRANSACTION, i, e) for i, (t, e) in enumerate(zip(tx_times, iter_transactions(df))))
    if reported_at is None:
        yield from transactions
        return
    rep = np.asarray(reported_at, dtype="datetime64[ns]")
    order = np.lexsort((np.arange(len(df)), rep.astype("int64")))  # stable: ties keep dataset order
    labels = ((t, LABEL, i, e) for i, t, e in zip(order.tolist(), rep[order].astype("int64").tolist(),
                                                  iter_labels(df.iloc[order], rep[order])))
    yield from heapq.merge(transactions, labels)


# --------------------------------------------------------------------------- publishing

_PERMANENT = ("NotFound", "PermissionDenied", "InvalidArgument", "Unauthenticated", "FailedPrecondition")


@dataclass
class _Confirmer:
    """Tracks outstanding publishes; re-publishes failed ones with bounded exponential backoff."""

    publisher: object
    report: PublishReport
    sleep: Callable[[float], None]
    max_attempts: int = 5
    backoff: float = 0.5
    outstanding: int = 0
    _done: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)

    def publish(self, topic: str, kind: int, data: bytes, attrs: dict[str, str], attempt: int = 1,
                key: str = "") -> None:
        future: Future = (self.publisher.publish(topic, data, ordering_key=key, **attrs) if key
                          else self.publisher.publish(topic, data, **attrs))
        self.outstanding += 1
        future.add_done_callback(lambda f: self._done.put((f, topic, kind, data, attrs, attempt, key)))

    def drain(self, block: bool = False, timeout: float = 600.0) -> None:
        """Handle finished publishes; with ``block``, wait until none is outstanding."""
        while self.outstanding:
            try:
                item = self._done.get(timeout=timeout) if block else self._done.get_nowait()
            except queue.Empty:
                if block:
                    raise PublishError(f"{self.outstanding} publishes unconfirmed after {timeout:g} s") from None
                return
            self.outstanding -= 1
            future, topic, kind, data, attrs, attempt, key = item
            error = future.exception()
            if error is None:
                if kind == TRANSACTION:
                    self.report.transactions += 1
                else:
                    self.report.labels += 1
                continue
            name = type(error).__name__
            if name in _PERMANENT or attempt >= self.max_attempts:
                tries = "" if name in _PERMANENT else f" after {attempt} attempts"
                raise PublishError(f"publishing to {topic} failed{tries}: {name}: {error}") from error
            self.report.retries += 1
            self.sleep(self.backoff * 2 ** (attempt - 1))
            if key:  # a failure pauses the ordering key until resumed
                self.publisher.resume_publish(topic, key)
            self.publish(topic, kind, data, attrs, attempt + 1, key)


def publish_dataset(
    df: pd.DataFrame,
    publisher,
    topics: TopicPaths,
    *,
    speedup: float | None = None,
    rate: float | None = None,
    labels: bool = True,
    label_delay: LabelDelay = LabelDelay(),
    seed: int = 0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    progress: bool = False,
    max_attempts: int = 5,
    order_by_customer: bool = False,
    on_publish: Callable[[int, object], None] | None = None,
) -> PublishReport:
    """Publish ``df`` (reference layout) and its labels in publish-time order; wait for every confirmation.

    Exactly one of ``speedup`` / ``rate`` paces the stream (see the module docstring). Labels
    are published when ``labels`` is true, ``topics.labels`` is set and ``df`` has ``TX_FRAUD``.
    ``publisher`` needs ``publish(topic, data, **attrs) -> Future``. ``clock``/``sleep``
    are injected so pacing can be tested without waiting. ``order_by_customer`` publishes
    with the customer id as ordering key (the publisher must enable message ordering), so a
    subscription with ordering delivers each card's events in event-time order.
    ``on_publish(kind, event)`` is called as each message is handed to the client
    (``kind`` is :data:`TRANSACTION` or :data:`LABEL`), e.g. to time end-to-end latency.
    """
    if (speedup is None) == (rate is None):
        raise ValueError("exactly one of speedup and rate must be given")
    pace = speedup if speedup is not None else rate
    if not (pace > 0 and math.isfinite(pace)):
        raise ValueError(f"{'speedup' if speedup is not None else 'rate'} must be a finite number > 0, got {pace}")
    if not df["TX_DATETIME"].is_monotonic_increasing:
        df = df.sort_values("TX_DATETIME", kind="stable", ignore_index=True)
    with_labels = labels and topics.labels is not None and "TX_FRAUD" in df.columns
    reported_at = schedule_labels(df, label_delay, seed) if with_labels else None
    total = len(df) * (2 if with_labels else 1)
    destination = {TRANSACTION: topics.transactions, LABEL: topics.labels}

    from tqdm import tqdm

    report = PublishReport()
    confirmer = _Confirmer(publisher, report, sleep, max_attempts=max_attempts)
    bar = tqdm(total=total, disable=not progress, unit="msg", desc="publish", file=sys.stderr, smoothing=0.1)
    start = clock()
    first_ns = None
    try:
        for i, (t_ns, kind, _, event) in enumerate(_timeline(df, reported_at)):
            if speedup is not None:
                first_ns = t_ns if first_ns is None else first_ns
                due = start + (t_ns - first_ns) / 1e9 / speedup
            else:
                due = start + i / rate
            lag = due - clock()
            if lag > 0:
                sleep(lag)
            data, attrs = encode(event)
            confirmer.publish(destination[kind], kind, data, attrs,
                              key=event.customer_id if order_by_customer else "")
            if on_publish is not None:
                on_publish(kind, event)
            bar.update(1)
            if confirmer.outstanding >= 1000:
                confirmer.drain()
        confirmer.drain(block=True)
    finally:
        bar.close()
    report.elapsed = clock() - start
    return report


# --------------------------------------------------------------------------- command line


class _Parser(argparse.ArgumentParser):
    """argparse, but errors are one line: ``streamscore publish: <reason>``, exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message}\n")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def _days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a number of days >= 0, got {text!r}")
    return value


def _day_range(text: str) -> tuple[float, float]:
    parts = text.split(",")
    try:
        low, high = (float(parts[0]), float(parts[-1])) if len(parts) in (1, 2) else (math.nan, math.nan)
    except ValueError:
        low = high = math.nan
    if not (math.isfinite(low) and math.isfinite(high) and 0 <= low <= high):
        raise argparse.ArgumentTypeError(f"must be MIN,MAX days with 0 <= MIN <= MAX (or one number), got {text!r}")
    return low, high


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Replay a transactions file onto Pub/Sub: transactions at their "
                     "event time, labels when they become known.")
    parser.add_argument("--input", required=True, metavar="TX", help="transactions file (.parquet or .jsonl)")
    pace = parser.add_mutually_exclusive_group(required=True)
    pace.add_argument("--speedup", type=_positive, metavar="X",
                      help="replay X times faster than event time (1 = real time)")
    pace.add_argument("--rate", type=_positive, metavar="R",
                      help="publish R messages per second (transactions and labels both count)")
    parser.add_argument("--project", default=DEFAULT_PROJECT, help="GCP project (default: %(default)s)")
    parser.add_argument("--emulator-host", metavar="HOST:PORT",
                        help="use the Pub/Sub emulator there (default: $PUBSUB_EMULATOR_HOST, else real Pub/Sub)")
    parser.add_argument("--transactions-topic", default="transactions", metavar="NAME", help="default: %(default)s")
    parser.add_argument("--labels-topic", default="labels", metavar="NAME", help="default: %(default)s")
    parser.add_argument("--no-labels", action="store_true", help="publish transactions only")
    parser.add_argument("--fraud-delay-days", type=_day_range, default=(1.0, 7.0), metavar="MIN,MAX",
                        help="frauds are reported uniformly this many days later (default: 1,7)")
    parser.add_argument("--genuine-delay-days", type=_days, default=7.0, metavar="D",
                        help="genuine outcomes are confirmed D days later (default: %(default)g)")
    parser.add_argument("--ordering-key", choices=("customer", "none"), default="customer",
                        help="Pub/Sub ordering key: 'customer' keeps each card's events in order on "
                             "subscriptions with message ordering (default: %(default)s)")
    parser.add_argument("--limit", type=_count, metavar="N", help="publish only the first N transactions")
    parser.add_argument("--seed", type=int, default=0, help="seed for the label delays (default: %(default)s)")
    parser.add_argument("--create-topics", action="store_true", help="create the topics first if missing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def make_publisher(emulator_host: str | None = None, ordering: bool = False):
    """The CLI's ``PublisherClient``: batches of up to 1000 messages / 1 MB / 50 ms, no ordering,
    at most 20,000 messages (64 MB) in flight (``publish`` blocks beyond). With ``emulator_host``
    it talks to that emulator without credentials; otherwise the library decides
    (``$PUBSUB_EMULATOR_HOST`` or real Pub/Sub with application-default credentials).
    """
    from google.cloud import pubsub_v1

    from streaming.io.pubsub_local import publisher_client

    batch = pubsub_v1.types.BatchSettings(max_messages=1000, max_bytes=1_000_000, max_latency=0.05)
    flow = pubsub_v1.types.PublishFlowControl(
        message_limit=20_000, byte_limit=64 * 1024 * 1024,
        limit_exceeded_behavior=pubsub_v1.types.LimitExceededBehavior.BLOCK)
    options = pubsub_v1.types.PublisherOptions(enable_message_ordering=ordering, flow_control=flow)
    if emulator_host:
        return publisher_client(emulator_host, batch, options)
    return pubsub_v1.PublisherClient(batch, options)


def _answers(host_port: str, timeout: float = 5.0) -> bool:
    """Whether something accepts TCP connections at ``HOST:PORT``."""
    import socket

    host, _, port = host_port.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "localhost", int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def _create_topics(publisher, paths: TopicPaths) -> None:
    from google.api_core.exceptions import AlreadyExists

    for path in (paths.transactions, paths.labels):
        if path is not None:
            try:
                publisher.create_topic(name=path)
            except AlreadyExists:
                pass


def run(argv: list[str] | None = None) -> int:
    """``streamscore publish``: returns the exit code (0 ok, 1 bad input or failed publish, 2 bad arguments)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        delay = LabelDelay(args.fraud_delay_days, args.genuine_delay_days)
        df = read_table(args.input)
    except (DatasetError, ValueError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    if args.limit is not None:
        df = df.iloc[: args.limit]
    labels = not args.no_labels
    if labels and "TX_FRAUD" not in df.columns:
        print(f"{PROG}: note: {args.input!r} has no TX_FRAUD column; publishing transactions only", file=sys.stderr)
        labels = False
    paths = TopicPaths.for_project(args.project, args.transactions_topic, args.labels_topic if labels else None)
    progress = not args.no_progress and sys.stderr.isatty()
    from google.api_core.exceptions import GoogleAPICallError, RetryError
    from google.auth.exceptions import GoogleAuthError

    if args.emulator_host and not _answers(args.emulator_host):
        print(f"{PROG}: no Pub/Sub emulator answers at {args.emulator_host}", file=sys.stderr)
        return 1
    try:
        ordered = args.ordering_key == "customer"
        publisher = make_publisher(args.emulator_host, ordering=ordered)
    except GoogleAuthError as exc:
        print(f"{PROG}: no Pub/Sub credentials ({exc}); pass --emulator-host HOST:PORT for the emulator", file=sys.stderr)
        return 1
    try:
        if args.create_topics:
            _create_topics(publisher, paths)
        report = publish_dataset(df, publisher, paths, speedup=args.speedup, rate=args.rate, labels=labels,
                                 label_delay=delay, seed=args.seed, progress=progress,
                                 order_by_customer=ordered)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except (PublishError, GoogleAPICallError, RetryError, ValueError) as exc:  # one line, not a traceback
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"{PROG}: {reason}", file=sys.stderr)
        return 1
    finally:
        publisher.stop()
        publisher.transport.close()
    print(report.summary(args.project))
    return 0


if __name__ == "__main__":
    sys.exit(run())
