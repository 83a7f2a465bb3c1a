"""The promotion controller's decisions: shadow → promote → watch → confirm or roll back.

Pure: :func:`decide` takes the registry's state (:class:`State`), the evidence (what the
challenger did in shadow, :class:`ShadowEvidence`; how the production version is doing live,
:class:`LiveEvidence`) and the configuration, and returns one :class:`Decision`. The driver
(:mod:`models.cli_controller`, ``streamscore controller``) reads the inputs, applies the
decision through the registry's aliases and writes it as an audit event.

The states and their rules (one change at a time: a watch ends before a challenger is promoted):

``watch`` — the production version was promoted by the controller and not yet confirmed:

* once it has ``min_scored`` scored events, its **alert rate** (share of scores above
  ``alert_threshold``) must lie in ``[min_alert_rate, max_alert_rate]``;
* once it has ``min_labelled`` labelled events (both classes), its **live quality** over the
  last ``window_days`` days (:class:`~models.monitoring.LiveQuality`: AP and card
  precision@100) must be at least ``min_average_precision`` / ``min_card_precision``;
* a bound broken → ``rollback`` (the registry's rollback: back to the version before); all
  checked and within bounds with ``min_labelled`` labels → ``confirm`` (the watch ends);
  otherwise ``wait``.

``shadow`` — the ``challenger`` alias names a version other than production's:

* fewer than ``shadow_events`` events scored in shadow → ``wait``;
* with ``shadow_min_labelled``: fewer shadowed events whose label is known → ``wait``; then
  the challenger's AP on them below production's AP on the same events minus
  ``shadow_ap_margin`` → ``retire`` (a paired comparison on the traffic both scored);
* its alert rate in shadow outside the alert-rate bounds → ``retire`` (the alias is
  cleared: it would flood or starve the investigators), else ``promote`` (production → the
  challenger, the challenger alias cleared; the watch starts).

A challenger equal to production is retired (there is nothing to shadow); no challenger and
no watch → ``wait``. Bounds left at ``None`` are not checked.

>>> config = ControllerConfig(shadow_events=100)
>>> decide(State("v1", "v2", None), config, ShadowEvidence("v2", events=40, alerts=1)).action
'wait'
>>> decide(State("v1", "v2", None), config, ShadowEvidence("v2", events=120, alerts=1)).action
'promote'
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from models.evaluation import TOP_K
from models.monitoring import LiveQuality

ACTIONS = ("wait", "promote", "retire", "rollback", "confirm")
CP = f"card_precision@{TOP_K}"


def _check_share(name: str, value: float | None) -> None:
    if value is not None and (isinstance(value, bool) or not 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be a number in [0, 1] (or unset), got {value!r}")


@dataclasses.dataclass(frozen=True)
class Bounds:
    """What a promoted model must keep to stay in production (``None``: not checked)."""

    min_average_precision: float | None = None
    min_card_precision: float | None = None
    min_alert_rate: float | None = None
    max_alert_rate: float | None = None

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            _check_share(field.name, getattr(self, field.name))
        if (self.min_alert_rate is not None and self.max_alert_rate is not None
                and self.min_alert_rate > self.max_alert_rate):
            raise ValueError(f"min_alert_rate ({self.min_alert_rate}) must be <= max_alert_rate ({self.max_alert_rate})")

    def alert_rate_violation(self, rate: float) -> str | None:
        if self.max_alert_rate is not None and rate > self.max_alert_rate:
            return f"alert rate {rate:.4f} above the bound {self.max_alert_rate:g}"
        if self.min_alert_rate is not None and rate < self.min_alert_rate:
            return f"alert rate {rate:.4f} below the bound {self.min_alert_rate:g}"
        return None

    def quality_violations(self, average_precision: float, card_precision: float | None) -> list[str]:
        out = []
        if self.min_average_precision is not None and average_precision < self.min_average_precision:
            out.append(f"AP {average_precision:.4f} below the bound {self.min_average_precision:g}")
        if (self.min_card_precision is not None and card_precision is not None
                and card_precision < self.min_card_precision):
            out.append(f"card precision@{TOP_K} {card_precision:.4f} below the bound {self.min_card_precision:g}")
        return out


@dataclasses.dataclass(frozen=True)
class ControllerConfig:
    """``streamscore controller``'s flags (see the module docstring for what each one decides)."""

    shadow_events: int = 10_000
    alert_threshold: float = 0.5
    bounds: Bounds = Bounds()
    min_scored: int = 1_000
    min_labelled: int = 1_000
    window_days: int = 7
    shadow_min_labelled: int = 0  # 0: the shadow's quality is not compared
    shadow_ap_margin: float = 0.0

    def __post_init__(self) -> None:
        for name in ("shadow_events", "min_scored", "min_labelled", "window_days"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if isinstance(self.shadow_min_labelled, bool) or not isinstance(self.shadow_min_labelled, int) \
                or self.shadow_min_labelled < 0:
            raise ValueError(f"shadow_min_labelled must be an integer >= 0, got {self.shadow_min_labelled!r}")
        _check_share("shadow_ap_margin", self.shadow_ap_margin)
        if not 0.0 < self.alert_threshold < 1.0:
            raise ValueError(f"alert_threshold must be in (0, 1), got {self.alert_threshold!r}")


@dataclasses.dataclass(frozen=True)
class State:
    """The registry's aliases, and the production version under watch (promoted by the
    controller, neither confirmed nor rolled back since), if any."""

    production: str | None
    challenger: str | None
    watching: str | None


@dataclasses.dataclass(frozen=True)
class ShadowEvidence:
    """What the challenger ``version`` did in shadow: events scored, and its alerts among them;
    of those events, how many have a known label, and both models' AP on them (``None``
    until they hold both classes)."""

    version: str
    events: int
    alerts: int
    labelled: int = 0
    shadow_ap: float | None = None
    production_ap: float | None = None

    @property
    def alert_rate(self) -> float:
        return self.alerts / self.events if self.events else math.nan


@dataclasses.dataclass(frozen=True)
class LiveEvidence:
    """How ``version`` is doing as production: scored events and their alerts; labelled events,
    frauds among them and the live quality over the window (``None`` until both classes)."""

    version: str
    scored: int
    alerts: int
    labelled: int
    frauds: int
    average_precision: float | None
    card_precision: float | None

    @property
    def alert_rate(self) -> float:
        return self.alerts / self.scored if self.scored else math.nan

    def to_dict(self) -> dict:
        return {"scored": self.scored, "alerts": self.alerts, "alert_rate": _round(self.alert_rate),
                "labelled": self.labelled, "frauds": self.frauds,
                "average_precision": _round(self.average_precision), CP: _round(self.card_precision)}


def _round(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), 6)


@dataclasses.dataclass(frozen=True)
class Decision:
    """``action`` (one of :data:`ACTIONS`) on ``version``, ``reason`` in words, ``metrics`` as evidence."""

    action: str
    version: str | None
    reason: str
    metrics: Mapping = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"action": self.action, "version": self.version, "reason": self.reason, "metrics": dict(self.metrics)}


def live_evidence(rows: pd.DataFrame, version: str, config: ControllerConfig) -> LiveEvidence:
    """:class:`LiveEvidence` of ``version`` from scored rows (columns ``TX_DATETIME``,
    ``CUSTOMER_ID``, ``score``, ``model_version``, ``TX_FRAUD``: 1/0, or NaN while unlabelled)."""
    mine = rows[rows["model_version"] == version]
    scores = mine["score"].to_numpy(dtype=np.float64)
    labelled = mine[mine["TX_FRAUD"].notna()]
    quality = {"average_precision": None, CP: None}
    if len(labelled):
        live = LiveQuality(config.window_days)
        live.update(labelled["TX_DATETIME"].to_numpy(), labelled["CUSTOMER_ID"].to_numpy(),
                    labelled["TX_FRAUD"].to_numpy(dtype=np.int64), labelled["score"].to_numpy())
        quality = live.metrics()
    return LiveEvidence(version, len(mine), int((scores > config.alert_threshold).sum()), len(labelled),
                        int(labelled["TX_FRAUD"].sum()), quality["average_precision"], quality[CP])


def decide(state: State, config: ControllerConfig, shadow: ShadowEvidence | None = None,
           live: LiveEvidence | None = None) -> Decision:
    """The one thing to do now (see the module docstring)."""
    bounds = config.bounds
    if state.watching is not None and state.watching == state.production:
        version = state.watching
        if live is None or live.version != version:
            return Decision("wait", version, f"watching {version}: no live evidence of it yet")
        metrics = {"live": live.to_dict(), "bounds": dataclasses.asdict(bounds)}
        if live.scored >= config.min_scored:
            broken = bounds.alert_rate_violation(live.alert_rate)
            if broken:
                return Decision("rollback", version, f"{version} in production: {broken} over {live.scored} "
                                f"scored events", metrics)
        judged = live.labelled >= config.min_labelled and live.average_precision is not None
        if judged:
            broken = bounds.quality_violations(live.average_precision, live.card_precision)
            if broken:
                return Decision("rollback", version, f"{version} in production: {'; '.join(broken)} over "
                                f"{live.labelled} labelled events", metrics)
        if judged and live.scored >= config.min_scored:
            return Decision("confirm", version, f"{version} kept its bounds over {live.labelled} labelled and "
                            f"{live.scored} scored events: the watch ends", metrics)
        return Decision("wait", version, f"watching {version}: {live.labelled}/{config.min_labelled} labelled, "
                        f"{live.scored}/{config.min_scored} scored events", metrics)
    if state.challenger is not None and state.challenger == state.production:
        return Decision("retire", state.challenger, f"the challenger {state.challenger} is already production: "
                        "nothing to shadow")
    if state.challenger is not None:
        version = state.challenger
        events = shadow.events if shadow is not None and shadow.version == version else 0
        if events < config.shadow_events:
            return Decision("wait", version, f"{version} in shadow: {events}/{config.shadow_events} events")
        metrics = {"shadow": {"events": shadow.events, "alerts": shadow.alerts,
                              "alert_rate": _round(shadow.alert_rate), "labelled": shadow.labelled,
                              "average_precision": _round(shadow.shadow_ap),
                              "production_average_precision": _round(shadow.production_ap)},
                   "bounds": dataclasses.asdict(bounds), "from": state.production}
        if config.shadow_min_labelled:
            if shadow.labelled < config.shadow_min_labelled or shadow.shadow_ap is None:
                return Decision("wait", version, f"{version} in shadow: {shadow.labelled}/"
                                f"{config.shadow_min_labelled} labelled shadow events", metrics)
            if shadow.shadow_ap < shadow.production_ap - config.shadow_ap_margin:
                return Decision("retire", version, f"{version} in shadow: AP {shadow.shadow_ap:.4f} on "
                                f"{shadow.labelled} labelled shadow events, production {shadow.production_ap:.4f} "
                                f"on the same (margin {config.shadow_ap_margin:g}); not promoted", metrics)
        broken = bounds.alert_rate_violation(shadow.alert_rate)
        if broken:
            return Decision("retire", version, f"{version} in shadow: {broken} over {shadow.events} events; "
                            "not promoted", metrics)
        return Decision("promote", version, f"{version} scored {shadow.events} events in shadow (alert rate "
                        f"{shadow.alert_rate:.4f}, within bounds): promoted", metrics)
    return Decision("wait", None, "no challenger in shadow and no promotion to watch")


# --------------------------------------------------------------------------- the retrain trigger

#: What the trigger does with the alarms of one tick: start a retrain, absorb them (audited, not acted on), or nothing.
TRIGGER_ACTIONS = ("retrain", "absorb", "wait")


@dataclasses.dataclass(frozen=True)
class Alarm:
    """One alarm read from the ``monitoring`` topic: ``kind`` (``drift``: the job's ADWIN on the
    production model's error; ``stability``: a PSI window whose status is ``alarm``), the model
    version it is about (``None`` when the event names none), when (the event's ``at``, if any)
    and what, in words."""

    kind: str
    model_version: str | None
    at: str | None
    detail: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def alarm_of(event: Mapping) -> Alarm | None:
    """The :class:`Alarm` a ``monitoring`` event raises, or ``None`` (snapshots, warm starts, a
    stability window that is ``ok`` or ``warn``). Raises ``ValueError`` naming the field when an
    event that should be an alarm is malformed."""
    if not isinstance(event, Mapping) or "kind" not in event:
        raise ValueError(f"a monitoring event must be an object with a 'kind', got {str(event)[:80]!r}")
    kind, version = event["kind"], event.get("model_version")
    if kind == "drift":
        error, labels = event.get("mean_error"), event.get("labels")
        detail = (f"{event.get('detector', 'ADWIN')} drift in the production model's error"
                  + (f" (mean error {error:.4f} after {labels} labels)" if isinstance(error, (int, float)) else ""))
        return Alarm("drift", version, event.get("at"), detail)
    if kind == "stability":
        if event.get("status") not in ("ok", "warn", "alarm"):
            raise ValueError(f"a stability event's 'status' must be ok, warn or alarm, got {event.get('status')!r}")
        if event["status"] != "alarm":
            return None
        drifted = event.get("drifted") or []
        return Alarm("stability", version, event.get("at"), f"PSI past the alarm threshold on {', '.join(drifted) or '?'}")
    return None


@dataclasses.dataclass(frozen=True)
class TriggerConfig:
    """When ``streamscore controller`` starts a retrain: on an alarm (``on_alarm``) and/or every
    ``schedule_seconds``; never twice within ``cooldown_seconds`` (one alarm, one retrain); an
    alarm whose retrain was refused is retried up to ``retries`` times, a cooldown apart."""

    on_alarm: bool = True
    cooldown_seconds: float = 3600.0
    schedule_seconds: float | None = None
    retries: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"retries must be an integer >= 0, got {self.retries!r}")
        if not (math.isfinite(self.cooldown_seconds) and self.cooldown_seconds >= 0):
            raise ValueError(f"cooldown_seconds must be a number >= 0, got {self.cooldown_seconds!r}")
        if self.schedule_seconds is not None and not (math.isfinite(self.schedule_seconds)
                                                      and self.schedule_seconds > 0):
            raise ValueError(f"schedule_seconds must be a number > 0 (or unset), got {self.schedule_seconds!r}")


@dataclasses.dataclass(frozen=True)
class Incident:
    """The newest alarm that started a retrain: when, on which production version, what it
    said; how many retrains ran since (itself included), and whether one of their challengers
    passed the gate (``resolved``: it went to shadow or production)."""

    at: str
    version: str | None
    detail: str
    attempts: int
    resolved: bool


def _alarm_counts(alarms) -> str:
    kinds: dict[str, int] = {}
    for a in alarms:
        kinds[a.kind] = kinds.get(a.kind, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))


def decide_retrain(state: State, config: TriggerConfig, alarms, *, now: float, last_retrain: float | None,
                   incident: Incident | None = None, production_since: float | None = None) -> Decision:
    """Whether to start a retrain now (the trigger's one rule set; ``now`` and ``last_retrain``,
    the time of the controller's newest ``retrain`` event, in seconds since the epoch):

    * alarms about another version than production (a model already replaced) are stale: absorbed;
    * a challenger in shadow or a promotion under watch: absorbed (one change at a time: the
      model being judged is the answer to the alarm);
    * a retrain started less than ``cooldown_seconds`` ago: absorbed (one alarm, one retrain —
      a drift raises many alarms while the new model is trained and judged);
    * otherwise an alarm (with ``on_alarm``) → ``retrain``;
    * no alarm, but the last alarm's retrains were all refused (the challenger trained before the
      drift had labels is no better): the next retry, up to ``retries`` (``incident``: see
      :class:`Incident`; an incident about a replaced production version is over);
    * no alarm but ``schedule_seconds`` passed since the last retrain and since production was
      put in place (``production_since``; or neither is known) → ``retrain`` (scheduled).

    Each decision's ``metrics["trigger"]`` says which rule started a retrain (``alarm``,
    ``retry``, ``schedule``).

    >>> a = Alarm("drift", "v1", None, "ADWIN drift")
    >>> decide_retrain(State("v1", None, None), TriggerConfig(), [a], now=100.0, last_retrain=None).action
    'retrain'
    >>> decide_retrain(State("v1", None, None), TriggerConfig(), [a], now=100.0, last_retrain=50.0).action
    'absorb'
    """
    alarms = list(alarms) if config.on_alarm else []
    metrics = {"alarms": [a.to_dict() for a in alarms[:20]], "alarm_count": len(alarms)}
    fresh = [a for a in alarms if a.model_version in (None, state.production)]
    stale = len(alarms) - len(fresh)
    busy = None
    if state.watching is not None and state.watching == state.production:
        busy = f"{state.watching} is under watch after its promotion"
    elif state.challenger is not None and state.challenger != state.production:
        busy = f"{state.challenger} is in shadow"
    since = None if last_retrain is None else now - last_retrain
    cooling = since is not None and since < config.cooldown_seconds
    if fresh:
        what = f"{len(fresh)} alarm(s) ({_alarm_counts(fresh)}) on {state.production}: {fresh[0].detail}"
        if stale:
            what += f"; {stale} stale alarm(s) about replaced versions ignored"
        if busy:
            return Decision("absorb", state.production, f"{what}; not retraining: {busy}", metrics)
        if cooling:
            return Decision("absorb", state.production, f"{what}; not retraining: a retrain started {since:.0f} s "
                            f"ago, within the cooldown of {config.cooldown_seconds:g} s", metrics)
        return Decision("retrain", state.production, f"retrain on {what}", {**metrics, "trigger": "alarm"})
    if stale:
        return Decision("absorb", state.production, f"{stale} stale alarm(s) about versions no longer in production "
                        f"({_alarm_counts(alarms)}) ignored", metrics)
    if (incident is not None and not incident.resolved and incident.version == state.production and not busy
            and not cooling and incident.attempts <= config.retries):
        return Decision("retrain", state.production, f"retry {incident.attempts} of {config.retries} for the alarm "
                        f"of {incident.at} ({incident.detail}): no challenger trained for it passed the gate yet",
                        {**metrics, "trigger": "retry", "incident": dataclasses.asdict(incident)})
    known = [t for t in (last_retrain, production_since) if t is not None]
    age = now - max(known) if known else None
    if config.schedule_seconds is not None and not busy and (age is None or age >= config.schedule_seconds):
        return Decision("retrain", state.production, "scheduled retrain: "
                        + ("no retrain or promotion known" if age is None else
                           f"nothing retrained or promoted for {age:.0f} s")
                        + f" (every {config.schedule_seconds:g} s)", {**metrics, "trigger": "schedule"})
    return Decision("wait", state.production, "no alarm" + (f"; {busy}" if busy else ""), metrics)
