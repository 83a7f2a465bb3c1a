"""``streamscore stream``: the Beam streaming job.

    transactions ─┐                                  ┌─ ScoreFn ─ scores topic (+ alerts topic)
                  ├─ ParsePubsubFn ─ StreamFeatures ─┤
    labels ───────┘        │              │          └─ examples ─ LearnerFn ─ monitoring topic
                           │              │     ScoreFn + labels ─ ServedOnline ─ monitoring topic
                           └──────────────┴─── (and ScoreFn) ─ dead-letter topic

With ``--predictor HOST:PORT`` each featurised transaction is scored over gRPC and published
to ``scores`` (and ``alerts`` above ``--alert-threshold``); with ``--registry`` too, labels
train the online River model (snapshots to the registry, drift events to ``monitoring``), and
the scores each transaction was served are joined with its label (``online_served`` events:
AP and CP@100 as served, per day, :mod:`streaming.job.served`).
Without ``--predictor`` the job publishes the features themselves to ``--features-topic``.

Every message read is either scored (or featurised) or written to the dead-letter topic with
the reason, the stage and its original bytes and attributes. Runner flags pass through to
Beam; without ``--runner`` the job runs on the local ``BundleBasedDirectRunner`` in
streaming mode (never the default DirectRunner, which tries to download Prism first).

Element timestamps are the Pub/Sub publish times unless ``--timestamp-attribute`` is given:
features use the validated ``event_time`` of each event (which must equal the
``event_time`` attribute when present), and the job has no windows, so features do not
depend on the watermark (its one event-time timer only dead-letters a label whose transaction
has not come 44 days of element time after it, see :mod:`streaming.features.stream`). Reading the timestamp from an attribute makes Beam's reader
fail on a malformed attribute, which would stop the job instead of dead-lettering one
message; enable it only for producers you control.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import orjson
from apache_beam.io.gcp.pubsub import PubsubMessage, ReadFromPubSub, WriteToPubSub
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions, StandardOptions

from models.signing import KEY_FILE_ENV, add_trust_arguments, keys_from_args
from streaming.io.events import DEFAULT_MAX_BYTES, SCHEMA_ATTRIBUTE, SCHEMA_LABEL, SCHEMA_TRANSACTION, EVENT_TIME_ATTRIBUTE, DeadLetter, EventError, check_topic, format_time, parse
from streaming.io.encoding import dead_letter, encode_dead_letter
from models.online import DEFAULT_LEARNER, LEARNERS
from streaming.features.spec import DEFAULT_SPEC, FeatureSpec
from streaming.job.guard import guarded
from streaming.features.stream import DEAD_LETTER, FeaturedTransaction, StreamFeatures, key_by_customer
from streaming.job.learning import MEMBERS, CombineMembersFn, LearnerFn, key_example
from models.monitoring import Thresholds
from streaming.job.example_log import ExampleLogFn, key_label
from streaming.job.monitor import LiveMonitorFn
from streaming.job.served import ServedOnline
from streaming.job.scoring import ALERTS, LOGGED, ScoreFn, read_tls_roots, read_token
from streaming.store.redis_store import check_url

LOCAL_RUNNER = "BundleBasedDirectRunner"
LOCAL_RUNNERS = frozenset({LOCAL_RUNNER, "DirectRunner", "SwitchingDirectRunner"})
SCHEMA_FEATURES = "streamscore.features.v1"


@dataclass(frozen=True)
class JobConfig:
    """The job's own settings (Beam's options travel separately)."""

    project: str
    transactions_subscription: str
    labels_subscription: str | None
    features_topic: str
    dead_letter_topic: str
    max_message_bytes: int = DEFAULT_MAX_BYTES
    allowed_lateness_days: float = 7.0
    timestamp_attribute: str | None = None
    id_label: str | None = None
    predictor: str | None = None
    predictor_deadline: float = 10.0
    predictor_tls_ca: str | None = None  # PEM roots: TLS to the predictor
    predictor_token_file: str | None = None  # bearer token, read on the workers
    signing_key_file: str | None = None  # the registry key ring the learner signs its snapshots with
    scores_topic: str = "scores"
    alerts_topic: str = "alerts"
    alert_threshold: float = 0.5
    monitoring_topic: str = "monitoring"
    registry: str | None = None
    max_label_delay_days: float = 8.0
    snapshot_every_labels: int = 500
    snapshot_every_seconds: float = 60.0
    label_producers: tuple[str, ...] = ()  # when set, labels must carry a `producer` attribute naming one
    online_learner: str = DEFAULT_LEARNER
    learner_shards: int = 1
    online_min_class_labels: int = 10
    online_warm_start: bool = True
    online_store: str | None = None
    example_log: str | None = None  # directory (or gs://) of the labelled-example log
    live_monitoring: bool = False
    monitoring_window_hours: float = 24.0
    monitoring_grace_hours: float = 1.0
    quality_days: int = 7
    psi_warn: float = 0.1
    psi_alarm: float = 0.25

    @staticmethod
    def _path(project: str, kind: str, name: str) -> str:
        return name if name.startswith("projects/") else f"projects/{project}/{kind}/{name}"

    def subscription(self, name: str) -> str:
        return self._path(self.project, "subscriptions", name)

    def topic(self, name: str) -> str:
        return self._path(self.project, "topics", name)


class ParsePubsubFn(beam.DoFn):
    """PubsubMessage → Transaction/Label, or a DeadLetter on the ``dead_letter`` output.

    With ``keyed``, events leave as ``(customer_id, event)``, ready for the customer stage.
    """

    def __init__(self, expect: str, max_bytes: int = DEFAULT_MAX_BYTES, keyed: bool = False,
                 allowed_producers: frozenset[str] | None = None):
        self.expect = expect
        self.max_bytes = max_bytes
        self.keyed = keyed
        self.allowed_producers = allowed_producers
        self._invalid = Metrics.counter(self.__class__, "invalid")
        self._parsed = Metrics.counter(self.__class__, "parsed")

    @guarded("parse")
    def process(self, message: PubsubMessage):
        result = check_topic(message.attributes, self.expect, self.allowed_producers) or parse(
            message.data, message.attributes, expect=self.expect, max_bytes=self.max_bytes)
        if isinstance(result, EventError):
            self._invalid.inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter(message.data, message.attributes, result, "parse"))
        else:
            self._parsed.inc()
            yield key_by_customer(result) if self.keyed else result


def features_message(featured: FeaturedTransaction, spec: FeatureSpec = DEFAULT_SPEC) -> PubsubMessage:
    """The ``features`` topic message of a featurised transaction."""
    tx = featured.transaction
    body = {
        "transaction_id": tx.transaction_id,
        "event_time": format_time(tx.event_time),
        "customer_id": tx.customer_id,
        "terminal_id": tx.terminal_id,
        "spec_hash": spec.spec_hash,
        "features": dict(zip(spec.names, featured.features)),
    }
    attrs = {EVENT_TIME_ATTRIBUTE: body["event_time"], SCHEMA_ATTRIBUTE: SCHEMA_FEATURES}
    return PubsubMessage(orjson.dumps(body), attrs)


def dead_letter_message(dead: DeadLetter) -> PubsubMessage:
    return PubsubMessage(*encode_dead_letter(dead))


class ReadEvents(beam.PTransform):
    """Both subscriptions → one PCollection of parsed events (``keyed``: by customer), plus parse dead letters."""

    def __init__(self, config: JobConfig, keyed: bool = False):
        super().__init__()
        self.config = config
        self.keyed = keyed

    def expand(self, pbegin):
        config = self.config
        sources = [("Transactions", config.transactions_subscription, SCHEMA_TRANSACTION, None)]
        if config.labels_subscription:
            producers = frozenset(config.label_producers) if config.label_producers else None
            sources.append(("Labels", config.labels_subscription, SCHEMA_LABEL, producers))
        events, dead, labels = [], [], None
        for name, subscription, schema, producers in sources:
            parsed = (
                pbegin
                | f"Read{name}" >> ReadFromPubSub(subscription=config.subscription(subscription), with_attributes=True,
                                                  timestamp_attribute=config.timestamp_attribute,
                                                  id_label=config.id_label)
                | f"Parse{name}" >> beam.ParDo(ParsePubsubFn(schema, config.max_message_bytes, self.keyed, producers))
                .with_output_types(beam.typehints.KV[str, Any] if self.keyed else Any)
                .with_outputs(DEAD_LETTER, main="events")
            )
            events.append(parsed.events)
            dead.append(parsed[DEAD_LETTER])
            labels = parsed.events if schema == SCHEMA_LABEL else labels
        if len(sources) == 1:  # no labels: a Flatten of one input would only cost the runner a stage
            return {"events": events[0], "dead_letter": dead[0]}
        return {
            "events": events | "MergeEvents" >> beam.Flatten(),
            "dead_letter": dead | "MergeParseDeadLetters" >> beam.Flatten(),
            "labels": labels,  # the parsed labels alone (for the example log)
        }


class StreamingJob(beam.PTransform):
    """The whole streaming job as one transform (tests run it with other runners)."""

    def __init__(self, config: JobConfig, spec: FeatureSpec = DEFAULT_SPEC):
        super().__init__()
        self.config = config
        self.spec = spec

    def _log_and_monitor(self, records, labels) -> None:
        """The labelled-example log (streaming.job.example_log) and live monitoring (streaming.job.monitor)."""
        config = self.config
        inputs = [records]
        if labels is not None:
            inputs.append(labels | "KeyLabelsByTerminal" >> beam.Map(key_label).with_output_types(
                beam.typehints.KV[str, Any]))
        joined = inputs[0] if len(inputs) == 1 else inputs | "MergeLogInputs" >> beam.Flatten()
        batches = joined | ExampleLogFn.__name__ >> beam.ParDo(ExampleLogFn(
            self.spec, config.max_label_delay_days, config.example_log, monitor=config.live_monitoring))
        if config.live_monitoring:
            (batches
             | LiveMonitorFn.__name__ >> beam.ParDo(LiveMonitorFn(
                 config.registry, self.spec, window_hours=config.monitoring_window_hours,
                 grace_hours=config.monitoring_grace_hours, quality_days=config.quality_days,
                 thresholds=Thresholds(config.psi_warn, config.psi_alarm), signing_key_file=config.signing_key_file,
                 alert_threshold=config.alert_threshold))
             | "WriteLiveMonitoring" >> WriteToPubSub(config.topic(config.monitoring_topic), with_attributes=True))

    def expand(self, pbegin):
        config = self.config
        learn = bool(config.predictor and config.registry)
        # Parsing keys the events and, without a predictor, the terminal stage formats the features
        # messages itself: on the local runner every stage costs per bundle (see streaming/runner/local.py).
        read = pbegin | ReadEvents.__name__ >> ReadEvents(config, keyed=True)
        featured = read["events"] | StreamFeatures.__name__ >> StreamFeatures(
            self.spec, config.allowed_lateness_days, config.max_label_delay_days if learn else None, keyed=True,
            emit=None if config.predictor else functools.partial(features_message, spec=self.spec),
            online_store=config.online_store)
        dead = [read["dead_letter"], featured["dead_letter"]]
        if config.predictor:
            logged = bool(config.example_log or config.live_monitoring or (learn and read.get("labels") is not None))
            scored = featured["features"] | ScoreFn.__name__ >> beam.ParDo(ScoreFn(
                config.predictor, self.spec, alert_threshold=config.alert_threshold,
                deadline=config.predictor_deadline, token_file=config.predictor_token_file,
                tls_ca_file=config.predictor_tls_ca, log_records=logged)).with_outputs(
                    DEAD_LETTER, ALERTS, LOGGED, main="scores")
            scored.scores | "WriteScores" >> WriteToPubSub(config.topic(config.scores_topic), with_attributes=True)
            scored[ALERTS] | "WriteAlerts" >> WriteToPubSub(config.topic(config.alerts_topic), with_attributes=True)
            dead.append(scored[DEAD_LETTER])
            if config.example_log or config.live_monitoring:
                self._log_and_monitor(scored[LOGGED], read.get("labels"))
        else:
            featured["features"] | "WriteFeatures" >> WriteToPubSub(
                config.topic(config.features_topic), with_attributes=True)
        if learn:
            learner = LearnerFn(
                config.registry, self.spec, config.predictor, snapshot_every_labels=config.snapshot_every_labels,
                snapshot_every_seconds=config.snapshot_every_seconds, learner=config.online_learner,
                shards=config.learner_shards, min_class_labels=config.online_min_class_labels,
                warm_start=config.online_warm_start, signing_key_file=config.signing_key_file,
                predictor_token_file=config.predictor_token_file, predictor_tls_ca_file=config.predictor_tls_ca)
            learned = (
                featured["examples"]
                | "KeyToLearner" >> beam.Map(key_example, config.learner_shards).with_output_types(
                    beam.typehints.KV[str, Any])
                | LearnerFn.__name__ >> beam.ParDo(learner).with_outputs(MEMBERS, DEAD_LETTER, main="monitoring")
            )
            monitoring = [learned.monitoring]
            if read.get("labels") is not None:  # the online model's AP and CP@100 as served (streaming.job.served)
                monitoring.append((scored[LOGGED], read["labels"]) | ServedOnline.__name__ >> ServedOnline(
                    config.max_label_delay_days, every_rows=config.snapshot_every_labels,
                    every_seconds=config.snapshot_every_seconds))
            if config.learner_shards > 1:
                monitoring.append(learned[MEMBERS] | CombineMembersFn.__name__ >> beam.ParDo(CombineMembersFn(
                    config.registry, self.spec, config.learner_shards, config.online_learner,
                    signing_key_file=config.signing_key_file)))
            # One input: no Flatten, which would only cost the local runner a stage.
            merged = monitoring[0] if len(monitoring) == 1 else monitoring | "MergeMonitoring" >> beam.Flatten()
            merged | "WriteMonitoring" >> WriteToPubSub(config.topic(config.monitoring_topic), with_attributes=True)
            dead.append(learned[DEAD_LETTER])
        return (
            dead
            | "MergeDeadLetters" >> beam.Flatten()
            | "ToDeadLetterMessage" >> beam.Map(dead_letter_message)
            | "WriteDeadLetters" >> WriteToPubSub(config.topic(config.dead_letter_topic), with_attributes=True)
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamscore stream", description=__doc__.splitlines()[0],
        epilog="Other flags (--runner, --project for Dataflow, --region, ...) pass through to Beam.")
    parser.add_argument("--project", default="local-project", help="Pub/Sub project (default local-project)")
    parser.add_argument("--emulator-host", default=None,
                        help="HOST:PORT of a Pub/Sub emulator (default: $PUBSUB_EMULATOR_HOST, else real Pub/Sub)")
    parser.add_argument("--transactions-subscription", default="transactions-stream")
    parser.add_argument("--labels-subscription", default="labels-stream", help="'' to run without labels")
    parser.add_argument("--features-topic", default="features")
    parser.add_argument("--dead-letter-topic", default="dead-letter")
    parser.add_argument("--max-message-bytes", type=int, default=DEFAULT_MAX_BYTES)
    parser.add_argument("--allowed-lateness-days", type=float, default=7.0,
                        help="how far (event time) behind a key's latest event a transaction may arrive and "
                             "still be featurised; later ones are dead-lettered (default 7)")
    parser.add_argument("--label-producers", default="",
                        help="comma-separated producer names: labels must carry a `producer` attribute naming one, "
                             "else they are dead-lettered (default: no check; in production restrict who may "
                             "publish to the labels topic with IAM, see docs/event-validation.md)")
    parser.add_argument("--timestamp-attribute", default=None,
                        help="take element timestamps from this attribute (see the module docs), e.g. event_time")
    parser.add_argument("--id-label", default=None,
                        help="Dataflow only: deduplicate messages carrying the same value of this attribute "
                             "(a publisher's retry ids; Pub/Sub message ids are deduplicated without it)")
    parser.add_argument("--online-store", default=None, metavar="URL",
                        help="write each updated card/terminal state to this Redis, for raw-transaction scoring: "
                             "redis://HOST:PORT/DB or rediss://:PASSWORD@HOST:PORT/DB (see docs/online-store.md)")
    scoring = parser.add_argument_group("scoring and online learning")
    scoring.add_argument("--predictor", default=None, help="HOST:PORT of `streamscore serve`; without it the job "
                         "publishes features instead of scores")
    scoring.add_argument("--predictor-deadline", type=float, default=10.0, help="seconds per scoring call (default 10)")
    scoring.add_argument("--predictor-tls-ca", default=None,
                         help="PEM root certificates: speak TLS to the predictor (the root of the chain the predictor serves)")
    scoring.add_argument("--predictor-token-file", default=None,
                         help="file holding the predictor's bearer token (the one the predictor was given); in production "
                              "a mounted secret. Read on the workers, again after each refusal")
    scoring.add_argument("--scores-topic", default="scores")
    scoring.add_argument("--alerts-topic", default="alerts")
    scoring.add_argument("--alert-threshold", type=float, default=0.5, help="score at or above which to alert")
    scoring.add_argument("--monitoring-topic", default="monitoring")
    scoring.add_argument("--registry", default=None, help="model registry (dir or gs://): enables online learning")
    scoring.add_argument("--max-label-delay-days", type=float, default=8.0,
                         help="how long a scored feature vector waits for its label (default 8)")
    scoring.add_argument("--snapshot-every-labels", type=int, default=500)
    scoring.add_argument("--snapshot-every-seconds", type=float, default=60.0)
    add_trust_arguments(scoring, signs=True)
    scoring.add_argument("--online-learner", choices=sorted(LEARNERS), default=DEFAULT_LEARNER,
                         help="the online learner (default binned: chosen on validation weeks; see docs/online-learning.md)")
    scoring.add_argument("--learner-shards", type=int, default=1,
                         help="learner keys examples are hashed to; their members are combined into one "
                              "served snapshot (default 1)")
    scoring.add_argument("--online-min-class-labels", type=int, default=10,
                         help="labels of each class the learner must have seen before a snapshot is served "
                              "(default 10)")
    scoring.add_argument("--no-online-warm-start", action="store_true",
                         help="start the learner untrained instead of from a matching snapshot or the "
                              "production model's training window")
    log = parser.add_argument_group("labelled-example log and live monitoring (see docs/continuous-training.md)")
    log.add_argument("--example-log", default=None, metavar="DIR",
                     help="write every scored transaction's features, score and model version with its label (or as "
                          "genuine, unconfirmed after --max-label-delay-days) to DIR/day=YYYY-MM-DD/*.parquet "
                          "(a directory or gs://); needs --predictor")
    log.add_argument("--live-monitoring", action="store_true",
                     help="publish `stability` events to --monitoring-topic: PSI of every feature and the score "
                          "against the production model's training reference, per event-time window, with live "
                          "AP and card precision@100; needs --predictor and --registry")
    log.add_argument("--monitoring-window-hours", type=float, default=24.0,
                     help="event-time window of each stability event (default 24)")
    log.add_argument("--monitoring-grace-hours", type=float, default=1.0,
                     help="a window is emitted once the stream's event time is this far past its end (default 1)")
    log.add_argument("--quality-days", type=int, default=7,
                     help="sliding window (days of event time) of the live AP and CP@100 (default 7)")
    log.add_argument("--psi-warn", type=float, default=0.1, help="PSI above this is a moderate shift (default 0.1)")
    log.add_argument("--psi-alarm", type=float, default=0.25, help="PSI above this is an alarm (default 0.25)")
    local = parser.add_argument_group("local runner (ignored on other runners; see streaming/runner/local.py)")
    local.add_argument("--local-pull-size", type=int, default=100,
                       help="messages per Pub/Sub pull, i.e. per bundle (default 100; Beam's local reader pulls 10)")
    local.add_argument("--local-pull-deadline", type=float, default=30.0,
                       help="the pull's deadline in seconds (default 30, Beam's); an empty pull answers at once")
    local.add_argument("--no-local-tuning", action="store_true",
                       help="run Beam's local runner exactly as it ships (slower; for comparison)")
    return parser


def pipeline_options(beam_args: list[str], config: JobConfig) -> PipelineOptions:
    options = PipelineOptions(beam_args)
    cloud = options.view_as(GoogleCloudOptions)
    cloud.project = cloud.project or config.project  # one --project serves Pub/Sub and Dataflow
    standard = options.view_as(StandardOptions)
    standard.streaming = True
    if standard.runner is None:
        standard.runner = LOCAL_RUNNER
    return options


def is_local(options: PipelineOptions) -> bool:
    """Whether the job runs on Beam's in-process local runner."""
    runner = options.view_as(StandardOptions).runner
    name = runner if isinstance(runner, str) else type(runner).__name__
    return name in LOCAL_RUNNERS


#: Options that put the project's code on remote workers (Beam's SetupOptions / WorkerOptions).
STAGING_OPTIONS = ("sdk_container_image", "setup_file", "extra_packages")


def check_staged(options: PipelineOptions) -> None:
    """Refuse a remote runner whose workers would not have this project's code to unpickle the DoFns."""
    from apache_beam.options.pipeline_options import SetupOptions, WorkerOptions

    setup, worker = options.view_as(SetupOptions), options.view_as(WorkerOptions)
    if not (worker.sdk_container_image or setup.setup_file or setup.extra_packages):
        raise ValueError(
            f"runner {options.view_as(StandardOptions).runner}: its workers need streamscore's code: pass "
            "--sdk_container_image IMAGE (deploy/dataflow/worker.Dockerfile, built from constraints.txt) "
            "or --setup_file ./setup.py / --extra_package DIST")


def build(argv: list[str] | None = None) -> tuple[beam.Pipeline, JobConfig]:
    """Parse flags and construct (not run) the pipeline; on the local runner, tune it (:mod:`streaming.runner.local`)."""
    args, beam_args = build_parser().parse_known_args(argv)
    if args.max_message_bytes <= 0:
        raise ValueError(f"--max-message-bytes must be > 0, got {args.max_message_bytes}")
    if args.local_pull_size < 1 or not args.local_pull_deadline > 0:
        raise ValueError(f"--local-pull-size must be >= 1 and --local-pull-deadline > 0, got "
                         f"{args.local_pull_size} and {args.local_pull_deadline}")
    signing_key_file = None
    if args.registry and args.predictor:  # the learner writes (signed) snapshots: check the ring now, not on a worker
        if keys_from_args(args, signs=True) is not None:
            signing_key_file = args.signing_key_file or os.environ[KEY_FILE_ENV]
    if args.predictor_tls_ca:
        read_tls_roots(args.predictor_tls_ca)
    if args.predictor_token_file:
        read_token(args.predictor_token_file)
    if (args.predictor_tls_ca or args.predictor_token_file) and not args.predictor:
        raise ValueError("--predictor-tls-ca and --predictor-token-file need --predictor")
    if args.learner_shards < 1 or args.online_min_class_labels < 0:
        raise ValueError(f"--learner-shards must be >= 1 and --online-min-class-labels >= 0, got "
                         f"{args.learner_shards} and {args.online_min_class_labels}")
    if args.online_store:
        check_url(args.online_store)
    if (args.example_log or args.live_monitoring) and not args.predictor:
        raise ValueError("--example-log and --live-monitoring need --predictor (the log holds the scores)")
    if args.live_monitoring and not args.registry:
        raise ValueError("--live-monitoring needs --registry (the production model's training reference)")
    if not args.monitoring_window_hours > 0 or args.monitoring_grace_hours < 0 or args.quality_days < 1:
        raise ValueError(f"--monitoring-window-hours must be > 0, --monitoring-grace-hours >= 0 and --quality-days "
                         f">= 1, got {args.monitoring_window_hours}, {args.monitoring_grace_hours} and {args.quality_days}")
    thresholds = Thresholds(args.psi_warn, args.psi_alarm)  # refuses warn > alarm with a message naming both
    if args.emulator_host:
        os.environ["PUBSUB_EMULATOR_HOST"] = args.emulator_host  # the edge: Beam's Pub/Sub client reads it
    config = JobConfig(
        project=args.project, transactions_subscription=args.transactions_subscription,
        labels_subscription=args.labels_subscription or None, features_topic=args.features_topic,
        dead_letter_topic=args.dead_letter_topic, max_message_bytes=args.max_message_bytes,
        allowed_lateness_days=args.allowed_lateness_days, timestamp_attribute=args.timestamp_attribute,
        id_label=args.id_label or None,
        predictor=args.predictor, predictor_deadline=args.predictor_deadline, scores_topic=args.scores_topic,
        predictor_tls_ca=args.predictor_tls_ca, predictor_token_file=args.predictor_token_file,
        signing_key_file=signing_key_file,
        alerts_topic=args.alerts_topic, alert_threshold=args.alert_threshold, monitoring_topic=args.monitoring_topic,
        registry=args.registry, max_label_delay_days=args.max_label_delay_days,
        snapshot_every_labels=args.snapshot_every_labels, snapshot_every_seconds=args.snapshot_every_seconds,
        label_producers=tuple(p.strip() for p in args.label_producers.split(",") if p.strip()),
        online_learner=args.online_learner, learner_shards=args.learner_shards,
        online_min_class_labels=args.online_min_class_labels, online_warm_start=not args.no_online_warm_start,
        online_store=args.online_store, example_log=args.example_log, live_monitoring=args.live_monitoring,
        monitoring_window_hours=args.monitoring_window_hours, monitoring_grace_hours=args.monitoring_grace_hours,
        quality_days=args.quality_days, psi_warn=thresholds.warn, psi_alarm=thresholds.alarm)
    options = pipeline_options(beam_args, config)
    if is_local(options):
        if config.id_label:
            raise ValueError(f"--id-label is honoured only by Dataflow; Beam's local runner cannot deduplicate "
                             f"on it, got --id-label {config.id_label!r} with runner {LOCAL_RUNNER}")
        if not args.no_local_tuning:
            from streaming.runner import local as local_runner  # imported here only: no other runner loads the tuning

            local_runner.install(args.local_pull_size, args.local_pull_deadline)
    else:
        check_staged(options)
    pipeline = beam.Pipeline(options=options)
    _ = pipeline | StreamingJob.__name__ >> StreamingJob(config)
    return pipeline, config


def run(argv: list[str] | None = None) -> int:
    """Run the streaming job: locally until it is cancelled (Ctrl-C / SIGTERM); on a remote runner
    (Dataflow, a Flex Template launch) return once the job is submitted."""
    # Without a handler only warnings reached stderr (the demo's stream-job.log stayed empty):
    # timestamped INFO lines from our own modules, Beam's own at WARNING.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    pipeline, config = build(argv)
    log = logging.getLogger("streaming.job.pipeline")
    log.info("starting: reading %s%s; %s; dead letters to %s", config.transactions_subscription,
             f" and {config.labels_subscription}" if config.labels_subscription else "",
             f"scoring via {config.predictor} to {config.scores_topic}" if config.predictor
             else f"features to {config.features_topic}", config.dead_letter_topic)
    result = pipeline.run()
    log.info("running on %s", type(result).__name__)
    if not is_local(pipeline.options):
        job_id = getattr(result, "job_id", None)
        print(f"streamscore stream: submitted to {pipeline.options.view_as(StandardOptions).runner}"
              + (f" as job {job_id()}" if callable(job_id) else ""), flush=True)
        return 0
    try:
        result.wait_until_finish()
    except KeyboardInterrupt:
        log.info("cancelled, stopping")
        result.cancel()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(run())
