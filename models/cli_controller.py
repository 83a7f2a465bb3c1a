"""``streamscore controller``: promote the challenger after its shadow, watch it, roll it back.

    streamscore controller --registry DIR --shadow-log DIR [--labels-from DIR] [--scores-from PATH]
        [--shadow-events 10000] [--alert-threshold 0.5] [--min-ap X] [--min-cp100 X]
        [--min-alert-rate X] [--max-alert-rate X] [--min-scored 1000] [--min-labelled 1000]
        [--window-days 7] [--once | --interval 60] [--dry-run]
        [--retrain-on-alarm --monitoring-subscription S --project P | --monitoring-from PATH]
        [--retrain-every SECONDS] [--retrain-cooldown 3600] [--retrain-retries 0] [--retrain-source TABLE|DIR]

Each tick reads the registry's state (:func:`registry_state`), the evidence
(:mod:`models.controller_inputs`: the predictors' shadow log; the labelled-example log and/or
JSON lines of score messages) and applies :func:`models.controller.decide`'s decision
(:func:`apply`) through the registry's aliases — which every predictor follows by hot reload:

* ``promote``: production → the challenger, then the ``challenger`` alias is cleared;
* ``retire``: the ``challenger`` alias is cleared (not promoted);
* ``rollback``: :meth:`~models.registry.Registry.rollback` (production back to the version
  before), only if production is still the version judged;
* ``confirm``: nothing moves; the watch ends.

Each of these is an audit event (actor ``streamscore controller``: who; action and version:
what; the decision's reason: why; its metrics and the bounds: the evidence), and the watch
state is read back from those events, so the controller keeps no state of its own and can be
restarted at any time. One JSON line per tick goes to stdout (the decision, ``applied``).

With ``--retrain-on-alarm`` / ``--retrain-every`` each tick then takes the trigger's step
(:func:`trigger_step`): the monitoring events are read, :func:`~models.controller.decide_retrain`
decides (retrain, absorb or wait), the decision is audited (``alarm``, ``retrain``, then the
retrain's own events, or ``retrain-failed``) and only then are the events acknowledged. The
trigger's state — the last retrain, the open alarm and its retries — is read back from the audit
and alias logs too (:func:`trigger_history`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import dataclasses
import datetime as dt

from models.controller import (Bounds, ControllerConfig, Decision, Incident, State, TriggerConfig, alarm_of,
                               decide, decide_retrain, live_evidence)
from models.controller_inputs import (ExampleLogRows, MonitoringEvents, MonitoringLines, MonitoringSubscription,
                                      ScoreLinesRows, ShadowLogReader, combined_rows, known_labels)
from models.registry import CHALLENGER, Registry, RegistryError

ACTOR = "streamscore controller"
RETRAIN_ACTOR = "streamscore retrain"  # models.retrain.ACTOR (not imported here: it pulls in training)
#: The controller's own audit actions (a watch is open from a promote until a confirm or rollback).
WATCH_EVENTS = ("promote", "confirm", "rollback")


def registry_state(registry: Registry) -> State:
    """The aliases, and the production version under watch (its newest controller event is a promote)."""
    production = registry.alias()["version"]
    challenger = registry.alias(CHALLENGER)["version"]
    watching = None
    if production is not None:
        mine = [e for e in registry.events(production) if e["actor"] == ACTOR and e["action"] in WATCH_EVENTS]
        if mine and mine[-1]["action"] == "promote":
            watching = production
    return State(production, challenger, watching)


def apply(registry: Registry, decision: Decision, state: State) -> bool:
    """Carry ``decision`` out through the registry and audit it; False when nothing was done
    (a wait, or production moved since the state was read)."""
    details = {**decision.metrics}
    if decision.action == "wait":
        return False
    if decision.action == "promote":
        registry.promote(decision.version)
        registry.clear(CHALLENGER)
        details.update({"from": state.production, "to": decision.version})
    elif decision.action == "retire":
        registry.clear(CHALLENGER)
    elif decision.action == "rollback":
        if registry.alias()["version"] != decision.version:
            return False  # someone else moved production meanwhile: judge again on the next tick
        moved = registry.rollback()
        details.update({"from": decision.version, "to": moved["version"]})
    registry.record_event(decision.action, actor=ACTOR, version=decision.version, reason=decision.reason,
                          details=details)
    return True


@dataclasses.dataclass
class Trigger:
    """The controller's retrain step: the monitoring events it reads, when it retrains
    (:class:`~models.controller.TriggerConfig`), on what (``source``: a feature table) and how
    (``retrain``: :class:`~models.retrain.RetrainConfig`; a passing challenger goes to shadow)."""

    config: TriggerConfig
    events: MonitoringEvents | None
    source: str
    retrain: object  # models.retrain.RetrainConfig (imported lazily: it pulls in training)
    spec: str | None = None


def _seconds(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


def trigger_history(registry: Registry, production: str | None) -> tuple[float | None, Incident | None, float | None]:
    """From the audit log and the alias log: when the controller last started a retrain, the
    open :class:`~models.controller.Incident` (the newest alarm-started retrain and what
    followed it), and when production was last moved — all read back, so the controller keeps
    no state of its own."""
    events = registry.events()
    starts = [i for i, e in enumerate(events) if e["actor"] == ACTOR and e["action"] == "retrain"]
    last = _seconds(events[starts[-1]]["at"]) if starts else None
    alarmed = [i for i in starts if events[i]["details"].get("trigger") == "alarm"]
    incident = None
    if alarmed:
        first, after = events[alarmed[-1]], events[alarmed[-1]:]
        alarms = first["details"].get("alarms") or [{}]
        incident = Incident(first["at"], first["version"], alarms[0].get("detail", first["reason"]),
                            sum(e["actor"] == ACTOR and e["action"] == "retrain" for e in after),
                            any(e["actor"] == RETRAIN_ACTOR and e["action"] in ("shadow", "promote") for e in after))
    moves = registry.alias()["log"]
    return last, incident, (_seconds(moves[-1]["at"]) if moves and production is not None else None)


def trigger_step(registry: Registry, trigger: Trigger, state: State, *, dry_run: bool = False,
                 clock=time.time) -> dict:
    """Read the monitoring events, decide (:func:`~models.controller.decide_retrain`), audit the
    decision — ``alarm`` (absorbed, with the reason) or ``retrain`` (then the retrain's own
    ``register``, ``gate``, ``shadow`` / ``promote`` / ``refuse``; ``retrain-failed`` if it could
    not run) — and only then acknowledge the events."""
    from models.retrain import retrain_from

    raw = trigger.events.pull() if trigger.events is not None else []
    alarms, unreadable = [], []
    for event in raw:
        try:
            alarm = alarm_of(event)
        except ValueError as exc:
            unreadable.append(str(exc))
            continue
        if alarm is not None:
            alarms.append(alarm)
    last, incident, production_since = trigger_history(registry, state.production)
    decision = decide_retrain(state, trigger.config, alarms, now=clock(), last_retrain=last, incident=incident,
                              production_since=production_since)
    out = {**decision.to_dict(), "events": len(raw), "unreadable": len(unreadable)}
    if unreadable:
        out["metrics"] = {**out["metrics"], "unreadable": unreadable[:5]}
    if dry_run:
        return out
    if decision.action == "absorb":
        registry.record_event("alarm", actor=ACTOR, version=decision.version, reason=decision.reason,
                              details={**out["metrics"], "disposition": "absorbed"})
    elif decision.action == "retrain":
        config = dataclasses.replace(trigger.retrain, reason=decision.reason, shadow=True)
        windows = {"train_days": config.train_days, "delay_days": config.delay_days, "eval_days": config.eval_days}
        registry.record_event("retrain", actor=ACTOR, version=decision.version, reason=decision.reason,
                              details={**out["metrics"], "source": trigger.source, **windows,
                                       "cooldown_seconds": trigger.config.cooldown_seconds,
                                       "retries": trigger.config.retries})
        try:
            summary = retrain_from(trigger.source, registry, config, trigger.spec)
        except (ValueError, FileNotFoundError, RegistryError) as exc:
            registry.record_event("retrain-failed", actor=ACTOR, version=decision.version, reason=str(exc),
                                  details={"source": trigger.source, **windows})
            out["retrain"] = {"error": str(exc)}
        else:
            out["retrain"] = {k: summary[k] for k in ("version", "promoted", "shadow", "gate", "challenger",
                                                      "champion", "difference", "window", "rows")}
    if trigger.events is not None:
        trigger.events.ack()
    return out


def tick(registry: Registry, config: ControllerConfig, shadow_log: ShadowLogReader | None, sources, *,
         dry_run: bool = False, trigger: Trigger | None = None) -> dict:
    """One look at the registry and the evidence, one decision (applied unless ``dry_run``)."""
    state = registry_state(registry)
    shadow = live = None
    needs_rows = sources and (state.watching is not None or config.shadow_min_labelled)
    rows = combined_rows(sources) if needs_rows else None
    if state.challenger is not None and state.challenger != state.production and shadow_log is not None:
        labels = known_labels(rows) if rows is not None and config.shadow_min_labelled else None
        shadow = shadow_log.evidence(state.challenger, config.alert_threshold, labels)
    if state.watching is not None and rows is not None:
        live = live_evidence(rows, state.watching, config)
    decision = decide(state, config, shadow, live)
    applied = False if dry_run else apply(registry, decision, state)
    outcome = {**decision.to_dict(), "applied": applied, "production": state.production,
               "challenger": state.challenger}
    if trigger is not None:  # after the promotion step, on the state it left
        outcome["trigger"] = trigger_step(registry, trigger, registry_state(registry) if applied else state,
                                          dry_run=dry_run)
    return outcome


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamscore controller", description=run.__doc__)
    p.add_argument("--registry", default="registry", help="registry directory or gs://bucket/prefix (default ./registry)")
    p.add_argument("--shadow-log", help="the predictors' shadow log directory (serve --shadow-log DIR)")
    p.add_argument("--labels-from", action="append", default=[], metavar="DIR",
                   help="the streaming job's labelled-example log (stream --example-log DIR); repeatable")
    p.add_argument("--scores-from", action="append", default=[], metavar="PATH",
                   help="JSON lines of score messages (a file, or a directory of *.jsonl); repeatable")
    p.add_argument("--shadow-events", type=int, default=10_000,
                   help="events the challenger must score in shadow before it is promoted (default 10000)")
    p.add_argument("--shadow-min-labelled", type=int, default=0,
                   help="also require this many shadow events with known labels (--labels-from / --scores-from) and "
                        "the challenger's AP on them >= production's on the same minus --shadow-ap-margin (default 0: "
                        "not compared)")
    p.add_argument("--shadow-ap-margin", type=_share, default=0.0,
                   help="how much lower the challenger's AP on the labelled shadow events may be (default 0)")
    p.add_argument("--alert-threshold", type=float, default=0.5, help="score above which an event is an alert (0.5)")
    p.add_argument("--min-ap", type=_share, help="roll back when the promoted model's live AP falls below this")
    p.add_argument("--min-cp100", type=_share, help="roll back when its live card precision@100 falls below this")
    p.add_argument("--min-alert-rate", type=_share, help="roll back (or do not promote) below this alert rate")
    p.add_argument("--max-alert-rate", type=_share, help="roll back (or do not promote) above this alert rate")
    p.add_argument("--min-scored", type=int, default=1_000, help="scored events before the alert rate is judged (1000)")
    p.add_argument("--min-labelled", type=int, default=1_000,
                   help="labelled events before live quality is judged and the watch can end (1000)")
    p.add_argument("--window-days", type=int, default=7, help="live quality over the last days of labels (7)")
    p.add_argument("--once", action="store_true", help="one tick, then exit")
    p.add_argument("--interval", type=float, default=60.0, help="seconds between ticks (default 60)")
    p.add_argument("--dry-run", action="store_true", help="print the decisions, change nothing")
    t = p.add_argument_group("retrain trigger", "start a retrain (models.retrain; a passing challenger goes to shadow) "
                             "on a monitoring alarm and/or on a schedule")
    t.add_argument("--retrain-on-alarm", action="store_true",
                   help="retrain when a monitoring event is an alarm (the job's ADWIN drift, a PSI stability alarm)")
    t.add_argument("--retrain-every", type=float, metavar="SECONDS",
                   help="also retrain on a schedule: when no retrain started for this many seconds")
    t.add_argument("--retrain-cooldown", type=float, default=3600.0, metavar="SECONDS",
                   help="no second retrain within this many seconds of one (alarms meanwhile are absorbed, audited; "
                        "default 3600)")
    t.add_argument("--retrain-retries", type=int, default=0, metavar="N",
                   help="retry an alarm's retrain up to N times, a cooldown apart, while no challenger trained for it "
                        "passed the gate (the first may come before the drift has labels; default 0)")
    t.add_argument("--monitoring-subscription", metavar="S",
                   help="Pub/Sub subscription to the job's monitoring topic (a name with --project, or "
                        "projects/P/subscriptions/S)")
    t.add_argument("--project", help="Google Cloud project of --monitoring-subscription")
    t.add_argument("--emulator-host", help="HOST:PORT of a Pub/Sub emulator to read --monitoring-subscription from")
    t.add_argument("--monitoring-from", action="append", default=[], metavar="PATH",
                   help="monitoring events as JSON lines (a file, or a directory of *.jsonl) instead of Pub/Sub; "
                        "repeatable")
    t.add_argument("--retrain-source", metavar="TABLE|DIR",
                   help="what the retrain reads: a feature table (.parquet, `streamscore featurize`) or the job's "
                        "labelled-example log directory (`stream --example-log DIR`)")
    t.add_argument("--retrain-train-days", type=int, default=7, help="challenger training days (default 7)")
    t.add_argument("--retrain-delay-days", type=int, default=7, help="label delay in days (default 7)")
    t.add_argument("--retrain-eval-days", type=int, default=7, help="days of the gate's window (default 7)")
    t.add_argument("--retrain-nthread", type=int, default=2, help="training threads (default 2)")
    t.add_argument("--gate-margin", type=float, default=0.0, help="the gate's margin (retrain --gate-margin; 0)")
    t.add_argument("--gate-confidence", type=float, default=0.9, help="the gate's interval level (0.9)")
    t.add_argument("--gate-resamples", type=int, default=500, help="the gate's card-day resamples (500)")
    t.add_argument("--seed", type=int, default=0, help="training and bootstrap seed (default 0)")
    from models.signing import add_trust_arguments

    add_trust_arguments(p, signs=False)  # signs when it retrains (the challenger is signed)
    return p


def build_trigger(parser: argparse.ArgumentParser, args) -> Trigger | None:
    """The :class:`Trigger` the flags ask for (``None``: no retrain step); bad flags end with ``parser.error``."""
    if not (args.retrain_on_alarm or args.retrain_every is not None):
        if args.monitoring_subscription or args.monitoring_from or args.retrain_source:
            parser.error("--monitoring-subscription / --monitoring-from / --retrain-source need --retrain-on-alarm "
                         "and/or --retrain-every")
        return None
    if not args.retrain_source:
        parser.error("--retrain-on-alarm / --retrain-every need --retrain-source TABLE (what to retrain on)")
    if args.retrain_on_alarm and not (args.monitoring_subscription or args.monitoring_from):
        parser.error("--retrain-on-alarm needs --monitoring-subscription S or --monitoring-from PATH")
    for name in ("retrain_train_days", "retrain_eval_days", "retrain_nthread", "gate_resamples"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.retrain_delay_days < 0:
        parser.error(f"--retrain-delay-days must be >= 0, got {args.retrain_delay_days}")
    from models import gate
    from models.retrain import RetrainConfig

    try:
        config = TriggerConfig(args.retrain_on_alarm, args.retrain_cooldown, args.retrain_every, args.retrain_retries)
        rule = gate.GateRule(args.gate_margin, args.gate_confidence, args.gate_resamples, args.seed)
    except ValueError as exc:
        parser.error(str(exc).replace("cooldown_seconds", "--retrain-cooldown")
                     .replace("schedule_seconds", "--retrain-every").replace("retries", "--retrain-retries"))
    events = None
    if args.monitoring_subscription:
        name = args.monitoring_subscription
        if not name.startswith("projects/"):
            if not args.project:
                parser.error(f"--monitoring-subscription {name}: give --project, or the full projects/P/subscriptions/S")
            name = f"projects/{args.project}/subscriptions/{name}"
        events = MonitoringSubscription(name, emulator_host=args.emulator_host)
    elif args.monitoring_from:
        events = MonitoringLines(args.monitoring_from)
    retrain = RetrainConfig(train_days=args.retrain_train_days, delay_days=args.retrain_delay_days,
                            eval_days=args.retrain_eval_days, nthread=args.retrain_nthread, seed=args.seed, rule=rule,
                            shadow=True)
    return Trigger(config, events, args.retrain_source, retrain)


def run(argv: list[str] | None = None) -> int:
    """``streamscore controller``: shadow → promote → watch → rollback, through the registry's aliases."""
    from models.signing import keys_or_exit

    parser = build_parser()
    args = parser.parse_args(argv)
    retrains = args.retrain_on_alarm or args.retrain_every is not None
    keys = keys_or_exit(parser, args, signs=retrains)
    try:
        config = ControllerConfig(
            shadow_events=args.shadow_events, alert_threshold=args.alert_threshold, min_scored=args.min_scored,
            min_labelled=args.min_labelled, window_days=args.window_days,
            shadow_min_labelled=args.shadow_min_labelled, shadow_ap_margin=args.shadow_ap_margin,
            bounds=Bounds(args.min_ap, args.min_cp100, args.min_alert_rate, args.max_alert_rate))
    except ValueError as exc:
        parser.error(str(exc))
    if args.interval <= 0:
        parser.error(f"--interval must be > 0 seconds, got {args.interval}")
    trigger = build_trigger(parser, args)
    if args.shadow_log is None and not (args.labels_from or args.scores_from) and trigger is None:
        parser.error("give --shadow-log (to promote challengers) and/or --labels-from / --scores-from (to watch them)"
                     " and/or --retrain-on-alarm / --retrain-every (to retrain)")
    registry = Registry.open(args.registry, keys=keys)
    shadow_log = ShadowLogReader(args.shadow_log) if args.shadow_log else None
    sources = [ExampleLogRows(d) for d in args.labels_from] + ([ScoreLinesRows(args.scores_from)]
                                                               if args.scores_from else [])
    while True:
        try:
            outcome = tick(registry, config, shadow_log, sources, dry_run=args.dry_run, trigger=trigger)
        except RegistryError as exc:
            print(f"streamscore controller: {exc}", file=sys.stderr)
            return 2
        print(json.dumps(outcome, sort_keys=True), flush=True)
        if outcome["applied"]:
            print(f"streamscore controller: {outcome['action']} {outcome['version']}: {outcome['reason']}",
                  file=sys.stderr)
        step = outcome.get("trigger") or {}
        if step.get("action") in ("retrain", "absorb") and not args.dry_run:
            done = step.get("retrain") or {}
            result = (f" -> {done['error']}" if "error" in done else f" -> challenger {done['version']}: "
                      f"{'in shadow' if done['shadow'] else 'promoted' if done['promoted'] else 'refused'} "
                      f"({done['gate']})" if done else "")
            print(f"streamscore controller: {step['action']}: {step['reason']}{result}", file=sys.stderr)
        if args.once:
            return 0
        time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(run())
