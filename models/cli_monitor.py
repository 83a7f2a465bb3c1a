"""``streamscore monitor``: a model's stability and live quality over days of a feature table.

For each window of ``--window-days`` days from ``--start`` (default: the day after the model's
training period) to the table's end, the model (``production`` or a version) scores the
window's transactions and the command prints one ``monitoring`` event per line (JSON): PSI of
every feature and of the score against the training reference stored with the model
(:mod:`models.monitoring`), each one's status under ``--psi-warn`` / ``--psi-alarm``, and the
window's AP and card precision@100 (the table's labels play the late labels). This is the
batch view of what the streaming job publishes per window with ``stream --live-monitoring``.
``--features`` may also be the job's labelled-example log (``stream --example-log DIR``).

``--follow SUBSCRIPTION`` reads those live ``stability`` events from a subscription of the job's
``monitoring`` topic instead (``--emulator-host`` for the local emulator), prints each as a JSON
line and, with ``--metrics-port P``, serves them as Prometheus gauges on ``:P/metrics``
(:class:`models.monitoring.MonitoringGauges`: PSI and alarm flag per variable, live quality).
Other ``monitoring`` events (the learner's drift and snapshots) are skipped.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections import deque

import pandas as pd

from models.evaluation import feature_table_spec, read_feature_table
from models.monitoring import LiveQuality, Thresholds, load_reference, monitoring_event
from models.registry import Registry


def run(argv: list[str] | None = None) -> int:
    """``streamscore monitor``: PSI against the training reference and live quality, window by window."""
    parser = argparse.ArgumentParser(prog="streamscore monitor", description=run.__doc__)
    parser.add_argument("--features", help="feature table (.parquet) from `streamscore featurize`, or an example-log "
                        "directory (`stream --example-log`)")
    follow = parser.add_argument_group("following the streaming job (stream --live-monitoring)")
    follow.add_argument("--follow", metavar="SUBSCRIPTION", default=None,
                        help="read live stability events from this subscription of the job's monitoring topic "
                             "instead of scoring a table (name, or projects/P/subscriptions/NAME)")
    follow.add_argument("--project", default="local-project", help="Pub/Sub project of --follow (default local-project)")
    follow.add_argument("--emulator-host", default=None, help="HOST:PORT of a Pub/Sub emulator for --follow")
    follow.add_argument("--metrics-port", type=int, default=None,
                        help="with --follow: serve the events as Prometheus gauges on this port (0: any free port)")
    follow.add_argument("--max-events", type=int, default=None, help="with --follow: stop after this many events")
    parser.add_argument("--registry", default="registry", help="registry directory or gs://bucket/prefix (default ./registry)")
    parser.add_argument("--model", default="production", help="version id or 'production' (default)")
    parser.add_argument("--start", type=dt.date.fromisoformat, help="first day (default: the day after the model's training)")
    parser.add_argument("--window-days", type=int, default=1, help="days per window (default 1)")
    parser.add_argument("--quality-days", type=int, default=7, help="sliding window of the live AP / CP@100 (default 7)")
    parser.add_argument("--psi-warn", type=float, default=0.1, help="PSI above this is a moderate shift (default 0.1)")
    parser.add_argument("--psi-alarm", type=float, default=0.25, help="PSI above this is an alarm (default 0.25)")
    parser.add_argument("--report", metavar="HTML", default=None,
                        help="also write an HTML report of the windows over time: PSI of the score and the most shifted "
                             "features, live AP / CP@100, alert rate and precision per segment (with --follow: at exit)")
    from models.signing import add_trust_arguments, keys_or_exit

    add_trust_arguments(parser, signs=False)  # the model is verified before it is read
    args = parser.parse_args(argv)
    if (args.follow is None) == (args.features is None):
        parser.error("give --features (a table or example log to score) or --follow SUBSCRIPTION (the live job's events)")
    if args.follow is not None:
        return follow_events(args)
    if args.metrics_port is not None or args.max_events is not None:
        parser.error("--metrics-port and --max-events go with --follow")
    keys = keys_or_exit(parser, args, signs=False)
    if args.window_days < 1 or args.quality_days < 1:
        parser.error("--window-days and --quality-days must be >= 1")
    thresholds = Thresholds(args.psi_warn, args.psi_alarm)

    registry = Registry.open(args.registry, keys=keys)
    spec = feature_table_spec(args.features)
    model = registry.load(args.model, expected_spec_hash=spec.spec_hash)
    reference = load_reference(registry, model.version)
    if reference is None:
        raise ValueError(f"model {model.version} has no training reference (registered before reference.json existed): "
                         "retrain it with `streamscore train` or `streamscore retrain`")
    table = read_feature_table(args.features, list(model.feature_names), spec.spec_hash)
    trained = (model.metadata.get("data", {}).get("split", {}).get("train") or [None, None])[-1]
    start = args.start or (dt.date.fromisoformat(trained) + dt.timedelta(days=1) if trained else None)
    if start is None:
        raise ValueError(f"model {model.version} records no training period: pass --start")
    live, windows, alarms, started = LiveQuality(window_days=args.quality_days), 0, 0, time.monotonic()
    events: list[dict] = []
    day, last = pd.Timestamp(start), table["TX_DATETIME"].max().normalize()
    while day <= last:
        end = day + pd.Timedelta(days=args.window_days)
        rows = table[(table["TX_DATETIME"] >= day) & (table["TX_DATETIME"] < end)]
        if len(rows):
            scores = model.score_many(rows[list(model.feature_names)].to_numpy())
            live.update(rows["TX_DATETIME"], rows["CUSTOMER_ID"], rows["TX_FRAUD"], scores)
            event = monitoring_event(reference.stability(rows, scores), thresholds, model_version=model.version,
                                     live=live.metrics(), at=str(day.date()))
            event["segments"] = window_segments(rows, scores)
            print(json.dumps(event, sort_keys=True), flush=True)
            events.append(event)
            windows, alarms = windows + 1, alarms + (event["status"] == "alarm")
        day = end
    print(f"streamscore monitor: model {model.version}, {windows} window{'s' if windows != 1 else ''} of"
          f" {args.window_days} day(s) from {start} over {len(table):,} rows of {args.features}; {alarms} with a PSI"
          f" alarm (> {args.psi_alarm:g}) ({time.monotonic() - started:.1f} s)", file=sys.stderr)
    write_report(args.report, events)
    return 0


def window_segments(rows: pd.DataFrame, scores) -> dict:
    """Alert rate and precision per segment of one window (:mod:`models.segments`; alerts are the
    top-100 cards of each day, precision over the window's labels)."""
    from models.segments import segment_report

    return {family: {name: {m: row[m] for m in ("transactions", "alert_rate", "precision")}
                     for name, row in segments.items()}
            for family, segments in segment_report(rows, scores).items()}


def write_report(path: str | None, events: list[dict]) -> None:
    if path is None:
        return
    if not events:
        print(f"streamscore monitor: no stability event, so no report written to {path}", file=sys.stderr)
        return
    from pathlib import Path

    from models.monitor_report import render_monitor_report

    Path(path).write_text(render_monitor_report(events), encoding="utf-8")
    print(f"streamscore monitor: report of {len(events)} windows written to {path}", file=sys.stderr)


def follow_events(args, out=None) -> int:
    """``monitor --follow``: print the job's stability events and keep their gauges current."""
    from models.monitoring import MonitoringGauges

    out = sys.stdout if out is None else out
    if args.max_events is not None and args.max_events < 1:
        raise ValueError(f"--max-events must be >= 1, got {args.max_events}")
    gauges = MonitoringGauges()
    if args.metrics_port is not None:
        from prometheus_client import start_http_server

        server, _ = start_http_server(args.metrics_port, addr="127.0.0.1" if args.emulator_host else "0.0.0.0",
                                      registry=gauges.registry)
        print(f"streamscore monitor: metrics on :{server.server_port}/metrics", file=sys.stderr, flush=True)
    subscription = args.follow if args.follow.startswith("projects/") else f"projects/{args.project}/subscriptions/{args.follow}"
    if args.emulator_host:
        from streaming.io.pubsub_local import subscriber_client

        subscriber = subscriber_client(args.emulator_host)
    else:
        from google.cloud import pubsub_v1

        subscriber = pubsub_v1.SubscriberClient()
    from google.api_core import exceptions

    seen = alarms = 0
    followed: deque = deque(maxlen=10_000)  # the report of a long follow covers its last windows
    try:
        while args.max_events is None or seen < args.max_events:
            try:
                response = subscriber.pull(request={"subscription": subscription, "max_messages": 100}, timeout=5.0)
            except (exceptions.DeadlineExceeded, exceptions.ServiceUnavailable):
                continue
            if response.received_messages:
                subscriber.acknowledge(request={"subscription": subscription,
                                                "ack_ids": [r.ack_id for r in response.received_messages]})
            for received in response.received_messages:
                try:
                    event = json.loads(received.message.data)
                except ValueError:
                    print(f"streamscore monitor: skipped a monitoring message that is not JSON "
                          f"({len(received.message.data)} bytes)", file=sys.stderr)
                    continue
                if isinstance(event, dict) and event.get("kind") in ("online_served", "online_snapshot"):
                    gauges.publish(event)  # the online model's gauges, as served and prequential (models.served)
                    continue
                if not isinstance(event, dict) or event.get("kind") != "stability":
                    continue
                gauges.publish(event)
                followed.append(event)
                seen, alarms = seen + 1, alarms + (event.get("status") == "alarm")
                print(json.dumps(event, sort_keys=True), file=out, flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        subscriber.close()
    print(f"streamscore monitor: {seen} stability event{'s' if seen != 1 else ''} from {subscription}; "
          f"{alarms} with a PSI alarm", file=sys.stderr)
    write_report(getattr(args, "report", None), list(followed))
    return 0


if __name__ == "__main__":
    sys.exit(run())
