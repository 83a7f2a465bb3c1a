"""Training and model selection on small synthetic feature tables; the chapter-3 baseline on the reference data."""

import datetime as dt
import json
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest

from models import cli_eval, training
from models.evaluation import (
    HANDBOOK_RESULTS,
    PROTOCOLS,
    Protocol,
    normalise_feature_table,
    split_train_test,
)
from models.monitoring import load_reference
from models.registry import Registry
from models.signing import generate
from models.report import render_report
from streaming.io.datasets import reference_dir
from streaming.features.spec import DEFAULT_SPEC

NAMES = list(DEFAULT_SPEC.names)
SMALL = {"max_depth": [3], "learning_rate": [0.3], "n_estimators": [15]}


def _logit(x, seconds, days):
    """Fraud depends on a few of the 15 features."""
    return -3.2 + 1.8 * x[:, 0] + 1.2 * x[:, 10] + 0.8 * x[:, 3] * x[:, 4]


@pytest.fixture(scope="module")
def table(make_feature_table):
    return make_feature_table(start="2018-06-15", days=62, per_day=160, seed=0, customers=300, terminals=500,
                              logit=_logit)


def test_fit_is_reproducible_with_a_seed(table):
    train = table[table["TX_DATETIME"] < "2018-06-25"]
    params = {"max_depth": 4, "n_estimators": 20, "subsample": 0.6, "colsample_bynode": 0.6}
    a = training.predict(training.fit(train, NAMES, params, seed=7), table.head(500), NAMES)
    b = training.predict(training.fit(train, NAMES, params, seed=7), table.head(500), NAMES)
    c = training.predict(training.fit(train, NAMES, params, seed=8), table.head(500), NAMES)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_the_first_trees_of_a_model_are_the_smaller_model(table):
    # select_params scores n_estimators=10 with the first 10 trees of a 20-tree booster
    train = table[table["TX_DATETIME"] < "2018-06-25"]
    params = {"max_depth": 3, "subsample": 0.7}
    big = training.fit(train, NAMES, {**params, "n_estimators": 20}, seed=3)
    small = training.fit(train, NAMES, {**params, "n_estimators": 10}, seed=3)
    np.testing.assert_allclose(training.predict(big, table.head(300), NAMES, n_rounds=10),
                               training.predict(small, table.head(300), NAMES), rtol=1e-6)


def test_train_register_load_gives_the_same_predictions(table, tmp_path):
    result = training.train_model(table, NAMES, "2018-07-25", valid_folds=0, grid=SMALL, seed=1, nthread=1)
    assert result.selection is None and result.test is not None
    registry = Registry.open(tmp_path / "reg")
    version = registry.register(result.booster, result.metadata(), spec_hash=DEFAULT_SPEC.spec_hash)
    model = registry.load(version, expected_spec_hash=DEFAULT_SPEC.spec_hash)
    rows = table.iloc[:400]
    np.testing.assert_array_equal(model.score_many(rows[NAMES].to_numpy()), training.predict(result.booster, rows, NAMES))
    meta = model.metadata
    assert meta["feature_names"] == NAMES and meta["num_boost_round"] == 15 and meta["seed"] == 1
    assert meta["params"]["objective"] == "binary:logistic" and meta["params"]["tree_method"] == "hist"
    assert meta["data"]["split"]["train"] == ["2018-07-25", "2018-07-31"]
    assert meta["data"]["split"]["test"] == ["2018-08-08", "2018-08-14"]
    assert set(meta["test_metrics"]) == {"auc_roc", "average_precision", "card_precision@100"}


def _spy(monkeypatch):
    calls = []
    real = training.select_params

    def spy(folds, *args, **kwargs):
        calls.append(folds)
        return real(folds, *args, **kwargs)

    monkeypatch.setattr(training, "select_params", spy)
    return calls


def test_model_selection_only_receives_validation_fold_rows(table, monkeypatch):
    calls = _spy(monkeypatch)
    protocol = Protocol("tiny", test_starts=(dt.date(2018, 7, 20), dt.date(2018, 7, 27)),
                        valid_starts=(dt.date(2018, 6, 29), dt.date(2018, 7, 6)),
                        train_days=5, delay_days=3, test_days=4)
    grid = {"max_depth": [2, 3], "n_estimators": [5, 10]}
    result = training.run_protocol(table, protocol, NAMES, grid=grid, seed=0, nthread=1)
    (folds,) = calls
    # exactly the rows of the validation splits, and nothing from the first test day on
    assert [f.split for f in folds] == protocol.valid_splits()
    for fold in folds:
        train, test = split_train_test(table, fold.split)
        assert fold.train["TRANSACTION_ID"].tolist() == table.iloc[train]["TRANSACTION_ID"].tolist()
        assert fold.test["TRANSACTION_ID"].tolist() == table.iloc[test]["TRANSACTION_ID"].tolist()
        seen = pd.concat([fold.train, fold.test])["TX_DATETIME"]
        assert seen.max() < pd.Timestamp(protocol.selection_end)
    assert result.params in training.expand_grid(grid)
    assert len(result.selection.results) == 4 and len(result.folds) == 2
    best = max(result.selection.results, key=lambda r: r["mean"]["average_precision"])
    assert result.params == best["params"]


def test_train_model_selects_on_folds_that_end_before_its_test_period(table, monkeypatch):
    calls = _spy(monkeypatch)
    training.train_model(table, NAMES, "2018-07-25", valid_folds=2, grid={"max_depth": [2, 3], "n_estimators": [5]},
                         nthread=1)
    (folds,) = calls
    assert [str(f.split.train_start) for f in folds] == ["2018-07-04", "2018-07-11"]
    for fold in folds:
        assert pd.concat([fold.train, fold.test])["TX_DATETIME"].max() < pd.Timestamp("2018-08-08")


def test_a_grid_needs_validation_folds(table):
    with pytest.raises(ValueError, match="needs validation folds"):
        training.train_model(table, NAMES, "2018-07-25", valid_folds=0, grid={"max_depth": [2, 3]})


def test_report_is_well_formed_html_with_the_plots(table):
    result = training.run_protocol(table, PROTOCOLS["handbook-ch3"], NAMES, grid=SMALL, nthread=1)
    text = render_report(result.folds, title="t <&>", params=result.params, reference=HANDBOOK_RESULTS["handbook-ch3"])
    assert text.startswith("<!DOCTYPE html>") and "t &lt;&amp;&gt;" in text
    svgs = [s.split("</svg>")[0] + "</svg>" for s in text.split("<svg")[1:]]
    assert len(svgs) == 5  # PR, ROC, card precision per day, score distribution, importance
    for svg in svgs:
        ET.fromstring("<svg" + svg)  # each plot is well-formed XML
    for title in ("Precision–recall", "ROC curve", "Card precision@100 per test day", "Score distribution",
                  "Feature importance"):
        assert title in text


def test_train_and_evaluate_commands(table, tmp_path, capsys):
    features = tmp_path / "features.parquet"
    table.to_parquet(features)
    reg, report, ring = tmp_path / "reg", tmp_path / "report.html", generate("trainer")
    ring.save(tmp_path / "ring.json")
    ring.save(tmp_path / "verify.json", public_only=True)
    assert training.run(["--features", str(features), "--train-start", "2018-07-25", "--grid", "default",
                         "--valid-folds", "0", "--registry", str(reg), "--promote", "--report", str(report),
                         "--nthread", "1", "--signing-key-file", str(tmp_path / "ring.json")]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    # People get one line on stderr saying what it did: rows, window, version, where, how long.
    said = captured.err.strip().splitlines()[-1]
    assert said.startswith(f"streamscore train: {len(table):,} rows from {features}, trained on 2018-07-25..2018-07-31")
    assert f"registered {out['version']} and promoted it in {reg}; report {report}" in said
    assert f"AP {out['test']['average_precision']:.3f}" in said
    registry = Registry.open(reg, keys=ring.public())  # signed by the trainer's key
    assert registry.versions() == [out["version"]] and registry.alias()["version"] == out["version"]
    assert "report.html" in registry.metadata(out["version"])["files"] and report.read_text().startswith("<!DOCTYPE")
    # The training reference is stored with the version, checksummed, and describes the training rows.
    assert "reference.json" in registry.metadata(out["version"])["files"]
    reference = load_reference(registry, out["version"])
    train_rows = table[(table["TX_DATETIME"] >= "2018-07-25") & (table["TX_DATETIME"] < "2018-08-01")]
    assert reference.rows == len(train_rows) and set(reference.bins) == {*NAMES, "score"}
    assert reference.stability(train_rows)["TX_AMOUNT"] == pytest.approx(0.0, abs=1e-12)

    json_out = tmp_path / "eval.json"
    assert cli_eval.run(["--features", str(features), "--model", "production", "--registry", str(reg),
                         "--json", str(json_out), "--report", str(tmp_path / "eval.html"),
                         "--signing-key-file", str(tmp_path / "verify.json")]) == 0
    captured = capsys.readouterr()
    evaluated = json.loads(captured.out)
    assert evaluated["model"] == out["version"]
    assert f"streamscore evaluate: model {out['version']} on {len(table):,} rows" in captured.err
    assert f"wrote {json_out}, {tmp_path / 'eval.html'}" in captured.err
    for metric, value in out["test"].items():
        assert evaluated[metric] == pytest.approx(value, abs=1e-6)
    assert json.loads(json_out.read_text())["split"]["test"] == ["2018-08-08", "2018-08-14"]

    assert cli_eval.run(["--features", str(features), "--protocol", "handbook-ch3", "--nthread", "1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["protocol"] == "handbook-ch3" and summary["grid"] == "default"
    assert {"auc_roc", "average_precision", "card_precision@100"} <= set(summary)
    # Segments over the protocol's test rows (each fold ranked by its own model).
    assert set(summary["segments"]) == {"all", "amount", "card", "terminal"}
    assert 0 < summary["segments"]["all"]["all"]["alert_rate"] <= 1  # <= 100 cards a day here: all alerted


@pytest.mark.reference
def test_reference_chapter3_baseline_is_reproduced():
    folder = reference_dir()
    if not (folder / "features_2018-04_to_2018-08.parquet").exists():
        pytest.skip(f"reference data not found at {folder} (../shared/data/fraud-handbook is absent)")
    keys = pd.read_parquet(folder / "transactions.parquet",
                           columns=["TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_FRAUD"])
    keys = keys[(keys["TX_DATETIME"] >= "2018-07-25") & (keys["TX_DATETIME"] < "2018-08-15")]
    lo, hi = int(keys["TRANSACTION_ID"].min()), int(keys["TRANSACTION_ID"].max())
    features = pd.read_parquet(folder / "features_2018-04_to_2018-08.parquet",
                               filters=[("TRANSACTION_ID", ">=", lo), ("TRANSACTION_ID", "<=", hi)])
    table = normalise_feature_table(keys.merge(features, on="TRANSACTION_ID"), NAMES)
    result = training.run_protocol(table, PROTOCOLS["handbook-ch3"], NAMES, grid="default", nthread=2)
    (fold,) = result.folds
    # the handbook's split: 67,240 training transactions (598 frauds), 58,264 test (385)
    assert len(fold.test) == 58_264 and int(fold.test["TX_FRAUD"].sum()) == 385
    for metric, expected in HANDBOOK_RESULTS["handbook-ch3"].items():
        assert result.mean[metric] == pytest.approx(expected, abs=0.02), metric


def test_protocol_refuses_a_feature_table_that_ends_before_its_test_periods(table):
    short = table[table["TX_DATETIME"] < "2018-08-12"]
    with pytest.raises(ValueError, match=r"protocol handbook-ch3: test period\(s\) \[\['2018-08-08', '2018-08-14'\]\] "
                                         r"end after the feature table"):
        training.run_protocol(short, PROTOCOLS["handbook-ch3"], NAMES, grid=SMALL)
    # training a production model on the latest data is fine: it just has no test metrics yet
    result = training.train_model(short, NAMES, "2018-07-25", valid_folds=0, grid=SMALL, nthread=1)
    assert result.test is None and result.metadata()["test_metrics"] is None
    with pytest.raises(ValueError, match=r"no transactions in the training period \['2018-05-01', '2018-05-07'\]"):
        training.train_model(table, NAMES, "2018-05-01", valid_folds=0, grid=SMALL)


def test_rank_candidates_orders_by_the_first_metric_and_breaks_ties_with_the_next():
    cp, ap = "card_precision@100", "average_precision"
    means = [{cp: 0.29, ap: 0.75}, {cp: 0.30, ap: 0.60}, {cp: 0.30, ap: 0.70}, {cp: 0.28, ap: 0.80}]
    assert training.rank_candidates(means, [cp, ap]) == [2, 1, 0, 3]
    assert training.rank_candidates(means, [ap, cp]) == [3, 0, 2, 1]
    # a single metric: ties keep the grid order (the earlier candidate wins)
    assert training.rank_candidates(means, [cp]) == [1, 2, 0, 3]
    # the same cards caught can give means that differ in the last bits: that is a tie
    noisy = [{cp: (0.1 + 0.2) / 3, ap: 0.5}, {cp: 0.1, ap: 0.6}]
    assert noisy[0][cp] != noisy[1][cp]
    assert training.rank_candidates(noisy, [cp, ap]) == [1, 0]
    # ... but a real difference (one card-day in 700 is 0.0014) is not
    assert training.rank_candidates([{cp: 0.1, ap: 0.5}, {cp: 0.1 - 1 / 700, ap: 0.9}], [cp, ap]) == [0, 1]
    tied = [{cp: 0.3, ap: 0.7}] * 3
    assert training.rank_candidates(tied, [cp, ap]) == [0, 1, 2]


def test_select_by_is_one_metric_or_several_each_once():
    assert training.parse_select_by("average_precision") == ("average_precision",)
    assert training.parse_select_by("card_precision@100, average_precision") == ("card_precision@100",
                                                                                  "average_precision")
    assert training.parse_select_by("card_precision@5", top_k=5) == ("card_precision@5",)
    for bad in ("accuracy", "card_precision@100,card_precision@100", "card_precision@100,", "card_precision@50"):
        with pytest.raises(ValueError, match="select_by must be one of"):
            training.parse_select_by(bad)
    assert "card_precision@100,average_precision" in training.SELECTION_METRICS


def test_selection_by_card_precision_breaks_its_ties_by_average_precision(table):
    protocol = Protocol("tiny", test_starts=(dt.date(2018, 7, 27),),
                        valid_starts=(dt.date(2018, 6, 22), dt.date(2018, 6, 29), dt.date(2018, 7, 6)),
                        train_days=5, delay_days=3, test_days=4, top_k=5)
    grid = {"max_depth": [1, 2, 3], "learning_rate": [0.3], "n_estimators": [2, 5, 10]}
    cp, ap = "card_precision@5", "average_precision"
    result = training.run_protocol(table, protocol, NAMES, grid=grid, select_by=f"{cp},{ap}", seed=0, nthread=1)
    selection = result.selection
    assert selection.select_by == f"{cp},{ap}" and selection.metrics == (cp, ap)
    means = [r["mean"] for r in selection.results]
    top_cp = max(m[cp] for m in means)
    contenders = [r for r in selection.results if abs(r["mean"][cp] - top_cp) <= training.TIE_TOLERANCE]
    assert len(contenders) > 1  # the case this rule is for: whole cards make ties on card precision common
    best = max(contenders, key=lambda r: r["mean"][ap])  # AP has no exact ties among these
    assert result.params == best["params"] and selection.ranked()[0]["params"] == best["params"]
    assert result.to_dict()["select_by"] == f"{cp},{ap}"
    plain = training.run_protocol(table, protocol, NAMES, grid=grid, select_by=cp, seed=0, nthread=1)
    assert plain.params != result.params  # card precision alone leaves the tie to grid order
    assert plain.selection.best_scores[cp] == pytest.approx(top_cp, abs=training.TIE_TOLERANCE)
    ranked = selection.ranked()
    assert [r["mean"][cp] for r in ranked] == sorted((r["mean"][cp] for r in ranked), reverse=True)
    # the report ranks the candidates the same way and says how they were chosen
    text = render_report(result.folds, title="t", params=result.params, selection=selection, top_k=5)
    assert "Chosen by mean validation Card precision@5, ties broken by" in text
    listing = text[text.index("Chosen by"):]
    first_row = listing.index("<td><code>")
    assert listing[:first_row].endswith("<tr class=best>")  # the chosen candidate is listed first
