"""Metrics, card precision@k and the event-time splits, against hand-computed cases and literal oracles."""

import datetime as dt
import itertools

import numpy as np
import pandas as pd
import pytest

from models.evaluation import (
    PROTOCOLS,
    Split,
    assess,
    average_precision,
    card_precision_at_k,
    normalise_feature_table,
    precision_recall_curve,
    prequential_starts,
    read_feature_table,
    roc_auc,
    roc_curve,
    split_train_test,
    validation_starts,
)

# --------------------------------------------------------------------------- AUC / AP


def test_auc_and_ap_hand_computed():
    y, s = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]
    # pairs (fraud, genuine): 0.35>0.1 yes, 0.35>0.4 no, 0.8>both yes -> 3/4
    assert roc_auc(y, s) == pytest.approx(0.75)
    # ranked: 0.8 (F) P=1 R=1/2; 0.4 (G); 0.35 (F) P=2/3 R=1 -> 1/2*1 + 1/2*2/3
    assert average_precision(y, s) == pytest.approx(0.5 + 1 / 3)


def test_auc_and_ap_with_ties_hand_computed():
    y, s = [0, 1, 1, 0, 1], [0.5, 0.5, 0.9, 0.2, 0.2]
    # pairs: (0.5,0.5)=1/2 (0.5,0.2)=1 (0.9,*)=2 (0.2,0.5)=0 (0.2,0.2)=1/2 -> 4/6
    assert roc_auc(y, s) == pytest.approx(4 / 6)
    # tied scores form one threshold: 0.9 P=1 R=1/3; 0.5 P=2/3 R=2/3; 0.2 P=3/5 R=1
    assert average_precision(y, s) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)


def test_perfect_and_reversed_rankings():
    y = [0, 0, 0, 1, 1]
    assert roc_auc(y, [1, 2, 3, 4, 5]) == 1.0 and average_precision(y, [1, 2, 3, 4, 5]) == 1.0
    assert roc_auc(y, [5, 4, 3, 2, 1]) == 0.0
    assert roc_auc(y, [7, 7, 7, 7, 7]) == 0.5
    assert average_precision(y, [7, 7, 7, 7, 7]) == pytest.approx(0.4)  # the prevalence


def _auc_oracle(y, s):
    pos, neg = s[y == 1], s[y == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def _ap_oracle(y, s):
    total, ap, prev_recall = y.sum(), 0.0, 0.0
    for t in sorted(set(s), reverse=True):
        chosen = s >= t
        recall = y[chosen].sum() / total
        ap += (recall - prev_recall) * y[chosen].mean()
        prev_recall = recall
    return ap


@pytest.mark.parametrize("seed", range(5))
def test_auc_and_ap_match_the_definitions_on_random_tied_scores(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 60)
    y[:2] = [0, 1]
    s = rng.integers(0, 8, 60) / 8.0  # many ties
    assert roc_auc(y, s) == pytest.approx(_auc_oracle(y, s))
    assert average_precision(y, s) == pytest.approx(_ap_oracle(y, s))


def test_curves_end_points():
    y, s = np.array([0, 1, 1, 0]), np.array([0.1, 0.7, 0.4, 0.4])
    fpr, tpr, _ = roc_curve(y, s)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    precision, recall, thresholds = precision_recall_curve(y, s)
    assert thresholds.tolist() == [0.7, 0.4, 0.1]
    assert precision.tolist() == [1.0, 2 / 3, 0.5] and recall.tolist() == [0.5, 1.0, 1.0]


def test_metric_inputs_are_validated():
    with pytest.raises(ValueError, match="needs both classes, got 0 frauds among 3"):
        roc_auc([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="only 0 and 1"):
        average_precision([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="same length"):
        roc_auc([0, 1], [0.1])
    with pytest.raises(ValueError, match="finite"):
        roc_auc([0, 1], [0.1, np.nan])


# --------------------------------------------------------------------------- card precision@k


def _cp_case():
    # day, card, fraud, score
    rows = [
        ("d1", "A", 1, 0.9), ("d1", "A", 0, 0.1), ("d1", "B", 0, 0.8), ("d1", "C", 1, 0.3),
        ("d2", "A", 1, 0.95), ("d2", "C", 1, 0.7), ("d2", "D", 0, 0.6), ("d2", "E", 0, 0.2),
        ("d3", "C", 1, 0.99), ("d3", "B", 1, 0.5), ("d3", "D", 0, 0.4),
    ]
    return [list(col) for col in zip(*rows)]


def test_card_precision_removes_cards_detected_on_earlier_days():
    days, cards, fraud, score = _cp_case()
    cp = card_precision_at_k(days, cards, fraud, score, k=2)
    # d1: top2 = A (max 0.9, fraud) and B (genuine) -> 1/2; A is now detected
    # d2: A is gone; top2 = C (fraud), D -> 1/2; C detected
    # d3: C is gone; top2 = B (fraud), D -> 1/2
    assert cp.per_day == (0.5, 0.5, 0.5)
    assert cp.mean == 0.5
    assert cp.fraud_cards_per_day == (2, 1, 1)  # {A, C}, {C}, {B}
    assert cp.days == ("d1", "d2", "d3")


def test_card_precision_without_removal_counts_cards_again():
    days, cards, fraud, score = _cp_case()
    cp = card_precision_at_k(days, cards, fraud, score, k=2, remove_detected=False)
    # d2: A (0.95) and C -> 2/2; d3: C (0.99) and B -> 2/2
    assert cp.per_day == (0.5, 1.0, 1.0)
    assert cp.mean == pytest.approx(2.5 / 3)


def test_card_precision_uses_the_cards_highest_score_and_any_fraud():
    # card 1 has a low-scored fraud and a high-scored genuine transaction: as a card it is
    # compromised with score 0.9, so it tops the day.
    cp = card_precision_at_k([0, 0, 0], [1, 1, 2], [1, 0, 0], [0.05, 0.9, 0.5], k=1)
    assert cp.per_day == (1.0,)


def test_card_precision_divides_by_k_even_when_fewer_cards_and_breaks_ties_by_card_id():
    cp = card_precision_at_k([0, 0], [7, 8], [1, 0], [0.5, 0.5], k=10)
    assert cp.per_day == (0.1,)
    # equal scores: the lower card id ranks first
    assert card_precision_at_k([0, 0], [7, 8], [1, 0], [0.5, 0.5], k=1).per_day == (1.0,)
    assert card_precision_at_k([0, 0], [7, 8], [0, 1], [0.5, 0.5], k=1).per_day == (0.0,)


def test_card_precision_orders_days_and_converts_datetime_days():
    days = np.array(["2018-08-09", "2018-08-08"], dtype="datetime64[D]")
    cp = card_precision_at_k(days, [1, 1], [1, 1], [0.9, 0.9], k=1)
    # the card is caught on 08-08 and so absent on 08-09
    assert cp.days == (dt.date(2018, 8, 8), dt.date(2018, 8, 9))
    assert cp.per_day == (1.0, 0.0)


def test_card_precision_rejects_bad_k():
    with pytest.raises(ValueError, match="k must be a positive integer"):
        card_precision_at_k([0], [1], [1], [0.5], k=0)


def test_assess_uses_event_days():
    test = pd.DataFrame({
        "TX_DATETIME": pd.to_datetime(["2018-08-08 10:00:00", "2018-08-08 23:59:59", "2018-08-09 00:00:00"]),
        "CUSTOMER_ID": [1, 2, 1], "TX_FRAUD": [1, 0, 1]})
    out = assess(test, [0.9, 0.1, 0.8], k=1)
    assert out["auc_roc"] == 1.0 and out["average_precision"] == 1.0
    assert out["card_precision@1"] == 0.5  # card 1 caught on 08-08, nothing left to catch on 08-09


# --------------------------------------------------------------------------- splits


def _split_frame():
    """Five cards, one transaction a day at noon from 2018-01-01 to 01-08, plus edge times."""
    rows = []
    frauds = {("c1", "2018-01-02"), ("c2", "2018-01-03"), ("c3", "2018-01-04"), ("c4", "2018-01-05")}
    for day in pd.date_range("2018-01-01", "2018-01-08"):
        for card in ("c1", "c2", "c3", "c4", "c5"):
            rows.append((day + pd.Timedelta(hours=12), card, int((card, f"{day:%Y-%m-%d}") in frauds)))
    for t in ("2018-01-01 00:00:00", "2018-01-02 23:59:59", "2018-01-03 00:00:00",
              "2018-01-07 23:59:59", "2018-01-08 00:00:00"):
        rows.append((pd.Timestamp(t), "c5", 0))
    df = pd.DataFrame(rows, columns=["TX_DATETIME", "CUSTOMER_ID", "TX_FRAUD"])
    return df.sort_values("TX_DATETIME").reset_index(drop=True)


def test_split_boundaries_and_known_compromised_cards():
    df = _split_frame()
    split = Split("2018-01-01", train_days=2, delay_days=2, test_days=3)
    train, test = split_train_test(df, split)
    tr, te = df.iloc[train], df.iloc[test]
    assert tr["TX_DATETIME"].min() == pd.Timestamp("2018-01-01 00:00:00")
    assert tr["TX_DATETIME"].max() == pd.Timestamp("2018-01-02 23:59:59")
    assert len(tr) == 2 * 5 + 2
    got = {(f"{t:%m-%d}", c) for t, c in zip(te["TX_DATETIME"], te["CUSTOMER_ID"])}
    expected = {
        # c1: fraud in training -> never in the test set
        # c2: fraud on 01-03 (first delay day) -> known from test day 01-06 (01-06 - 2 - 1)
        # c3: fraud on 01-04 -> known from 01-07
        # c4: fraud on test day 01-05 -> not known during the test period
        ("01-05", "c2"), ("01-05", "c3"), ("01-05", "c4"), ("01-05", "c5"),
        ("01-06", "c3"), ("01-06", "c4"), ("01-06", "c5"),
        ("01-07", "c4"), ("01-07", "c5"),
    }
    assert got == expected
    assert len(te) == len(expected) + 1  # plus c5 at 01-07 23:59:59; 01-08 00:00 is outside
    assert te["TX_DATETIME"].max() == pd.Timestamp("2018-01-07 23:59:59")
    assert np.all(np.diff(test) > 0) and np.all(np.diff(train) > 0)
    assert split.to_dict() == {"train": ["2018-01-01", "2018-01-02"], "test": ["2018-01-05", "2018-01-07"],
                               "train_days": 2, "delay_days": 2, "test_days": 3}


def _handbook_get_train_test_set(df, start, delta_train, delta_delay, delta_test):
    """A literal transcription of the handbook's ``get_train_test_set`` (shared functions)."""
    df = df.copy()
    df["TX_TIME_DAYS"] = (df["TX_DATETIME"] - pd.Timestamp("2018-04-01")).dt.days
    train_df = df[(df.TX_DATETIME >= start) & (df.TX_DATETIME < start + dt.timedelta(days=delta_train))]
    known = set(train_df[train_df.TX_FRAUD == 1].CUSTOMER_ID)
    start_day = train_df.TX_TIME_DAYS.min()
    test = []
    for day in range(delta_test):
        test_day = df[df.TX_TIME_DAYS == start_day + delta_train + delta_delay + day]
        delay_day = df[df.TX_TIME_DAYS == start_day + delta_train + day - 1]
        known = known.union(set(delay_day[delay_day.TX_FRAUD == 1].CUSTOMER_ID))
        test.append(test_day[~test_day.CUSTOMER_ID.isin(known)])
    return sorted(train_df.index), sorted(pd.concat(test).index)


@pytest.mark.parametrize("start,delays", [("2018-04-03", (3, 2, 4)), ("2018-04-06", (7, 7, 7)), ("2018-04-02", (2, 0, 3))])
def test_split_matches_the_handbook_function_on_simulated_data(start, delays):
    from streaming.sim.simulator import simulate

    df = simulate(customers=80, terminals=120, days=30, seed=3, radius=30.0)
    assert df["TX_FRAUD"].sum() > 20
    train, test = split_train_test(df, Split(start, *delays))
    ref_train, ref_test = _handbook_get_train_test_set(df, pd.Timestamp(start), *delays)
    assert train.tolist() == ref_train
    assert test.tolist() == ref_test


def test_split_validates_its_arguments():
    with pytest.raises(ValueError, match="train_days must be an integer number of days >= 1, got 0"):
        Split("2018-01-01", train_days=0)
    with pytest.raises(ValueError, match="expected a date like 2018-07-25, got 'soon'"):
        Split("soon")


# --------------------------------------------------------------------------- protocols


def test_handbook_chapter5_folds():
    ch5 = PROTOCOLS["handbook-ch5"]
    assert [str(d) for d in ch5.test_starts] == ["2018-07-25", "2018-08-01", "2018-08-08", "2018-08-15"]
    assert [str(d) for d in ch5.valid_starts] == ["2018-06-20", "2018-06-27", "2018-07-04", "2018-07-11"]
    # every validation fold's assessment period ends before the first test period starts
    assert max(s.end for s in ch5.valid_splits()) <= ch5.selection_end == dt.date(2018, 8, 8)
    assert [str(s.test_start) for s in ch5.test_splits()] == ["2018-08-08", "2018-08-15", "2018-08-22", "2018-08-29"]
    assert PROTOCOLS["handbook-ch3"].test_splits() == [Split("2018-07-25")]


def test_prequential_and_validation_starts():
    assert prequential_starts("2018-08-15", 2, 7) == (dt.date(2018, 8, 8), dt.date(2018, 8, 15))
    assert validation_starts("2018-07-25", 1, delay_days=3, assessment_days=5) == (dt.date(2018, 7, 17),)


# --------------------------------------------------------------------------- feature tables


def test_feature_table_is_read_typed_and_sorted(tmp_path):
    names = ["F1", "F2"]
    df = pd.DataFrame({"TRANSACTION_ID": [2, 1], "TX_DATETIME": pd.to_datetime(["2018-01-02", "2018-01-01"]),
                       "CUSTOMER_ID": [5, 6], "TERMINAL_ID": [7, 8], "TX_FRAUD": [1, 0], "F1": [1, 2], "F2": [0.5, 0.25],
                       "EXTRA": ["x", "y"]})
    df.to_parquet(tmp_path / "f.parquet")
    out = read_feature_table(tmp_path / "f.parquet", names)
    assert out["TRANSACTION_ID"].tolist() == [1, 2] and out["F1"].dtype == np.float64
    assert "EXTRA" not in out.columns
    with pytest.raises(ValueError, match=r"missing column\(s\) F3"):
        read_feature_table(tmp_path / "f.parquet", ["F1", "F3"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_feature_table(tmp_path / "nope.parquet", names)
    with pytest.raises(ValueError, match="TX_FRAUD must be 0 or 1"):
        normalise_feature_table(df.assign(TX_FRAUD=[1, 3]), names)


def test_feature_table_spec_hash_must_match_when_recorded(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = ["F1"]
    df = pd.DataFrame({"TRANSACTION_ID": [1], "TX_DATETIME": pd.to_datetime(["2018-01-01"]), "CUSTOMER_ID": [5],
                       "TERMINAL_ID": [7], "TX_FRAUD": [0], "F1": [1.0]})
    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata({**table.schema.metadata, b"streamscore.feature_spec_hash": b"a" * 64})
    pq.write_table(table, tmp_path / "f.parquet")
    assert len(read_feature_table(tmp_path / "f.parquet", names, spec_hash="a" * 64)) == 1
    with pytest.raises(ValueError, match=r"computed with feature spec aaaaaaaaaaaa…, but this code trains on spec bbbbbbbbbbbb…"):
        read_feature_table(tmp_path / "f.parquet", names, spec_hash="b" * 64)
    df.to_parquet(tmp_path / "plain.parquet")  # no record (e.g. joined from the reference files): accepted
    assert len(read_feature_table(tmp_path / "plain.parquet", names, spec_hash="b" * 64)) == 1
