"""The scoring core: the served model, input checks, and micro-batching. No gRPC here.

Transports (``service.py`` for ``streamscore.v1.Scorer``, ``kserve.py`` for KServe v2) only
convert messages and call a :class:`Scorer`:

* :meth:`Scorer.score_one` / :meth:`Scorer.score_many` — synchronous, production model only,
  for in-process callers and the benchmark floor;
* :meth:`Scorer.submit` — the asyncio path, through a :class:`MicroBatcher`: with a backend
  that predicts off the loop (XGBoost), rows submitted while a prediction runs (or in the
  same event-loop turn) are predicted together in the next call; with the native backend
  (µs per row) each row is predicted at once. A lone request never waits for company.
  :meth:`Scorer.dispatch` is the same, except that a prediction made at once is returned
  itself instead of a future (the servicers' path: no future per request);
* :meth:`Scorer.score_now` — one unnamed row, as a request's sequence of floats, scored at once
  without numpy when :meth:`Scorer.dispatch` would score it at once anyway (native trees, no
  online model, nothing queued); else None, and the caller takes the path above.

The served :class:`Model` is swapped atomically (:meth:`Scorer.swap`): a batch is always
predicted by one model, and its responses carry that model's version. Next to it the scorer
may hold an online (River) model (:meth:`Scorer.swap_online`, see ``online.py``): then every
batch is also predicted by it, and the transports' results are
``(scores, version, online_scores, online_version)`` (the last two ``None`` without one).

>>> import numpy as np
>>> class Half:  # any backend: predict(X) -> scores
...     name, inline = "half", True
...     def predict(self, X): return np.full(len(X), 0.5)
>>> scorer = Scorer(("a", "b"))
>>> scorer.swap(Model("v1", Half(), ("a", "b")))
>>> scorer.score_one([1.0, 2.0])
(0.5, 'v1')
>>> scorer.score_one([1.0, float("nan")])
Traceback (most recent call last):
...
models.predictor.errors.InvalidArgument: features.values[1] (b) must be a finite number, got NaN
"""

from __future__ import annotations

import asyncio
import collections
import math
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import logging

import numpy as np

from models.predictor.backends import Backend, make_backend
from models.predictor.errors import InvalidArgument, ModelNotFound, NotReady, Overloaded
from models.predictor.online import OnlineModel

log = logging.getLogger(__name__)

#: The alias every client may use for the registry's production model.
PRODUCTION = "production"


def default_feature_names() -> tuple[str, ...]:
    """The 15 reference features, in order (``streaming.features.spec.DEFAULT_SPEC``)."""
    from streaming.features.spec import DEFAULT_SPEC

    return tuple(DEFAULT_SPEC.names)


@dataclass(frozen=True, eq=False)
class Model:
    """One loaded, immutable model version."""

    version: str
    backend: Backend
    feature_names: tuple[str, ...]
    spec_hash: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_booster(cls, booster, version: str, feature_names: Sequence[str], *, backend: str = "auto",
                     spec_hash: str | None = None, metadata: Mapping[str, Any] | None = None) -> Model:
        return cls(version, make_backend(booster, backend), tuple(feature_names), spec_hash, dict(metadata or {}))

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.backend.predict(X)


def _describe(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


class MicroBatcher:
    """Predict rows that arrive together in one call, without waiting for more to arrive.

    ``submit(rows)`` queues rows and returns a future of what ``predict`` returns for them: a
    tuple such as ``(scores, version)``, whose arrays hold one value per row (when rows of
    several callers were predicted together, each caller gets its own slice of every array).

    * Backends that predict off the event loop (``offload()`` true: XGBoost, ~100 µs of fixed
      cost per call) run one prediction at a time on a one-thread executor; rows submitted
      meanwhile are concatenated into the next call, up to ``max_batch_size`` rows. When
      nothing is running, a submitted row starts a prediction in the same event-loop turn: a
      lone request never waits for company.
    * Backends cheap enough to run on the loop (``offload()`` false: native trees, a few µs
      per row) predict at once, in the caller: queueing would cost more than it saves.

    More than ``max_pending`` queued rows raises :class:`Overloaded` instead of queueing
    without limit.
    """

    def __init__(self, predict: Callable[[np.ndarray], tuple], *,
                 offload: Callable[[], bool] = lambda: False, max_batch_size: int = 256,
                 max_pending: int = 16384, executor: Executor | None = None,
                 on_batch: Callable[[int], None] | None = None):
        if max_batch_size < 1 or max_pending < 1:
            raise ValueError("max_batch_size and max_pending must be >= 1")
        self.max_batch_size = max_batch_size
        self.max_pending = max_pending
        self.on_batch = on_batch
        self._predict = predict
        self._offload = offload
        self._executor = executor
        self._queue: collections.deque[tuple[np.ndarray, asyncio.Future]] = collections.deque()
        self._pending_rows = 0
        self._busy = False
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def pending_rows(self) -> int:
        return self._pending_rows

    def dispatch(self, rows: np.ndarray) -> tuple | asyncio.Future:
        """Like :meth:`submit`, but when the backend runs on the loop and nothing is queued, predict
        now and return the result itself: no future to create and await."""
        if not self._busy and not self._offload():
            if self.on_batch is not None:
                self.on_batch(len(rows))
            return self._predict(rows)  # exceptions propagate to the caller
        return self.submit(rows)

    def submit(self, rows: np.ndarray) -> asyncio.Future:
        """Queue a (k, n_features) matrix; the future resolves to (k scores, model version)."""
        n = len(rows)
        if self._pending_rows and self._pending_rows + n > self.max_pending:  # one big request alone is fine
            raise Overloaded(f"predictor queue is full ({self._pending_rows} rows waiting, limit "
                             f"{self.max_pending}); retry with backoff")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not self._busy and not self._offload():
            if self.on_batch is not None:
                self.on_batch(n)
            future.set_result(self._predict(rows))  # exceptions propagate to the caller
            return future
        self._queue.append((rows, future))
        self._pending_rows += n
        if not self._busy:
            self._busy = True
            self._loop = loop
            loop.call_soon(self._flush)
        return future

    def _take(self) -> list[tuple[np.ndarray, asyncio.Future]]:
        batch, rows = [], 0
        queue = self._queue
        while queue and (not batch or rows + len(queue[0][0]) <= self.max_batch_size):
            item = queue.popleft()
            self._pending_rows -= len(item[0])
            if item[1].cancelled():  # the caller went away (deadline, cancel): skip the work
                continue
            batch.append(item)
            rows += len(item[0])
        return batch

    def _flush(self) -> None:
        batch = self._take()
        if not batch:
            self._busy = False
            return
        X = batch[0][0] if len(batch) == 1 else np.concatenate([rows for rows, _ in batch])
        if self.on_batch is not None:
            self.on_batch(len(X))
        if self._offload():
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="predict")
            done = self._loop.run_in_executor(self._executor, self._predict, X)
            done.add_done_callback(lambda f: self._deliver(batch, f))
            return
        try:
            result = self._predict(X)
        except Exception as exc:  # noqa: BLE001 - delivered to every caller of the batch
            self._fail(batch, exc)
        else:
            self._resolve(batch, result)
        self._next()

    def _deliver(self, batch, done: asyncio.Future) -> None:
        if done.cancelled():
            self._fail(batch, asyncio.CancelledError())
        elif done.exception() is not None:
            self._fail(batch, done.exception())
        else:
            self._resolve(batch, done.result())
        self._next()

    def _next(self) -> None:
        if self._queue:
            self._loop.call_soon(self._flush)
        else:
            self._busy = False

    @staticmethod
    def _resolve(batch, result: tuple) -> None:
        if len(batch) == 1:
            future = batch[0][1]
            if not future.done():
                future.set_result(result)
            return
        start = 0
        for rows, future in batch:
            stop = start + len(rows)
            if not future.done():
                future.set_result(tuple(v[start:stop] if isinstance(v, np.ndarray) else v for v in result))
            start = stop

    @staticmethod
    def _fail(batch, exc: BaseException) -> None:
        for _, future in batch:
            if not future.done():
                future.set_exception(exc)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)


class Scorer:
    """Scores feature vectors with the current production model (and the online model, if any).

    Parameters
    ----------
    feature_names
        The model inputs in order; defaults to the 15 features of the default spec.
    name
        The model name clients may use besides ``"production"`` and ``""``.
    max_batch_size, max_pending
        Micro-batching limits (rows per prediction; rows waiting before ``Overloaded``).
    """

    def __init__(self, feature_names: Sequence[str] | None = None, *, name: str = PRODUCTION,
                 max_batch_size: int = 256, max_pending: int = 16384,
                 on_batch: Callable[[int], None] | None = None):
        self.feature_names = tuple(feature_names) if feature_names is not None else default_feature_names()
        self.name = name
        self._model: Model | None = None
        # (model, its backend's predict_values) when that backend scores one row without numpy
        # on the loop (native trees), else None: score_now's path. Set with _model (swap).
        self._one: tuple[Model, Callable[[Sequence[float]], float]] | None = None
        self._online: OnlineModel | None = None
        self.online_failures = 0  # batches whose online prediction raised (they were served without it)
        self._n = len(self.feature_names)
        self._order_cache: dict[tuple[str, ...], np.ndarray] = {}
        self._batcher = MicroBatcher(self._predict_batch, offload=self._offload, max_batch_size=max_batch_size,
                                     max_pending=max_pending, on_batch=on_batch)
        #: the challenger scored in shadow after each response (models.predictor.shadow.ShadowScorer),
        #: or None; the transports offer it every scored request, it never changes a result
        self.shadow = None

    # -- the served model ---------------------------------------------------------------

    @property
    def model(self) -> Model | None:
        return self._model

    @property
    def ready(self) -> bool:
        return self._model is not None

    @property
    def batcher(self) -> MicroBatcher:
        return self._batcher

    def swap(self, model: Model) -> None:
        """Serve ``model`` from now on (one reference assignment: atomic for every caller)."""
        if tuple(model.feature_names) != self.feature_names:
            raise ValueError(f"model {model.version} expects features {list(model.feature_names)}, "
                             f"this scorer serves {list(self.feature_names)}")
        predict_values = getattr(model.backend, "predict_values", None) if model.backend.inline else None
        self._one = (model, predict_values) if predict_values is not None else None
        self._model = model

    @property
    def online_model(self) -> OnlineModel | None:
        return self._online

    def swap_online(self, model: OnlineModel | None) -> None:
        """Serve ``model`` as the online model from now on (None: no online scores); atomic like :meth:`swap`."""
        if model is not None and tuple(model.feature_names) != self.feature_names:
            raise ValueError(f"online model {model.version} expects features {list(model.feature_names)}, "
                             f"this scorer serves {list(self.feature_names)}")
        self._online = model

    @property
    def served_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((PRODUCTION, self.name)))

    def resolve(self, model_name: str, *, field: str = "model_name") -> Model:
        """The model for a request's model name (``""`` means production)."""
        if model_name and model_name != PRODUCTION and model_name != self.name:
            names = " or ".join(f'"{n}"' for n in self.served_names)
            raise ModelNotFound(f'{field} "{model_name[:100]}" is not served here: expected {names} '
                                f'(or empty for production)', field=field)
        model = self._model
        if model is None:
            raise NotReady("no model is loaded yet: the predictor is waiting for the registry's production "
                           "version", field=field)
        return model

    # -- input checks -------------------------------------------------------------------

    def features_row(self, values: Sequence[float], names: Sequence[str] = (), *,
                     field: str = "features") -> np.ndarray:
        """One request's values (optionally named) as a checked (1, n_features) float64 row."""
        n = self._n
        if len(values) != n:
            raise InvalidArgument(f"{field}.values must have {n} values ({self._expected_names()}), "
                                  f"got {len(values)}", field=f"{field}.values")
        row = np.fromiter(values, np.float64, n)  # twice as fast as np.array on a protobuf repeated field
        if names:
            row = row[self._order(names, field)]
        check = float(row.dot(row))  # NaN or infinite when a value is (or when squares overflow): then look closer
        if check - check != 0.0 and not np.isfinite(row).all():
            i = int(np.flatnonzero(~np.isfinite(row))[0])
            original = i if not names else list(names).index(self.feature_names[i])
            raise InvalidArgument(f"{field}.values[{original}] ({self.feature_names[i]}) must be a finite number, "
                                  f"got {_describe(row[i])}", field=f"{field}.values")
        return row.reshape(1, n)

    def check_matrix(self, X: np.ndarray, *, field: str = "inputs") -> np.ndarray:
        """A (rows, n_features) float64 C-contiguous matrix with only finite values, or InvalidArgument."""
        if X.ndim != 2 or X.shape[1] != self._n or X.shape[0] < 1:
            raise InvalidArgument(f"{field} must have shape [N, {self._n}] with N >= 1, got "
                                  f"{list(X.shape)}", field=field)
        X = np.ascontiguousarray(X, dtype=np.float64)
        finite = np.isfinite(X)
        if not finite.all():
            r, c = (int(v[0]) for v in np.nonzero(~finite))
            raise InvalidArgument(f"{field} row {r}, column {c} ({self.feature_names[c]}) must be a finite number, "
                                  f"got {_describe(X[r, c])}", field=field)
        return X

    def _expected_names(self) -> str:
        names = self.feature_names
        return ", ".join(names) if len(names) <= 4 else f"{names[0]}, {names[1]}, ..., {names[-1]}"

    def _order(self, names: Sequence[str], field: str) -> np.ndarray:
        key = tuple(names)
        order = self._order_cache.get(key)
        if order is not None:
            return order
        if len(key) != self._n:
            raise InvalidArgument(f"{field}.names must have one name per value ({self._n}), got {len(key)}",
                                  field=f"{field}.names")
        position: dict[str, int] = {}
        for i, name in enumerate(key):
            if name not in self.feature_names:
                raise InvalidArgument(f'{field}.names[{i}] "{name[:100]}" is not a model feature: expected one of '
                                      f"{self._expected_names()}", field=f"{field}.names")
            if name in position:
                raise InvalidArgument(f'{field}.names[{i}] "{name}" is repeated (also at [{position[name]}])',
                                      field=f"{field}.names")
            position[name] = i
        order = np.array([position[name] for name in self.feature_names], dtype=np.intp)
        if len(self._order_cache) < 64:
            self._order_cache[key] = order
        return order

    # -- scoring ------------------------------------------------------------------------

    def score_one(self, values: Sequence[float], names: Sequence[str] = ()) -> tuple[float, str]:
        """Score one feature vector now with the production model: ``(score, model_version)``."""
        model = self.resolve("")
        return float(model.predict(self.features_row(values, names))[0]), model.version

    def score_many(self, matrix) -> tuple[np.ndarray, str]:
        """Score a (rows, n_features) matrix now with the production model: ``(scores, model_version)``."""
        model = self.resolve("")
        return model.predict(self.check_matrix(np.asarray(matrix, dtype=np.float64), field="matrix")), model.version

    def score_now(self, values: Sequence[float], model_name: str = "") -> tuple[float, str] | None:
        """One request's values (unnamed, in order) scored now, on the caller's thread, without
        numpy: ``(score, model_version)``; or None when this path does not apply, and the
        caller takes the general one (:meth:`features_row`, then :meth:`dispatch`), which also
        names what is wrong with bad input. It applies when the production backend scores a row
        in µs on the loop (native trees), no online model is loaded (its scores come from a
        matrix) and the micro-batcher has nothing queued (queued rows go first): exactly when
        :meth:`dispatch` would predict the row at once, at about a third of the cost for a lone
        request (measured in the serving process, where numpy's calls run cold between requests).
        ``model_name`` is the request's (:meth:`resolve`'s names; another one: None).
        """
        one = self._one
        if (one is None or self._online is not None or self._batcher._busy or len(values) != self._n
                or (model_name and model_name != PRODUCTION and model_name != self.name)):
            return None
        model, predict_values = one
        score = predict_values(values)
        if score != score:  # NaN: some value is not finite (the general path says which)
            return None
        on_batch = self._batcher.on_batch
        if on_batch is not None:
            on_batch(1)
        return score, model.version

    def submit(self, rows: np.ndarray) -> asyncio.Future:
        """Queue checked rows for the micro-batcher (call on the event loop); await
        ``(scores, version, online_scores, online_version)``."""
        if self._model is None:
            raise NotReady("no model is loaded yet: the predictor is waiting for the registry's production version")
        return self._batcher.submit(rows)

    def dispatch(self, rows: np.ndarray) -> tuple | asyncio.Future:
        """Score checked rows now when the backend runs on the loop (returns the result tuple),
        else queue them for the micro-batcher (returns a future of that): call on the event loop.

        ``result = scorer.dispatch(rows)``, then ``if type(result) is not tuple: result = await result``;
        ``scores, version, online_scores, online_version = result``.
        """
        if self._model is None:
            raise NotReady("no model is loaded yet: the predictor is waiting for the registry's production version")
        return self._batcher.dispatch(rows)

    def _predict_batch(self, X: np.ndarray) -> tuple[np.ndarray, str, np.ndarray | None, str | None]:
        model, online = self._model, self._online  # one snapshot per batch: every row gets the same versions
        scores = model.predict(X)
        if online is None:
            return scores, model.version, None, None
        try:
            return scores, model.version, online.predict(X), online.version
        except Exception:  # noqa: BLE001 - the online model must never cost a production score
            self.online_failures += 1
            if self.online_failures == 1 or self.online_failures % 10_000 == 0:
                log.exception("online model %s failed to predict (%d batches so far); serving production scores "
                              "without online scores", online.version, self.online_failures)
            return scores, model.version, None, None

    def _offload(self) -> bool:
        model = self._model
        return model is not None and not model.backend.inline

    @property
    def offloaded(self) -> bool:
        """True when predictions run off the event loop (and so can be batched)."""
        return self._offload()

    def close(self) -> None:
        self._batcher.close()
