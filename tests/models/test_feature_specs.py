"""Training and evaluation on a feature table of the extended spec: the spec is read from the
table (rebuilt and hash-checked), a named ``--spec`` must match, and registered models carry it."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from models import cli_eval, training
from models.evaluation import feature_table_spec, read_feature_table
from models.registry import Registry, SpecMismatchError
from streaming.features.batch import featurize_frame, write_features
from streaming.features.spec import DEFAULT_SPEC, EXTENDED_SPEC, FeatureSpec
from streaming.sim.simulator import simulate


@pytest.fixture(scope="module")
def transactions():
    return simulate(customers=300, terminals=600, days=60, start="2018-06-20", seed=1, radius=15.0)


@pytest.fixture(scope="module")
def extended_file(tmp_path_factory, transactions):
    path = tmp_path_factory.mktemp("features") / "extended.parquet"
    return write_features(featurize_frame(transactions, EXTENDED_SPEC), path, EXTENDED_SPEC)


def _with_metadata(src, dst, **changes):
    table = pq.read_table(src)
    metadata = {**table.schema.metadata, **{k.encode(): v.encode() for k, v in changes.items()}}
    pq.write_table(table.replace_schema_metadata(metadata), dst)
    return dst


def test_the_spec_is_read_from_the_table(extended_file, tmp_path, transactions):
    assert feature_table_spec(extended_file) == EXTENDED_SPEC
    other = FeatureSpec((1, 3), (1, 3), 2, ("amount_ratios",))
    path = write_features(featurize_frame(transactions.iloc[:500], other), tmp_path / "other.parquet", other)
    assert feature_table_spec(path) == other
    plain = tmp_path / "plain.parquet"  # no record, e.g. joined from the reference files: the reference spec
    featurize_frame(transactions.iloc[:100]).to_parquet(plain)
    assert feature_table_spec(plain) is DEFAULT_SPEC
    assert feature_table_spec(plain, "extended") is EXTENDED_SPEC


def test_a_named_spec_must_be_the_recorded_one(extended_file):
    spec = feature_table_spec(extended_file, "default")
    extended = EXTENDED_SPEC.spec_hash[:12]
    with pytest.raises(ValueError, match=f"computed with feature spec {extended}…, but this code trains on spec d342e4daeb43…"):
        read_feature_table(extended_file, spec.names, spec.spec_hash)
    with pytest.raises(ValueError, match="computed with feature spec"):
        cli_eval.run(["--features", str(extended_file), "--protocol", "handbook-ch3", "--spec", "default"])
    with pytest.raises(ValueError, match="unknown feature spec 'wide'"):
        feature_table_spec(extended_file, "wide")


def test_a_table_from_another_definition_is_refused(extended_file, tmp_path):
    stale = _with_metadata(extended_file, tmp_path / "stale.parquet", **{"streamscore.feature_spec_hash": "a" * 64})
    message = (f"computed with feature spec aaaaaaaaaaaa…, but this code computes those features as spec "
               f"{EXTENDED_SPEC.spec_hash[:12]}…; re-run `streamscore featurize`")
    with pytest.raises(ValueError, match=message):
        feature_table_spec(stale)
    description = json.loads(pq.read_schema(extended_file).metadata[b"streamscore.feature_spec"])
    unknown = _with_metadata(extended_file, tmp_path / "unknown.parquet",
                             **{"streamscore.feature_spec": json.dumps({**description, "extra": ["magic"]})})
    with pytest.raises(ValueError, match="records a feature spec this code cannot read: .*unknown group"):
        feature_table_spec(unknown)
    junk = _with_metadata(extended_file, tmp_path / "junk.parquet", **{"streamscore.feature_spec": "{"})
    with pytest.raises(ValueError, match="cannot read"):
        feature_table_spec(junk)


def test_evaluate_and_train_use_the_tables_spec(extended_file, tmp_path, capsys):
    assert cli_eval.run(["--features", str(extended_file), "--protocol", "handbook-ch3", "--nthread", "1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["feature_spec"] == {"hash": EXTENDED_SPEC.spec_hash, "n_features": 22,
                                       "extra": ["terminal_fraud_streak", "amount_ratios"]}

    reg = tmp_path / "reg"
    assert training.run(["--features", str(extended_file), "--train-start", "2018-07-25", "--grid", "default",
                         "--valid-folds", "0", "--registry", str(reg), "--nthread", "1", "--allow-unsigned"]) == 0
    version = json.loads(capsys.readouterr().out)["version"]
    registry = Registry.open(reg)
    model = registry.load(version, expected_spec_hash=EXTENDED_SPEC.spec_hash)
    assert tuple(model.feature_names) == EXTENDED_SPEC.names
    with pytest.raises(SpecMismatchError):  # a predictor on the reference features refuses it
        registry.load(version, expected_spec_hash=DEFAULT_SPEC.spec_hash)
    # and the registered model scores the table it was evaluated on
    assert cli_eval.run(["--features", str(extended_file), "--model", version, "--registry", str(reg),
                         "--allow-unsigned"]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == version


def test_reference_tables_still_read_as_before(tmp_path, transactions):
    path = write_features(featurize_frame(transactions.iloc[:300]), tmp_path / "ref.parquet", DEFAULT_SPEC)
    assert feature_table_spec(path) == DEFAULT_SPEC
    assert pa.types.is_floating(pq.read_schema(path).field("TX_AMOUNT").type)
    table = read_feature_table(path, DEFAULT_SPEC.names, DEFAULT_SPEC.spec_hash)
    assert list(table.columns)[5:] == list(DEFAULT_SPEC.names)
