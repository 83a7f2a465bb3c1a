"""Online learning from delayed labels with River, and drift detection on the production model.

:class:`OnlineLearner` owns one River model. Each labelled example (the exact feature vector the
transaction was scored with, and its label) is first *predicted* and then *learned*
(prequential evaluation), so :meth:`OnlineLearner.metrics` reports honest running
performance. The default model is ``StandardScaler | LogisticRegression``; any River
binary classifier factory can be passed.

:class:`DriftMonitor` runs ADWIN on the production model's error stream (``|label − score|``)
and reports when its mean changes.

Snapshots are a pickle round trip (``snapshot()`` → bytes → ``restore()``): River models are
plain Python objects and ``copy.deepcopy`` is slow and can hit the recursion limit. Snapshot
files are checksummed by the registry before they are loaded.

>>> learner = OnlineLearner(("a", "b"))
>>> for i in range(200):
...     _ = learner.learn_one({"a": float(i % 2), "b": 1.0}, i % 2)
>>> round(learner.predict_proba_one({"a": 1.0, "b": 1.0}), 1) > 0.5
True
>>> learner.labels_seen
200
"""

from __future__ import annotations

import pickle
from array import array
from collections.abc import Callable, Mapping, Sequence

import numpy as np


def default_model():
    """``StandardScaler | LogisticRegression`` — ~15–30 µs per update here."""
    from river import compose, linear_model, preprocessing

    return compose.Pipeline(preprocessing.StandardScaler(), linear_model.LogisticRegression())


class GenuineSubsampler:
    """Random under-sampling of the majority class: learns every fraud and a seeded fraction
    ``keep`` of the genuine examples; predicts with the wrapped classifier.

    What River's ``imblearn.RandomUnderSampler`` does with a fixed sampling rate, so the cost
    of an expensive learner (an adaptive random forest, ~870 µs per update) scales with the
    frauds rather than with the transaction rate. Ranking metrics (AP, card precision) are
    unaffected by the probability shift this causes.
    """

    def __init__(self, classifier, keep: float = 0.05, seed: int = 0):
        if not 0.0 < keep <= 1.0:
            raise ValueError(f"keep must be in (0, 1], got {keep!r}")
        import random

        self.classifier = classifier
        self.keep = keep
        self.seed = seed
        self._rng = random.Random(seed)

    def learn_one(self, x, y) -> None:
        if y or self._rng.random() < self.keep:
            self.classifier.learn_one(x, y)

    def predict_proba_one(self, x) -> dict:
        return self.classifier.predict_proba_one(x)


def arf_rus_model():
    """An adaptive random forest (10 trees, seeded) on all frauds and 5 % of the genuine examples."""
    from river import forest

    return GenuineSubsampler(forest.ARFClassifier(n_models=10, seed=0), keep=0.05, seed=0)


def linear_rus_model():
    """:func:`default_model` on all frauds and 5 % of the genuine examples."""
    return GenuineSubsampler(default_model(), keep=0.05, seed=0)


def binned_model():
    """:class:`models.online_binned.BinnedLogistic`: the linear model plus quantile-bin weights and
    the amount's log and ratios to the customer's averages (the default ``--online-learner``)."""
    from models.online_binned import binned_model as factory

    return factory()


#: The learners ``--online-learner`` offers (module-level factories: they pickle by name).
LEARNERS: dict[str, Callable[[], object]] = {"binned": binned_model, "linear": default_model,
                                              "linear-rus": linear_rus_model, "arf-rus": arf_rus_model}
#: The learner chosen on the validation weeks (``python -m models.online_eval``).
DEFAULT_LEARNER = "binned"


def learner_factory(name: str) -> Callable[[], object]:
    """The model factory called ``name`` in :data:`LEARNERS`."""
    try:
        return LEARNERS[name]
    except KeyError:
        raise ValueError(f"online learner must be one of {', '.join(LEARNERS)}, got {name!r}") from None


def average_precision(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Average precision, scikit-learn's ``average_precision_score``; NaN without a fraud.

    >>> average_precision([0.9, 0.8, 0.1], [1, 0, 1])
    0.8333333333333333
    """
    labels = np.asarray(labels, dtype=int)
    if int(labels.sum()) == 0:
        return float("nan")
    from sklearn.metrics import average_precision_score  # lazy: the job imports this module

    return float(average_precision_score(labels, np.asarray(scores, dtype=float)))


class OnlineLearner:
    """A River classifier learned one delayed label at a time, with prequential metrics.

    Parameters
    ----------
    feature_names
        Names of the feature vector's values, in order.
    model_factory
        Builds a fresh River binary classifier (default :func:`default_model`).
    max_history
        How many recent (score, label) pairs the prequential metrics keep.
    """

    def __init__(self, feature_names: Sequence[str], model_factory: Callable[[], object] = default_model,
                 max_history: int = 200_000):
        self.feature_names = tuple(feature_names)
        self.model_factory = model_factory
        self.max_history = max_history
        self._model = model_factory()
        self._scores = array("d")  # compact: the learner is pickled into streaming state
        self._labels = array("b")
        self.labels_seen = 0
        self.frauds_seen = 0

    def __setstate__(self, state: dict) -> None:  # snapshots written before frauds_seen existed
        self.__dict__.update(state)
        self.__dict__.setdefault("frauds_seen", int(sum(self._labels)))

    def _x(self, features: Mapping[str, float] | Sequence[float]) -> dict[str, float]:
        if isinstance(features, Mapping):
            return {name: float(features[name]) for name in self.feature_names}
        if len(features) != len(self.feature_names):
            raise ValueError(f"features must have {len(self.feature_names)} values, got {len(features)}")
        return dict(zip(self.feature_names, map(float, features)))

    def predict_proba_one(self, features) -> float:
        """Probability of fraud under the current model."""
        return float(self._model.predict_proba_one(self._x(features)).get(True, 0.0))

    def learn_one(self, features, label: int, *, prequential: bool = True) -> float | None:
        """Predict (for the running metrics), then learn; returns the prediction made before learning.

        With ``prequential=False`` the example is learned without that prediction (a warm start
        from a training window: those examples are history, not a running evaluation).
        """
        if label not in (0, 1):
            raise ValueError(f"label must be 0 or 1, got {label!r}")
        x = self._x(features)
        if not prequential:
            self._model.learn_one(x, bool(label))
            self.labels_seen += 1
            self.frauds_seen += int(label)
            return None
        score = float(self._model.predict_proba_one(x).get(True, 0.0))
        self._model.learn_one(x, bool(label))
        self.frauds_seen += int(label)
        self._scores.append(score)
        self._labels.append(int(label))
        if len(self._scores) > self.max_history:
            del self._scores[: len(self._scores) - self.max_history]
            del self._labels[: len(self._labels) - self.max_history]
        self.labels_seen += 1
        return score

    def metrics(self) -> dict[str, float | int]:
        """Prequential metrics over the kept history: labels, frauds, AP."""
        frauds = int(sum(self._labels))
        return {"labels": self.labels_seen, "frauds": frauds,
                "average_precision": average_precision(self._scores, self._labels) if frauds else float("nan")}

    # -- snapshots
    def snapshot(self) -> bytes:
        """The learner as bytes (pickle); ``restore(snapshot())`` is an independent copy."""
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def restore(data: bytes) -> OnlineLearner:
        learner = pickle.loads(data)
        if not isinstance(learner, OnlineLearner):
            raise TypeError(f"snapshot holds a {type(learner).__name__}, expected an OnlineLearner")
        return learner


class DriftMonitor:
    """ADWIN over the production model's absolute error; :meth:`update` says when drift is detected."""

    def __init__(self, delta: float = 0.002):
        from river import drift

        self.delta = delta
        self._adwin = drift.ADWIN(delta=delta)
        self.updates = 0
        self.drifts = 0

    def update(self, label: int, score: float) -> bool:
        self._adwin.update(abs(float(label) - float(score)))
        self.updates += 1
        if self._adwin.drift_detected:
            self.drifts += 1
            return True
        return False

    @property
    def mean_error(self) -> float:
        return float(self._adwin.estimation)
