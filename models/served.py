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

    rows: list = field(default_factory=list)  # (day, card, label, score, online score or nan)

    def add(self, body: dict, *, label: int, card) -> None:
        online = body.get("online_score")
        self.rows.append((str(body["event_time"])[:10], card, int(label), float(body["score"]),
                          float("nan") if online is None else float(online)))

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

    def per_day(self) -> dict[str, dict]:
        days = sorted({r[0] for r in self.rows})
        return {d: self._figures([r for r in self.rows if r[0] == d]) for d in days}


def _metrics(days, cards, y, scores) -> dict:
    if y.size == 0 or y.min() == y.max():  # the metrics need both classes
        return {"average_precision": None, f"card_precision@{TOP_K}": None, "transactions": int(y.size)}
    return {"average_precision": average_precision(y, scores),
            f"card_precision@{TOP_K}": card_precision_at_k(days, cards, y, scores, k=TOP_K).mean,
            "transactions": int(y.size)}
