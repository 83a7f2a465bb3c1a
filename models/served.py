"""The production and online models' figures *as served*: each score a transaction got, joined with its label.

The ``scores`` topic carries, per transaction, the production (XGBoost) score and, once the
online learner has a served snapshot, ``online_score``. :class:`ServedFigures` joins those
with the labels (and cards) and reports, per event day and overall, AP and card precision@100
(:mod:`models.evaluation`'s functions) for

* ``xgboost`` — every scored transaction;
* ``online_served`` — the transactions an online snapshot scored;
* ``xgboost_where_online`` — XGBoost on those same transactions (the fair comparison).

The learner's *prequential* AP (predict each labelled example just before learning it) is
another figure: it has no label delay and no snapshot lag, so it is usually above what the
served model could show; ``docs/online-learning.md`` explains the gap.

>>> f = ServedFigures()
>>> for i, (s, o, y) in enumerate([(0.9, 0.8, 1), (0.2, 0.1, 0), (0.7, 0.9, 0), (0.1, 0.6, 1)]):
...     f.add({"transaction_id": str(i), "event_time": "2026-01-01T10:00:00Z", "score": s, "online_score": o},
...           label=y, card=i)
>>> f.overall()["online_served"]["average_precision"]
0.5833333333333333
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from models.evaluation import TOP_K, average_precision, card_precision_at_k

KINDS = ("xgboost", "online_served", "xgboost_where_online")


@dataclass
class ServedFigures:
    """Score bodies joined with labels; add each scored transaction once."""

    by_day: dict = field(default_factory=dict)  # day -> [(day, card, label, score, online score or nan)]

    @property
    def rows(self) -> list:
        return [r for day in sorted(self.by_day) for r in self.by_day[day]]

    def add(self, body: dict, *, label: int, card) -> None:
        """A ``scores`` message body (``event_time``, ``score``, ``online_score``) and its label."""
        self.add_row(str(body["event_time"])[:10], card, label, body["score"], body.get("online_score"))

    def add_row(self, day: str, card, label: int, score: float, online: float | None) -> None:
        """One served transaction: its event day (``YYYY-MM-DD``), card, label and the two scores it got."""
        self.by_day.setdefault(day, []).append(
            (day, card, int(label), float(score), float("nan") if online is None else float(online)))

    def has_day(self, day: str) -> bool:
        return day in self.by_day

    def keep_last_days(self, days: int) -> None:
        """Forget all but the latest ``days`` event days."""
        for day in sorted(self.by_day)[:-days]:
            del self.by_day[day]

    def _figures(self, rows: list) -> dict:
        out: dict = {"transactions": len(rows), "frauds": int(sum(r[2] for r in rows))}
        if not rows:
            return out
        days = np.array([r[0] for r in rows])
        cards = np.array([r[1] for r in rows])
        y = np.array([r[2] for r in rows])
        xgb = np.array([r[3] for r in rows])
        online = np.array([r[4] for r in rows])
        has = ~np.isnan(online)
        out["online_scored"] = int(has.sum())
        for kind, mask, scores in (("xgboost", np.ones(len(rows), bool), xgb), ("online_served", has, online),
                                   ("xgboost_where_online", has, xgb)):
            out[kind] = _metrics(days[mask], cards[mask], y[mask], scores[mask])
        return out

    def overall(self) -> dict:
        return self._figures(self.rows)

    def per_day(self, days=None) -> dict[str, dict]:
        """Figures of each event day (of ``days`` only, when given)."""
        return {d: self._figures(self.by_day.get(d, [])) for d in (sorted(self.by_day) if days is None else days)}


def _metrics(days, cards, y, scores) -> dict:
    if y.size == 0 or y.min() == y.max():  # the metrics need both classes
        return {"average_precision": None, f"card_precision@{TOP_K}": None, "transactions": int(y.size)}
    return {"average_precision": average_precision(y, scores),
            f"card_precision@{TOP_K}": card_precision_at_k(days, cards, y, scores, k=TOP_K).mean,
            "transactions": int(y.size)}


class ServedGauges:
    """Prometheus gauges for the online model's ``monitoring`` events (on their own
    ``CollectorRegistry`` unless one is given): ``online_served`` (as served, over the kept days
    and for the latest event day, next to XGBoost's) and ``online_snapshot`` (prequential)."""

    def __init__(self, registry=None):
        from prometheus_client import CollectorRegistry, Gauge

        self.registry = registry if registry is not None else CollectorRegistry()
        self.served = Gauge("streamscore_online_served_quality",
                            "AP and card precision@100 of the scores as served, joined with their labels",
                            ["model", "metric", "period"], registry=self.registry)
        self.prequential = Gauge("streamscore_online_prequential_quality",
                                 "The online learner's prequential AP (predict just before learning each label)",
                                 ["learner_key", "metric"], registry=self.registry)
        self.labels = Gauge("streamscore_online_served_labels_joined", "Served transactions joined with their label",
                            registry=self.registry)

    def publish(self, event: dict) -> None:
        """Set the gauges from one event; other kinds are ignored."""
        if event.get("kind") == "online_served":
            self.labels.set(event["labels_joined"])
            periods = [("kept_days", event.get("overall") or {})]
            if event.get("days"):
                periods.append(("latest_day", event["days"][max(event["days"])]))
            for period, figures in periods:
                for model in KINDS:
                    for metric, value in (figures.get(model) or {}).items():
                        if metric != "transactions" and value is not None:
                            self.served.labels(model=model, metric=metric, period=period).set(float(value))
        elif event.get("kind") == "online_snapshot" and event.get("average_precision") is not None:
            self.prequential.labels(learner_key=event.get("learner_key", ""), metric="average_precision").set(
                float(event["average_precision"]))
