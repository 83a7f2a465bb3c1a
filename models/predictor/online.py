"""The online (River) model as the predictor serves it, next to the production XGBoost model.

The streaming job's learner writes checksummed snapshots of an
:class:`~models.online.OnlineLearner` to the registry's ``online`` alias
(:meth:`models.registry.Registry.register_online`). The predictor follows that alias
(:class:`~models.predictor.lifecycle.ModelWatcher` with ``alias="online"``), loads each new
snapshot with :func:`load_online_model` and swaps it in (:meth:`Scorer.swap_online`); every
response then carries ``online_score`` and ``online_model_version`` next to the production
score.

Predicting a micro-batch:

* the default model, ``StandardScaler | LogisticRegression`` (log loss), is read into a
  :class:`LinearForm` — the scaler's means and variances and the regression's weights and
  intercept as numpy arrays — and a batch costs a few numpy operations (~µs) instead of one
  River ``predict_proba_one`` per row (~10–20 µs each). At load time, and in the tests, it
  must agree with River's own ``predict_proba_one`` to :data:`PARITY_TOLERANCE` on fixed
  rows; when it does not, River is used;
* the binned logistic regression (:mod:`models.online_binned`, the default learner), and the
  mean logit of sharded members of it, by :class:`BinnedForm`, under the same parity check;
* any other River model is predicted by :class:`RiverForm`, one ``predict_proba_one`` per row.

>>> from models.online import OnlineLearner
>>> learner = OnlineLearner(("a", "b"))
>>> for i in range(100):
...     _ = learner.learn_one({"a": float(i % 2), "b": 1.0}, i % 2)
>>> model = OnlineModel.from_learner(learner, "o1")
>>> model.form.name
'numpy'
>>> X = np.array([[1.0, 1.0], [0.0, 1.0]])
>>> bool(abs(model.predict(X)[0] - learner.predict_proba_one([1.0, 1.0])) <= PARITY_TOLERANCE)
True
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from models.predictor.errors import ModelRejected

log = logging.getLogger(__name__)

#: How far the numpy form may be from River's ``predict_proba_one`` (probabilities).
PARITY_TOLERANCE = 1e-9

#: River's ``utils.math.sigmoid`` returns exactly 0 below -30 and 1 above 30.
_SIGMOID_CLAMP = 30.0


class OnlineForm(Protocol):
    name: str

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Fraud probabilities for a (rows, n_features) float64 matrix."""


class RiverForm:
    """Any River classifier: one ``predict_proba_one`` per row (River does not mutate on predict)."""

    name = "river"

    def __init__(self, learner):
        self._learner = learner  # an OnlineLearner: predict_proba_one takes the values in feature order

    def predict(self, X: np.ndarray) -> np.ndarray:
        predict = self._learner.predict_proba_one
        return np.fromiter((predict(row) for row in X.tolist()), np.float64, len(X))


class LinearForm:
    """``StandardScaler | LogisticRegression`` as numpy: ``sigmoid(((X - means) / stds) @ w + b)``.

    Folded into one matrix-vector product, ``sigmoid(X @ (w / stds) + (b - (means / stds) @ w))``
    (~2 µs for one row, ~8 µs for 256 here; the rounding differs from River's by ~1e-15).
    River scales a feature whose variance is 0 to 0 (``stds`` is then 1 and its weight 0 here),
    and its sigmoid is exactly 0 below -30 and 1 above 30: both are reproduced.
    """

    name = "numpy"

    def __init__(self, means: np.ndarray, stds: np.ndarray | None, weights: np.ndarray, intercept: float):
        self.means = np.ascontiguousarray(means, dtype=np.float64)
        self.stds = None if stds is None else np.ascontiguousarray(stds, dtype=np.float64)
        self.weights = np.ascontiguousarray(weights, dtype=np.float64)
        self.intercept = float(intercept)
        scaled = self.weights if self.stds is None else self.weights / self.stds
        self._w = np.ascontiguousarray(scaled)
        self._b = self.intercept - float(self.means @ scaled)

    @classmethod
    def of(cls, learner, feature_names: Sequence[str]) -> LinearForm | None:
        """The numpy form of a learner's model, or None when it is not exactly the default pipeline."""
        from river import compose, linear_model, optim, preprocessing

        model = getattr(learner, "_model", None)
        if type(model) is not compose.Pipeline or len(model.steps) != 2:
            return None
        scaler, regression = model.steps.values()
        if (type(scaler) is not preprocessing.StandardScaler or getattr(scaler, "window_size", None) is not None
                or type(regression) is not linear_model.LogisticRegression
                or type(regression.loss) is not optim.losses.Log or getattr(regression, "l1", 0) != 0):
            return None
        names = tuple(feature_names)
        means = np.array([float(scaler.means.get(n, 0.0)) for n in names])
        weights = np.array([float(regression.weights.get(n, 0.0)) for n in names])
        stds = None
        if scaler.with_std:
            variances = np.array([float(scaler.vars.get(n, 0.0)) for n in names])
            zero = variances == 0.0  # River: (x - mean) / sqrt(var) if var else 0.0
            stds = np.where(zero, 1.0, np.sqrt(np.where(zero, 1.0, variances)))
            weights = np.where(zero, 0.0, weights)
        if not (np.isfinite(means).all() and np.isfinite(weights).all() and math.isfinite(regression.intercept)
                and (stds is None or np.isfinite(stds).all())):
            return None
        return cls(means, stds, weights, regression.intercept)

    def predict(self, X: np.ndarray) -> np.ndarray:
        z = X @ self._w  # a new array: updated in place below
        if len(z) == 1:  # the common case of one request: Python floats beat five numpy calls
            v = float(z[0]) + self._b
            z[0] = 0.0 if v < -_SIGMOID_CLAMP else 1.0 if v > _SIGMOID_CLAMP else 1.0 / (1.0 + math.exp(-v))
            return z
        z += self._b
        low, high = z < -_SIGMOID_CLAMP, z > _SIGMOID_CLAMP
        np.clip(z, -_SIGMOID_CLAMP, _SIGMOID_CLAMP, out=z)
        np.negative(z, out=z)
        np.exp(z, out=z)
        z += 1.0
        np.reciprocal(z, out=z)
        if low.any() or high.any():
            z[low], z[high] = 0.0, 1.0
        return z


class BinnedForm:
    """:class:`models.online_binned.BinnedLogistic` (or the mean logit of sharded members of it) as numpy.

    Per member: the derived inputs (``log1p(amount)``, amount / (customer average + 1)), the
    standardised linear part ``((V - means) / stds) @ w`` (an input of variance 0 counts 0, as in
    the learner) and the bin weights looked up with ``searchsorted`` (``bisect_left`` in the
    learner); the members' logits are averaged, then River's clamped sigmoid.
    """

    name = "numpy-binned"

    def __init__(self, members: Sequence[Any]):
        self._members = []
        for m in members:
            p = m.parameters()
            stds = np.asarray(p["stds"], dtype=np.float64)
            live = stds > 0.0
            edges = p["edges"]
            self._members.append({
                "amount": m._amount, "ratios": list(m._ratios), "means": np.asarray(p["means"], dtype=np.float64),
                "stds": np.where(live, stds, 1.0), "weights": np.where(live, np.asarray(p["weights"]), 0.0),
                "intercept": float(p["intercept"]), "trained": p["trained"],
                "edges": None if edges is None else [np.asarray(e, dtype=np.float64) for e in edges],
                "bins": [np.asarray(b, dtype=np.float64) for b in p["bins"]]})

    @classmethod
    def of(cls, learner) -> BinnedForm | None:
        from models.online_binned import BinnedLogistic, MeanLogit

        model = getattr(learner, "_model", None)
        members = model.members if type(model) is MeanLogit else [model]
        if not members or any(type(m) is not BinnedLogistic or m.feature_names is None for m in members):
            return None
        return cls(members)

    @staticmethod
    def _logit(m: dict, X: np.ndarray) -> np.ndarray:
        if not m["trained"]:
            return np.full(len(X), -np.inf)
        if m["amount"] is not None:
            amount = X[:, m["amount"]]
            extra = [np.log1p(np.where(amount > 0.0, amount, 0.0))] + [amount / (X[:, i] + 1.0) for i in m["ratios"]]
            X = np.column_stack([X, *extra])
        z = ((X - m["means"]) / m["stds"]) @ m["weights"] + m["intercept"]
        if m["edges"] is not None:
            for j, (edges, weights) in enumerate(zip(m["edges"], m["bins"])):
                z += weights[np.searchsorted(edges, X[:, j], side="left")]
        return z

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        z = sum(self._logit(m, X) for m in self._members) / len(self._members)
        with np.errstate(over="ignore"):
            p = 1.0 / (1.0 + np.exp(-np.clip(z, -_SIGMOID_CLAMP, _SIGMOID_CLAMP)))
        p[z < -_SIGMOID_CLAMP] = 0.0
        p[z > _SIGMOID_CLAMP] = 1.0
        return p


@dataclass(frozen=True, eq=False)
class OnlineModel:
    """One loaded, immutable online model snapshot."""

    version: str
    learner: Any  # models.online.OnlineLearner; never learns here
    form: OnlineForm
    feature_names: tuple[str, ...]
    spec_hash: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_learner(cls, learner, version: str, *, fast: bool = True, spec_hash: str | None = None,
                     metadata: Mapping[str, Any] | None = None) -> OnlineModel:
        names = tuple(learner.feature_names)
        form = ((LinearForm.of(learner, names) or BinnedForm.of(learner)) if fast else None) or RiverForm(learner)
        return cls(version, learner, form, names, spec_hash, dict(metadata or {}))

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.form.predict(X)


class OnlineSource(Protocol):
    """Where online snapshots come from (the registry: :class:`~models.predictor.lifecycle.RegistrySource`)."""

    def online_version(self) -> str | None:
        """The version the ``online`` alias points at, or None when there is none yet."""

    def load_online(self, version: str) -> tuple[Any, Mapping[str, Any]]:
        """``(OnlineLearner, metadata)``, checksums and spec hash verified; raises when it cannot."""


def warm_up_online(model: OnlineModel, rows: np.ndarray) -> OnlineModel:
    """Predict fixed rows: probabilities must be finite and in [0, 1]; a numpy form must agree
    with River to :data:`PARITY_TOLERANCE` (else the model is served through River)."""
    for n in (1, 8, len(rows)):
        scores = model.predict(rows[:n])
        if scores.shape != (n,) or not np.isfinite(scores).all():
            raise ModelRejected(f"online version {model.version} warm-up produced non-finite scores")
        if (scores < 0).any() or (scores > 1).any():
            raise ModelRejected(f"online version {model.version} warm-up produced probabilities outside [0, 1]")
    if isinstance(model.form, RiverForm):
        return model
    reference = RiverForm(model.learner).predict(rows)
    worst = float(np.max(np.abs(reference - scores)))
    if not math.isfinite(worst) or worst > PARITY_TOLERANCE:
        log.warning("online version %s: the numpy form differs from River by %.3g (> %g); predicting with River",
                    model.version, worst, PARITY_TOLERANCE)
        river = OnlineModel(model.version, model.learner, RiverForm(model.learner),
                            model.feature_names, model.spec_hash, dict(model.metadata))
        return warm_up_online(river, rows)
    return model


def load_online_model(source: OnlineSource, version: str, *, feature_names: tuple[str, ...], spec_hash: str | None,
                      rows: np.ndarray, fast: bool = True) -> OnlineModel:
    """Load, verify and warm up an online snapshot; raise :class:`ModelRejected` saying why not."""
    from models.online import OnlineLearner

    try:
        learner, metadata = source.load_online(version)
    except Exception as exc:  # noqa: BLE001 - whatever the registry raises, the answer is "refused"
        raise ModelRejected(f"online version {version} could not be loaded: {exc}") from exc
    if not isinstance(learner, OnlineLearner):
        raise ModelRejected(f"online version {version} holds a {type(learner).__name__}, expected an OnlineLearner")
    model_hash = metadata.get("feature_spec_hash", metadata.get("spec_hash"))
    if spec_hash is not None and model_hash != spec_hash:
        raise ModelRejected(f"online version {version} was trained on feature spec {str(model_hash)[:12]}…, this "
                            f"predictor computes spec {spec_hash[:12]}…: refusing to serve it")
    if tuple(learner.feature_names) != tuple(feature_names):
        raise ModelRejected(f"online version {version} expects features {list(learner.feature_names)}, the "
                            f"predictor has {list(feature_names)}")
    try:
        model = OnlineModel.from_learner(learner, version, fast=fast, spec_hash=model_hash, metadata=metadata)
    except Exception as exc:  # noqa: BLE001 - an unreadable model object is a refusal too
        raise ModelRejected(f"online version {version}: cannot predict with it: {exc}") from exc
    try:
        return warm_up_online(model, rows)
    except ModelRejected:
        raise
    except Exception as exc:  # noqa: BLE001 - River raising on predict: refused, the old one keeps serving
        raise ModelRejected(f"online version {version} failed its warm-up: {type(exc).__name__}: {exc}") from exc
