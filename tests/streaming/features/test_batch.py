"""The batch executor: featurize_frame against the definition, and the Beam job against featurize_frame."""

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from streaming.io.datasets import DatasetError, read_table, write_table
from streaming.features import batch, featurize
from streaming.features.batch import featurize_frame, key_shards
from streaming.features.featurize import run
from streaming.features.spec import DEFAULT_SPEC, FeatureSpec
from streaming.features.windows import DAY_NS
from streaming.features.state import CustomerState, TerminalState
from streaming.sim.simulator import simulate


def make_transactions(customers=40, terminals=80, days=45, seed=3, twins=3):
    """A small simulated frame, plus ``twins`` extra transactions sharing a second with another
    of the same customer (the tie case), re-sorted into read_table's layout."""
    df = simulate(customers=customers, terminals=terminals, days=days, seed=seed, radius=20.0)
    rng = np.random.default_rng(seed)
    extra = df.iloc[rng.choice(len(df), size=twins, replace=False)].copy()
    extra["TRANSACTION_ID"] = np.arange(len(df), len(df) + twins)
    extra["TERMINAL_ID"] = rng.choice(df["TERMINAL_ID"].unique(), size=twins)
    extra["TX_AMOUNT"] = np.round(rng.uniform(1, 100, size=twins), 2)
    df = pd.concat([df, extra], ignore_index=True)
    return df.sort_values(["TX_DATETIME", "TRANSACTION_ID"], kind="stable").reset_index(drop=True)


def naive_features(df: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """FEATURES.md written out literally: for each row, filter the whole frame (O(n^2))."""
    t = df["TX_DATETIME"].to_numpy().astype(np.int64)
    cust, term = df["CUSTOMER_ID"].to_numpy(), df["TERMINAL_ID"].to_numpy()
    amount = df["TX_AMOUNT"].to_numpy()
    fraud = df["TX_FRAUD"].to_numpy() if "TX_FRAUD" in df else np.zeros(len(df), dtype=int)
    stamps = pd.DatetimeIndex(df["TX_DATETIME"])
    rows = []
    for i in range(len(df)):
        row = {"TX_AMOUNT": amount[i], "TX_DURING_WEEKEND": float(stamps[i].dayofweek >= 5),
               "TX_DURING_NIGHT": float(stamps[i].hour <= 6)}
        for n in spec.customer_windows:
            sel = (cust == cust[i]) & (t > t[i] - n * DAY_NS) & (t <= t[i])
            row[f"CUSTOMER_ID_NB_TX_{n}DAY_WINDOW"] = float(sel.sum())
            row[f"CUSTOMER_ID_AVG_AMOUNT_{n}DAY_WINDOW"] = float(np.round(amount[sel], 2).sum() / sel.sum())
        end = t[i] - spec.delay_days * DAY_NS
        for n in spec.terminal_windows:
            sel = (term == term[i]) & (t > end - n * DAY_NS) & (t <= end)
            row[f"TERMINAL_ID_NB_TX_{n}DAY_WINDOW"] = float(sel.sum())
            row[f"TERMINAL_ID_RISK_{n}DAY_WINDOW"] = float(fraud[sel].sum() / sel.sum()) if sel.any() else 0.0
        rows.append(row)
    return pd.DataFrame(rows, columns=list(spec.names))


@pytest.fixture(scope="module")
def transactions():
    return make_transactions()


@pytest.mark.parametrize("spec", [DEFAULT_SPEC, FeatureSpec((2, 5), (1, 3), 2)])
def test_featurize_frame_matches_the_definition_written_out_naively(transactions, spec):
    got = featurize_frame(transactions, spec)
    want = naive_features(transactions, spec)
    for name in spec.names:
        if "AVG" in name:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-12, err_msg=name)
        else:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_output_layout(transactions):
    out = featurize_frame(transactions)
    assert tuple(out.columns) == batch.KEY_COLUMNS + ("TX_FRAUD",) + DEFAULT_SPEC.names
    assert all(out[name].dtype == np.float64 for name in DEFAULT_SPEC.names)  # as in the reference file
    for c in ("TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_FRAUD"):
        pd.testing.assert_series_equal(out[c], transactions[c])
    assert out.attrs["feature_spec_hash"] == DEFAULT_SPEC.spec_hash


def test_row_order_and_index_of_the_input_do_not_matter(transactions):
    want = featurize_frame(transactions).set_index("TRANSACTION_ID").sort_index()
    shuffled = transactions.sample(frac=1.0, random_state=5)
    shuffled.index = shuffled.index * 10 + 7
    got = featurize_frame(shuffled)
    assert got["TRANSACTION_ID"].tolist() == shuffled["TRANSACTION_ID"].tolist()  # input order kept
    pd.testing.assert_frame_equal(got.set_index("TRANSACTION_ID").sort_index(), want)


def test_featurize_frame_does_not_mutate_its_input(transactions):
    before = transactions.copy()
    featurize_frame(transactions)
    pd.testing.assert_frame_equal(transactions, before)


def test_without_labels_no_fraud_is_known(transactions):
    out = featurize_frame(transactions.drop(columns=["TX_FRAUD", "TX_FRAUD_SCENARIO"]))
    assert "TX_FRAUD" not in out.columns
    for n in DEFAULT_SPEC.terminal_windows:
        assert (out[f"TERMINAL_ID_RISK_{n}DAY_WINDOW"] == 0).all()
    assert out["TERMINAL_ID_NB_TX_7DAY_WINDOW"].sum() > 0


def test_empty_frame_gives_empty_features(transactions):
    out = featurize_frame(transactions.iloc[:0])
    assert len(out) == 0 and set(DEFAULT_SPEC.names) <= set(out.columns)


@pytest.mark.parametrize("change, message", [
    (lambda df: df.drop(columns=["TX_AMOUNT"]), "missing column.*TX_AMOUNT"),
    (lambda df: df.assign(TRANSACTION_ID=0), "TRANSACTION_ID must be unique"),
    (lambda df: df.assign(TX_AMOUNT=np.where(df.index == 3, np.nan, df.TX_AMOUNT)), "TX_AMOUNT must be finite"),
    (lambda df: df.assign(TX_FRAUD=2), "TX_FRAUD must be 0 or 1"),
    (lambda df: df.assign(CUSTOMER_ID=np.where(df.index == 3, np.nan, df.CUSTOMER_ID)), "CUSTOMER_ID have missing"),
    (lambda df: df.assign(TX_DATETIME=df.TX_DATETIME.where(df.index != 3)), "TX_DATETIME have missing"),
])
def test_bad_frames_are_rejected_with_a_clear_message(transactions, change, message):
    with pytest.raises(DatasetError, match=message):
        featurize_frame(change(transactions))


def test_key_shards_cover_every_row_once_and_never_split_a_key(transactions):
    shards = list(key_shards(transactions, "CUSTOMER_ID", "TX_AMOUNT", rows_per_shard=200))
    assert len(shards) > 3
    positions = np.concatenate([s.positions for s in shards])
    assert sorted(positions.tolist()) == list(range(len(transactions)))
    owner = {}
    for k, shard in enumerate(shards):
        customers = transactions["CUSTOMER_ID"].to_numpy()[shard.positions]
        for a, b in zip(shard.offsets[:-1], shard.offsets[1:]):
            assert len(set(customers[a:b])) == 1
            assert np.all(np.diff(shard.times[a:b]) >= 0)
            assert owner.setdefault(customers[a], k) == k


def test_sharded_blocks_assemble_to_featurize_frame(transactions):
    spec = DEFAULT_SPEC
    blocks = [batch.row_block(transactions, 0, 100), batch.row_block(transactions, 100, len(transactions))]
    blocks += [batch.customer_block(s, spec) for s in key_shards(transactions, "CUSTOMER_ID", "TX_AMOUNT", 150)]
    blocks += [batch.terminal_block(s, spec) for s in key_shards(transactions, "TERMINAL_ID", "TX_FRAUD", 150)]
    got = batch.assemble(blocks[::-1], len(transactions), spec)  # block order does not matter
    pd.testing.assert_frame_equal(got, featurize_frame(transactions))


def test_spilled_blocks_round_trip(tmp_path, transactions):
    block = batch.row_block(transactions, 5, 50)
    positions, columns = batch.load_block(batch.spill_block(block, tmp_path / "b.arrow"))
    np.testing.assert_array_equal(positions, block[0])
    assert columns.keys() == block[1].keys()
    for name, values in block[1].items():
        np.testing.assert_array_equal(columns[name], values)
        assert columns[name].dtype == values.dtype


def test_incremental_states_replaying_the_frame_agree_with_batch(transactions):
    """One definition, two executors: a time-ordered replay (labels known right away) gives
    the batch values, except on a transaction whose same-second twin had not yet arrived."""
    out = featurize_frame(transactions)
    customers, terminals = {}, {}
    twins = transactions.duplicated(["CUSTOMER_ID", "TX_DATETIME"], keep=False).to_numpy()
    assert twins.sum() >= 2
    times = transactions["TX_DATETIME"].to_numpy().astype(np.int64).tolist()
    for i, (tid, cid, mid, amount, fraud) in enumerate(transactions[
            ["TRANSACTION_ID", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT", "TX_FRAUD"]].itertuples(index=False)):
        c = customers.setdefault(cid, CustomerState(allowed_lateness_ns=0)).add(tid, times[i], amount)
        m = terminals.setdefault(mid, TerminalState(allowed_lateness_ns=0)).add_transaction(tid, times[i])
        terminals[mid].add_label(tid, times[i], int(fraud))
        want = out.iloc[i]
        assert all(m[k] == want[k] for k in DEFAULT_SPEC.terminal_names)
        if not twins[i]:
            assert all(c[k] == want[k] for k in DEFAULT_SPEC.customer_names)


# --- the Beam job ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def transactions_file(tmp_path_factory, transactions):
    path = tmp_path_factory.mktemp("in") / "transactions.parquet"
    write_table(transactions, path)
    return path


@pytest.mark.integration
def test_beam_job_writes_exactly_featurize_frame(tmp_path, transactions_file):
    out = tmp_path / "nested" / "features.parquet"
    assert run(["--input", str(transactions_file), "--out", str(out), "--shard-rows", "300"]) == out
    want = featurize_frame(read_table(transactions_file))
    pd.testing.assert_frame_equal(pd.read_parquet(out), want, check_exact=True)
    metadata = pq.read_schema(out).metadata
    assert metadata[b"streamscore.feature_spec_hash"].decode() == DEFAULT_SPEC.spec_hash
    assert json.loads(metadata[b"streamscore.feature_spec"])["delay_days"] == 7
    assert [p.name for p in out.parent.iterdir()] == ["features.parquet"]  # scratch files removed


@pytest.mark.integration
def test_beam_job_reads_jsonl_and_takes_the_spec_from_flags(tmp_path, transactions):
    src = tmp_path / "transactions.jsonl"
    write_table(transactions.iloc[:800], src)
    out = tmp_path / "features.parquet"
    run(["--input", str(src), "--out", str(out), "--windows", "1,3", "--delay-days", "2"])
    spec = FeatureSpec((1, 3), (1, 3), 2)
    pd.testing.assert_frame_equal(pd.read_parquet(out), featurize_frame(read_table(src), spec), check_exact=True)
    assert pq.read_schema(out).metadata[b"streamscore.feature_spec_hash"].decode() == spec.spec_hash


@pytest.mark.integration
def test_beam_job_on_an_empty_file_writes_an_empty_table(tmp_path, transactions):
    src, out = tmp_path / "empty.parquet", tmp_path / "features.parquet"
    write_table(transactions.iloc[:0], src)
    run(["--input", str(src), "--out", str(out)])
    got = pd.read_parquet(out)
    assert len(got) == 0 and tuple(got.columns) == batch.KEY_COLUMNS + ("TX_FRAUD",) + DEFAULT_SPEC.names


@pytest.mark.integration
def test_beam_job_reports_bad_rows_found_inside_the_pipeline_in_one_line(tmp_path, transactions):
    src = tmp_path / "dups.jsonl"
    write_table(transactions.iloc[:50].assign(TRANSACTION_ID=1), src)
    with pytest.raises(DatasetError, match="TRANSACTION_ID must be unique") as info:
        run(["--input", str(src), "--out", str(tmp_path / "f.parquet")])
    assert "\n" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dups.jsonl"]  # no output, no scratch left


def test_missing_or_malformed_input_fails_before_the_pipeline(tmp_path, transactions):
    with pytest.raises(DatasetError, match="does not exist"):
        run(["--input", str(tmp_path / "nope.parquet"), "--out", str(tmp_path / "f.parquet")])
    bad = tmp_path / "bad.parquet"
    transactions.drop(columns=["TERMINAL_ID"]).to_parquet(bad)
    with pytest.raises(DatasetError, match="missing column.*TERMINAL_ID"):
        run(["--input", str(bad), "--out", str(tmp_path / "f.parquet")])
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet")
    with pytest.raises(DatasetError, match="could not be read"):
        run(["--input", str(junk), "--out", str(tmp_path / "f.parquet")])
    with pytest.raises(SystemExit, match="streamscore featurize: error: input file .* does not exist"):
        featurize.main(["--input", str(tmp_path / "nope.parquet"), "--out", str(tmp_path / "f.parquet")])


@pytest.mark.parametrize("flags", [["--windows", "1,x"], ["--windows", "7,1"], ["--delay-days", "-1"],
                                   ["--shard-rows", "0"], ["--out", "features.csv"]])
def test_bad_flags_exit_with_usage(tmp_path, transactions_file, flags, capsys):
    with pytest.raises(SystemExit) as info:
        run(["--input", str(transactions_file), "--out", str(tmp_path / "f.parquet"), *flags])
    assert info.value.code == 2
    assert "streamscore featurize: error:" in capsys.readouterr().err


def test_featurize_command_says_what_it_wrote(tmp_path, transactions_file, transactions, capsys):
    out = tmp_path / "f.parquet"
    assert featurize.main(["--input", str(transactions_file), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert said.startswith(f"wrote {len(transactions):,} rows x ") and str(out) in said and " s\n" in said
