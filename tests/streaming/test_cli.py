"""The `streamscore` entry point: dispatch, help and one-line errors."""

import subprocess
import sys

import pandas as pd
import pytest

from streaming import cli
from streaming.io.datasets import read_table


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    for name, (_, text) in cli.COMMANDS.items():  # one command per line, with its description
        assert any(line.split()[:1] == [name] and line.strip().endswith(text) for line in lines), name


def test_small_simulation_explains_its_fraud_rate(tmp_path, capsys):
    assert cli.main(["simulate", "--customers", "30", "--terminals", "60", "--days", "5",
                     "--out", str(tmp_path / "tx.parquet")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("wrote ") and str(tmp_path / "tx.parquet") in out
    assert "compromises 2 terminals and 3 cards every day" in out


def test_unknown_command_is_rejected(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["fly"])
    assert info.value.code == 2
    assert "invalid choice: 'fly'" in capsys.readouterr().err


def test_every_command_target_resolves():
    for target, _ in cli.COMMANDS.values():
        assert callable(cli._load(target))


def test_simulate_writes_a_dataset(tmp_path, capsys):
    out = tmp_path / "tx.parquet"
    assert cli.main(["simulate", "--customers", "20", "--terminals", "40", "--days", "5", "--seed", "3",
                     "--out", str(out)]) == 0
    df = read_table(out)
    assert len(df) > 0 and capsys.readouterr().out.startswith(f"wrote {len(df):,} transactions")


def test_simulate_drift_flags(tmp_path, capsys):
    out = tmp_path / "drift.parquet"
    args = ["simulate", "--customers", "200", "--terminals", "400", "--days", "12", "--seed", "3", "--radius", "20"]
    assert cli.main([*args, "--drift-day", "6", "--drift-kind", "new-pattern", "--out", str(out)]) == 0
    df = read_table(out)
    testing = df[df.TX_FRAUD_SCENARIO == 4]
    assert len(testing) > 0 and testing.TX_DATETIME.min() >= df.TX_DATETIME.min().normalize() + pd.Timedelta(days=6)
    assert cli.main([*args, "--drift-day", "12", "--out", str(out)]) == 2
    assert "drift_day must be a day of the run" in capsys.readouterr().err


def test_bad_input_is_one_line_with_nonzero_exit(tmp_path):
    result = subprocess.run([sys.executable, "-m", "streaming.cli", "simulate", "--customers", "0", "--out",
                             str(tmp_path / "x.parquet")], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == "streamscore simulate: customers must be an integer >= 1, got 0"
    result = subprocess.run([sys.executable, "-m", "streaming.cli", "featurize", "--input", str(tmp_path / "no.parquet"),
                             "--out", str(tmp_path / "f.parquet")], capture_output=True, text=True)
    assert result.returncode != 0 and result.stderr.strip().count("\n") == 0
    assert "does not exist" in result.stderr


def test_loadtest_dispatches_by_kind(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["loadtest", "grpc", "--help"])
    assert info.value.code == 0
    assert "--target" in capsys.readouterr().out
