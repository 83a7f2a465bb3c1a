"""Precision and alert rate per segment: the daily top-k alerts and the segment families."""

import json

import numpy as np
import pandas as pd
import pytest

from models import cli_eval, training
from models.segments import AMOUNT_BANDS, alerted, segment_report


def _frame():
    # Day 1: cards 1, 2, 3; day 2: cards 1, 4. Scores make cards 2 (day 1) and 4 (day 2) the top card.
    return pd.DataFrame({
        "TX_DATETIME": pd.to_datetime(["2018-08-01 10:00", "2018-08-01 11:00", "2018-08-01 12:00", "2018-08-01 13:00",
                                       "2018-08-02 09:00", "2018-08-02 10:00"]),
        "CUSTOMER_ID": [1, 2, 2, 3, 1, 4],
        "TX_FRAUD": [0, 1, 0, 0, 0, 1],
        "TX_AMOUNT": [10.0, 300.0, 30.0, 75.0, 150.0, 20.0],
        "CUSTOMER_ID_NB_TX_30DAY_WINDOW": [40.0, 3.0, 4.0, 50.0, 41.0, 1.0],
        "TERMINAL_ID_RISK_30DAY_WINDOW": [0.0, 0.2, 0.0, 0.0, 0.0, 0.5],
    })


def test_alerts_are_the_day_top_k_cards_with_all_their_transactions():
    scores = np.array([0.5, 0.9, 0.1, 0.3, 0.2, 0.8])
    assert alerted(_frame(), scores, k=1).tolist() == [False, True, True, False, False, True]
    # Ties go to the lower card id.
    assert alerted(_frame(), np.full(6, 0.5), k=1).tolist() == [True, False, False, False, True, False]


def test_segment_report_counts_precision_alert_rate_and_recall():
    report = segment_report(_frame(), np.array([0.5, 0.9, 0.1, 0.3, 0.2, 0.8]), k=1)
    assert report["all"]["all"] == {"transactions": 6, "frauds": 2, "alerts": 3, "alert_rate": 0.5,
                                    "precision": pytest.approx(2 / 3), "recall": 1.0}
    assert report["card"]["new"] == {"transactions": 3, "frauds": 2, "alerts": 3, "alert_rate": 1.0,
                                     "precision": pytest.approx(2 / 3), "recall": 1.0}
    assert report["card"]["established"]["alerts"] == 0 and report["card"]["established"]["precision"] is None
    assert report["terminal"]["recent fraud"]["precision"] == 1.0
    assert set(report["amount"]) == {"0-20", "20-50", "50-100", "100-220", ">220"}
    assert report["amount"]["0-20"]["transactions"] == 2  # 10 and 20 (a band includes its upper edge)
    assert report["amount"][f">{AMOUNT_BANDS[-1]:g}"]["frauds"] == 1
    # A family whose column is absent is left out; an unknown one is an error.
    assert "terminal" not in segment_report(_frame().drop(columns="TERMINAL_ID_RISK_30DAY_WINDOW"), np.zeros(6))
    with pytest.raises(ValueError, match="unknown segment"):
        segment_report(_frame(), np.zeros(6), families=["country"])
    with pytest.raises(ValueError, match="one score per row"):
        segment_report(_frame(), np.zeros(2))


@pytest.mark.usefixtures("signing_key_env")  # train signs, evaluate verifies
def test_evaluate_reports_segments(make_feature_table, tmp_path, capsys):
    table = make_feature_table(start="2018-07-01", days=35, per_day=300, seed=2)
    features = tmp_path / "features.parquet"
    table.to_parquet(features)
    reg = tmp_path / "reg"
    assert training.run(["--features", str(features), "--train-start", "2018-07-10", "--grid", "default",
                         "--valid-folds", "0", "--registry", str(reg), "--promote", "--nthread", "1"]) == 0
    capsys.readouterr()
    out = tmp_path / "eval.json"
    assert cli_eval.run(["--features", str(features), "--model", "production", "--registry", str(reg),
                         "--json", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    full = json.loads(out.read_text())
    assert set(full["segments"]) == {"all", "amount", "card", "terminal"}
    assert full["segments"]["all"]["all"]["transactions"] == full["n_test"]
    assert sum(r["transactions"] for r in full["segments"]["amount"].values()) == full["n_test"]
    assert set(summary["segments"]["all"]["all"]) == {"alert_rate", "precision"}
