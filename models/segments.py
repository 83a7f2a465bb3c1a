"""Precision and alert rate per segment, so a model that helps on average but hurts one group shows.

The alerts are the handbook's daily budget: each day, the ``k`` cards with the highest score
that day (as in card precision@k); a transaction is *alerted* when its card is among that day's
``k``. Per segment the report gives the transactions, frauds, alerted transactions, the alert
rate (alerted / transactions), the precision (frauds among the alerted transactions, ``None``
without alerts) and the recall (alerted frauds / frauds, ``None`` without frauds).

The segments (:data:`SEGMENTS`) read feature columns, so they are the same in evaluation and
in monitoring and need no data the model does not see:

* ``amount`` — bands of ``TX_AMOUNT`` (:data:`AMOUNT_BANDS`; the last band holds the
  handbook's scenario 1, amounts above 220);
* ``card`` — ``new`` when the card made at most :data:`NEW_CARD_TX` transactions in its last
  30 days (this one included: ``CUSTOMER_ID_NB_TX_30DAY_WINDOW``), else ``established``;
* ``terminal`` — ``recent fraud`` when the terminal's 30-day risk feature is above zero
  (a fraud at that terminal has been labelled), else ``clean``.

A segment family whose column is missing from the frame is left out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from models.evaluation import TOP_K, event_days

AMOUNT_BANDS = (0.0, 20.0, 50.0, 100.0, 220.0)
NEW_CARD_TX = 10


def _amount(frame: pd.DataFrame) -> np.ndarray:
    edges = np.asarray(AMOUNT_BANDS[1:])
    names = [f"{lo:g}-{hi:g}" for lo, hi in zip(AMOUNT_BANDS, AMOUNT_BANDS[1:])] + [f">{AMOUNT_BANDS[-1]:g}"]
    return np.asarray(names, dtype=object)[np.searchsorted(edges, frame["TX_AMOUNT"].to_numpy(), side="left")]


def _card(frame: pd.DataFrame) -> np.ndarray:
    return np.where(frame["CUSTOMER_ID_NB_TX_30DAY_WINDOW"].to_numpy() <= NEW_CARD_TX, "new", "established")


def _terminal(frame: pd.DataFrame) -> np.ndarray:
    return np.where(frame["TERMINAL_ID_RISK_30DAY_WINDOW"].to_numpy() > 0, "recent fraud", "clean")


#: family -> (the column it needs, row -> segment name)
SEGMENTS: dict[str, tuple[str, Callable[[pd.DataFrame], np.ndarray]]] = {
    "amount": ("TX_AMOUNT", _amount),
    "card": ("CUSTOMER_ID_NB_TX_30DAY_WINDOW", _card),
    "terminal": ("TERMINAL_ID_RISK_30DAY_WINDOW", _terminal),
}


def segments_of(names: Sequence[str], features: np.ndarray) -> dict[str, np.ndarray]:
    """``{family: segment name per row}`` for rows of ``features`` (columns named ``names``), for
    each family whose column is among them: the same assignment as :func:`segment_report`'s."""
    index = {name: j for j, name in enumerate(names)}
    frame = pd.DataFrame({column: features[:, index[column]] for column, _ in SEGMENTS.values() if column in index})
    return {family: assign(frame) for family, (column, assign) in SEGMENTS.items() if column in index}


def alerted(frame: pd.DataFrame, scores, k: int = TOP_K) -> np.ndarray:
    """Boolean per row: its card is among the ``k`` highest-scored cards of its day (ties by
    ascending card id, as :func:`~models.evaluation.card_precision_at_k`)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(frame),):
        raise ValueError(f"segments: need one score per row ({len(frame)}), got shape {scores.shape}")
    cards = pd.DataFrame({"day": event_days(frame), "card": frame["CUSTOMER_ID"].to_numpy(), "score": scores})
    best = cards.groupby(["day", "card"], sort=True)["score"].max().reset_index()
    best = best.sort_values(["day", "score", "card"], ascending=[True, False, True], kind="mergesort")
    top = best.groupby("day", sort=False).head(k)
    chosen = pd.MultiIndex.from_frame(top[["day", "card"]])
    return pd.MultiIndex.from_frame(cards[["day", "card"]]).isin(chosen)


def _row(fraud: np.ndarray, alert: np.ndarray) -> dict:
    n, frauds, alerts, hits = fraud.size, int(fraud.sum()), int(alert.sum()), int((fraud & alert).sum())
    return {"transactions": n, "frauds": frauds, "alerts": alerts, "alert_rate": alerts / n if n else None,
            "precision": hits / alerts if alerts else None, "recall": hits / frauds if frauds else None}


def segment_report(frame: pd.DataFrame, scores, k: int = TOP_K,
                   families: Sequence[str] | None = None) -> dict[str, dict[str, dict]]:
    """``{family: {segment: {transactions, frauds, alerts, alert_rate, precision, recall}}}``,
    plus ``{"all": {"all": ...}}`` for the whole frame."""
    unknown = sorted(set(families or ()) - set(SEGMENTS))
    if unknown:
        raise ValueError(f"unknown segment famil(ies) {', '.join(unknown)}; expected some of {', '.join(SEGMENTS)}")
    alert = alerted(frame, scores, k)
    fraud = frame["TX_FRAUD"].to_numpy() == 1
    out = {"all": {"all": _row(fraud, alert)}}
    for family in families or SEGMENTS:
        column, assign = SEGMENTS[family]
        if column not in frame.columns:
            continue
        names = assign(frame)
        out[family] = {str(name): _row(fraud[names == name], alert[names == name]) for name in sorted(set(names))}
    return out
