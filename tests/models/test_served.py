"""Figures as served: the online AP from the scores topic's messages, recomputed independently."""

from __future__ import annotations

import datetime as dt

import numpy as np
import orjson

from models.online import average_precision as independent_ap
from models.served import ServedFigures
from streaming.io.events import Score
from streaming.io.encoding import encode


def scores_topic(n: int = 600, seed: int = 3):
    """``scores`` messages as the job encodes them; the first third has no online snapshot yet."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.1).astype(int)
    messages = []
    for i in range(n):
        online = None if i < n // 3 else float(np.clip(0.5 * labels[i] + rng.normal(0.3, 0.2), 0, 1))
        t = dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(hours=i * 72 / n)
        score = Score(str(i), t, float(np.clip(0.6 * labels[i] + rng.normal(0.2, 0.2), 0, 1)), "x1", {},
                      online, "o1" if online is not None else None)
        messages.append(encode(score)[0])
    return messages, labels, rng.integers(0, 40, n)


def test_the_served_ap_equals_a_recomputation_from_the_scores_topic():
    messages, labels, cards = scores_topic()
    figures = ServedFigures()
    for data in messages:
        body = orjson.loads(data)
        i = int(body["transaction_id"])
        figures.add(body, label=int(labels[i]), card=int(cards[i]))
    bodies = [orjson.loads(m) for m in messages]
    online = [(b["online_score"], labels[int(b["transaction_id"])]) for b in bodies if b.get("online_score") is not None]
    expected = independent_ap([s for s, _ in online], [y for _, y in online])
    overall = figures.overall()
    assert overall["online_scored"] == len(online) == 400
    assert abs(overall["online_served"]["average_precision"] - expected) < 1e-12
    xgb_where = independent_ap([b["score"] for b in bodies if b.get("online_score") is not None], [y for _, y in online])
    assert abs(overall["xgboost_where_online"]["average_precision"] - xgb_where) < 1e-12
    days = figures.per_day()
    assert sorted(days) == ["2026-01-01", "2026-01-02", "2026-01-03"]
    assert days["2026-01-01"]["online_scored"] == 0  # no snapshot served yet on the first day
    assert days["2026-01-01"]["online_served"]["average_precision"] is None
    third = [(b["online_score"], labels[int(b["transaction_id"])]) for b in bodies if b["event_time"].startswith("2026-01-03")]
    assert abs(days["2026-01-03"]["online_served"]["average_precision"]
               - independent_ap([s for s, _ in third], [y for _, y in third])) < 1e-12
    assert 0 <= days["2026-01-03"]["online_served"]["card_precision@100"] <= 1
