"""Shared fixtures: the tuned local runner, a Pub/Sub emulator for the session, a small transactions-frame factory."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from streaming.runner import local as local_runner
from streaming.io.pubsub_local import EmulatorNotFound, PubSubEmulator, find_emulator
from streaming.store.redis_server import RedisServer, RedisServerError


@pytest.fixture(scope="session", autouse=True)
def tuned_local_runner():
    """In-process pipelines run on the local runner as ``streamscore stream`` runs there: tuned."""
    return local_runner.install()


@pytest.fixture(scope="session")
def pubsub_emulator():
    """A running Pub/Sub emulator (project ``local-project``), stopped at the end of the session.

    Tests share it, so each should use its own topic and subscription names.
    """
    try:
        find_emulator()
    except EmulatorNotFound as exc:
        pytest.skip(f"Pub/Sub emulator unavailable: {exc}")
    emulator = PubSubEmulator()
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
def redis_server():
    """A fresh ``redis-server --port N --save "" --appendonly no`` on a free port, stopped after the test.

    Tests may ``stop()`` and ``start()`` it again (same port, empty: it has no persistence).
    """
    server = RedisServer()
    try:
        server.start()
    except RedisServerError as exc:
        pytest.skip(f"redis-server unavailable: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def make_frame():
    """``make_frame(n, seed=0, fraud_rate=0.05, fraud=True)``: a reference-layout frame in time order."""

    def make(n: int, seed: int = 0, fraud_rate: float = 0.05, fraud: bool = True) -> pd.DataFrame:
        rng = np.random.default_rng(seed)
        start = np.datetime64("2018-04-01T00:00:00", "ns")
        seconds = np.sort(rng.integers(0, 3 * 86_400, size=n))
        df = pd.DataFrame({
            "TRANSACTION_ID": np.arange(n, dtype="int64"),
            "TX_DATETIME": start + seconds.astype("timedelta64[s]"),
            "CUSTOMER_ID": rng.integers(0, max(1, n // 10), size=n),
            "TERMINAL_ID": rng.integers(0, max(1, n // 5), size=n),
            "TX_AMOUNT": np.round(rng.gamma(2.0, 30.0, size=n), 2),
        })
        if fraud:
            df["TX_FRAUD"] = (rng.random(n) < fraud_rate).astype("int64")
            df["TX_FRAUD_SCENARIO"] = df["TX_FRAUD"]
        return df

    return make
