"""Fixtures for the model tests: a feature table whose fraud pattern changes on a chosen day."""

import numpy as np
import pandas as pd
import pytest

from models.evaluation import normalise_feature_table
from streaming.features.spec import DEFAULT_SPEC

NAMES = list(DEFAULT_SPEC.names)


def drifting_feature_table(start="2018-06-01", days=42, per_day=400, drift_day=None, seed=0) -> pd.DataFrame:
    """A feature table with the 15 reference features: fraud depends on features 0 and 10 before
    ``drift_day`` (days from ``start``) and on features 5 and 12 from that day on."""
    rng = np.random.default_rng(seed)
    n = days * per_day
    seconds = np.sort(rng.integers(0, days * 86_400, n))
    x = rng.normal(size=(n, len(NAMES)))
    before = -3.4 + 2.0 * x[:, 0] + 1.4 * x[:, 10]
    after = -3.4 + 2.0 * x[:, 5] + 1.4 * x[:, 12]
    drifted = seconds >= (drift_day if drift_day is not None else days) * 86_400
    logit = np.where(drifted, after, before)
    frame = pd.DataFrame(x, columns=NAMES)
    frame.insert(0, "TRANSACTION_ID", np.arange(n))
    frame.insert(1, "TX_DATETIME", pd.Timestamp(start) + pd.to_timedelta(seconds, unit="s"))
    frame.insert(2, "CUSTOMER_ID", rng.integers(0, 1500, n))
    frame.insert(3, "TERMINAL_ID", rng.integers(0, 800, n))
    frame.insert(4, "TX_FRAUD", (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int))
    return normalise_feature_table(frame, NAMES)


@pytest.fixture
def make_feature_table():
    return drifting_feature_table
