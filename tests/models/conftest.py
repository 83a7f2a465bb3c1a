"""Fixtures for the model tests: synthetic feature tables, optionally with a fraud pattern that changes on a chosen day."""

import numpy as np
import pandas as pd
import pytest

from models.evaluation import normalise_feature_table
from streaming.features.spec import DEFAULT_SPEC

NAMES = list(DEFAULT_SPEC.names)


def _drifting_logit(drift_day):
    def logit(x, seconds, days):
        before = -3.4 + 2.0 * x[:, 0] + 1.4 * x[:, 10]
        after = -3.4 + 2.0 * x[:, 5] + 1.4 * x[:, 12]
        return np.where(seconds >= (drift_day if drift_day is not None else days) * 86_400, after, before)
    return logit


def synthetic_feature_table(start="2018-06-01", days=42, per_day=400, drift_day=None, seed=0, customers=1500,
                            terminals=800, logit=None) -> pd.DataFrame:
    """A feature table with the 15 reference features, normal noise, and fraud drawn from
    ``logit(x, seconds, days)``; by default fraud depends on features 0 and 10 before
    ``drift_day`` (days from ``start``) and on features 5 and 12 from that day on."""
    rng = np.random.default_rng(seed)
    n = days * per_day
    seconds = np.sort(rng.integers(0, days * 86_400, n))
    x = rng.normal(size=(n, len(NAMES)))
    z = (logit or _drifting_logit(drift_day))(x, seconds, days)
    frame = pd.DataFrame(x, columns=NAMES)
    frame.insert(0, "TRANSACTION_ID", np.arange(n))
    frame.insert(1, "TX_DATETIME", pd.Timestamp(start) + pd.to_timedelta(seconds, unit="s"))
    frame.insert(2, "CUSTOMER_ID", rng.integers(0, customers, n))
    frame.insert(3, "TERMINAL_ID", rng.integers(0, terminals, n))
    frame.insert(4, "TX_FRAUD", (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int))
    return normalise_feature_table(frame, NAMES)


@pytest.fixture(scope="session")
def make_feature_table():
    return synthetic_feature_table


@pytest.fixture
def signing_key_env(tmp_path, monkeypatch):
    """A fresh Ed25519 key ring in $STREAMSCORE_SIGNING_KEY_FILE: commands sign and verify as deployed."""
    from models.signing import KEY_FILE_ENV, generate

    path = tmp_path / "signing-key.json"
    generate("test-key").save(path)
    monkeypatch.setenv(KEY_FILE_ENV, str(path))
    return path
