"""Fixtures for the predictor tests: tiny XGBoost models and an in-process server on port 0."""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import Iterator

import numpy as np
import pytest

from models.predictor.core import Model, Scorer, default_feature_names
from models.predictor.server import PredictorServer, ServerSettings

N_FEATURES = 15

#: The native trees backend compiles a small C file once; without a compiler "auto" uses XGBoost.
HAS_CC = any(shutil.which(cc) for cc in ("cc", "gcc", "clang"))
needs_cc = pytest.mark.skipif(not HAS_CC, reason="no C compiler: the native trees backend is unavailable")


def synthetic(n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows shaped like the features (counts, amounts, risks) with a learnable label."""
    rng = np.random.default_rng(seed)
    X = np.column_stack([rng.exponential(50.0, n), rng.integers(0, 2, n), rng.integers(0, 2, n)]
                        + [rng.exponential(3.0, n) for _ in range(6)]
                        + [rng.uniform(0, 1, n) for _ in range(6)])
    logit = 0.02 * X[:, 0] + 3 * X[:, 10] + 2 * X[:, 12] - 4 + rng.normal(0, 0.5, n)
    return X, (logit > 0).astype(int)


def corrupt_version_file(root, version: str, name: str) -> None:
    """Flip one byte in the middle of a registry version's file (its checksum then fails)."""
    path = root / "versions" / version / name
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def train_booster(seed: int = 0, rounds: int = 20, depth: int = 4):
    import xgboost as xgb

    X, y = synthetic(seed=seed)
    params = {"objective": "binary:logistic", "max_depth": depth, "eta": 0.3, "nthread": 1, "seed": seed}
    return xgb.train(params, xgb.DMatrix(X, y, feature_names=list(default_feature_names())), rounds)


@pytest.fixture(scope="session")
def booster():
    return train_booster()


@pytest.fixture(scope="session")
def other_booster():
    return train_booster(seed=1, rounds=10)


@pytest.fixture
def make_scorer(booster):
    def factory(version: str = "v1", backend: str = "auto", **kwargs) -> Scorer:
        scorer = Scorer(**kwargs)
        scorer.swap(Model.from_booster(booster, version, scorer.feature_names, backend=backend))
        return scorer
    return factory


class ServerThread:
    """A PredictorServer on its own event loop in a thread, for synchronous test clients."""

    def __init__(self, settings: ServerSettings, scorer: Scorer | None, source=None):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="test-server")
        self._thread.start()
        self.server = PredictorServer(settings, scorer=scorer, source=source)
        self.call(self.server.start())

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def call(self, coro, timeout: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, grace: float = 0.1) -> None:
        self.call(self.server.stop(grace))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture
def serve() -> Iterator:
    started: list[ServerThread] = []

    def factory(scorer: Scorer | None = None, source=None, **settings) -> ServerThread:
        settings = {"host": "127.0.0.1", "port": 0, "metrics_port": 0, "grace": 0.5, **settings}
        handle = ServerThread(ServerSettings(**settings), scorer, source)
        started.append(handle)
        return handle

    yield factory
    for handle in started:
        handle.stop()
