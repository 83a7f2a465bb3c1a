"""Model lifecycle: follow the registry's ``production``, ``online`` and ``challenger`` aliases
and hot-swap without a failed request.

:class:`ModelWatcher` polls one alias. When it moves (promote or rollback; a new online
snapshot) the new version is loaded off the event loop, verified, warmed up and only then
swapped in with one reference assignment (:meth:`Scorer.swap`, :meth:`Scorer.swap_online`):
requests in flight finish on the old model, the next batch uses the new one. A version that
fails any step is refused — the old model keeps serving, the refusal is logged and counted,
and it is retried only after ``retry_refused`` seconds (versions are immutable, so retrying
sooner cannot help). The predictor runs one watcher per alias; an absent ``online`` alias is
normal (responses then carry no online score). The ``challenger`` alias is loaded exactly like
production (the steps below) and handed to the scorer's shadow
(:class:`~models.predictor.shadow.ShadowScorer`); when the alias is cleared (the controller
promoted or retired the challenger), the shadow is unloaded.

Steps of :func:`load_model`:

1. the registry loads the version, verifying every file's sha256 (corrupt -> refused);
2. the model's feature-spec hash must equal the predictor's (another spec -> refused);
3. its feature names and count must be the scorer's;
4. warm-up: score a fixed set of rows through the chosen backend; every score must be finite
   (and in [0, 1] for probabilities), and a native backend must agree with XGBoost to 1e-6
   (with ``--backend auto`` a disagreeing native backend is replaced by XGBoost, not refused).

Online snapshots go through :func:`models.predictor.online.load_online_model`: checksums and
spec hash (the registry's ``load_online``), feature names, and a warm-up whose probabilities
must be finite and in [0, 1].
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from models.predictor.backends import XGBoostBackend
from models.predictor.core import PRODUCTION, Model, Scorer
from models.predictor.errors import ModelRejected
from models.predictor.online import OnlineModel, load_online_model
from models.predictor.shadow import CHALLENGER

#: The registry alias of the online (River) model.
ONLINE = "online"
ALIASES = (PRODUCTION, ONLINE, CHALLENGER)

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-6


def default_spec_hash() -> str:
    from streaming.features.spec import DEFAULT_SPEC

    return DEFAULT_SPEC.spec_hash


class ModelSource(Protocol):
    """Where versions come from: the registry (:class:`RegistrySource`) or a test double."""

    def production_version(self) -> str | None:
        """The version the ``production`` alias points at, or None when there is none yet."""

    def load(self, version: str) -> tuple[Any, Mapping[str, Any]]:
        """``(xgboost.Booster, metadata)`` of a version, files verified; raises when it cannot."""


class RegistrySource:
    """:class:`ModelSource` over :class:`models.registry.Registry` (a directory or ``gs://`` prefix).

    The registry's ``load`` verifies the version's signature (with ``keys``: see
    :mod:`models.signing`), every file's sha256 and the feature-spec hash before deserialising;
    its errors (``UntrustedVersionError``, ``IntegrityError``, ``SpecMismatchError``, ...) become
    refusals in :func:`load_model`.
    """

    def __init__(self, location: str | Path, spec_hash: str | None = None, keys=None):
        from models.registry import Registry

        self.location = location
        self.spec_hash = spec_hash or default_spec_hash()
        self._registry = Registry.open(location, keys=keys)

    def production_version(self) -> str | None:
        return self._registry.alias()["version"]

    def load(self, version: str) -> tuple[Any, Mapping[str, Any]]:
        loaded = self._registry.load(version, expected_spec_hash=self.spec_hash)
        return loaded.booster, loaded.metadata

    def online_version(self) -> str | None:
        return self._registry.alias(ONLINE)["version"]

    def challenger_version(self) -> str | None:
        """The version served in shadow (the ``challenger`` alias), or None."""
        return self._registry.alias(CHALLENGER)["version"]

    def load_online(self, version: str) -> tuple[Any, Mapping[str, Any]]:
        """``(OnlineLearner, metadata)``: the registry verifies checksums and the spec hash first."""
        _, learner = self._registry.load_online(version, expected_spec_hash=self.spec_hash)
        return learner, self._registry.metadata(version)


class FileSource:
    """:class:`ModelSource` over one XGBoost model file (``serve --model-file``: benchmarks, debugging).

    The version is ``file-`` + the first 12 hex digits of the file's sha256, so replacing the
    file is picked up like a promotion. There is no registry metadata: the operator vouches
    for the feature spec (the spec hash is taken as the predictor's own).
    """

    def __init__(self, path: str | Path, spec_hash: str | None = None):
        self.path = Path(path)
        self.spec_hash = spec_hash or default_spec_hash()
        self._seen: tuple[tuple[int, int], str] | None = None  # ((mtime_ns, size), version)

    def production_version(self) -> str | None:
        import hashlib

        try:
            stat = self.path.stat()
            key = (stat.st_mtime_ns, stat.st_size)
            if self._seen is not None and self._seen[0] == key:
                return self._seen[1]  # unchanged since the last poll: no need to hash it again
            version = "file-" + hashlib.sha256(self.path.read_bytes()).hexdigest()[:12]
        except FileNotFoundError:
            return None
        self._seen = (key, version)
        return version

    def load(self, version: str) -> tuple[Any, Mapping[str, Any]]:
        import xgboost as xgb

        booster = xgb.Booster(model_file=str(self.path))
        return booster, {"spec_hash": self.spec_hash, "source": str(self.path)}


class ShadowFileSource(FileSource):
    """One XGBoost model file served in shadow (``serve --shadow-model-file``: benchmarks,
    debugging): its version is the file's, as :class:`FileSource`'s, behind ``challenger``."""

    def challenger_version(self) -> str | None:
        return FileSource.production_version(self)


def _spec_hash_of(metadata: Mapping[str, Any]) -> str | None:
    """The registry records ``feature_spec_hash``; plain ``spec_hash`` is accepted too."""
    value = metadata.get("feature_spec_hash")
    return metadata.get("spec_hash") if value is None else value


def warm_up_rows(n_features: int, seed: int = 0) -> np.ndarray:
    """Fixed rows that reach many leaves: zeros, small and large magnitudes."""
    rng = np.random.default_rng(seed)
    rows = [np.zeros((1, n_features)), rng.exponential(1.0, (31, n_features)),
            rng.exponential(100.0, (32, n_features)), rng.uniform(0, 1, (64, n_features))]
    return np.ascontiguousarray(np.vstack(rows))


def load_model(source: ModelSource, version: str, *, feature_names: tuple[str, ...], spec_hash: str | None,
               backend: str = "auto") -> Model:
    """Load, verify and warm up ``version``; raise :class:`ModelRejected` saying why not."""
    try:
        booster, metadata = source.load(version)
    except Exception as exc:  # noqa: BLE001 - whatever the registry raises, the answer is "refused"
        raise ModelRejected(f"version {version} could not be loaded: {exc}") from exc
    model_hash = _spec_hash_of(metadata)
    if spec_hash is not None and model_hash != spec_hash:
        raise ModelRejected(f"version {version} was built for feature spec {str(model_hash)[:12]}…, this predictor "
                            f"computes spec {spec_hash[:12]}…: refusing to serve it")
    names = tuple(metadata.get("feature_names") or booster.feature_names or feature_names)
    if names != tuple(feature_names):
        raise ModelRejected(f"version {version} expects features {list(names)}, the predictor has "
                            f"{list(feature_names)}")
    if booster.num_features() != len(feature_names):
        raise ModelRejected(f"version {version} has {booster.num_features()} inputs, expected {len(feature_names)}")
    try:
        model = Model.from_booster(booster, version, feature_names, backend=backend, spec_hash=model_hash,
                                   metadata=metadata)
    except Exception as exc:  # noqa: BLE001
        raise ModelRejected(f"version {version}: no usable {backend} backend: {exc}") from exc
    try:
        warm_up(model, booster)
    except ModelRejected as exc:
        if backend != "auto" or isinstance(model.backend, XGBoostBackend):
            raise
        log.warning("%s; serving it with XGBoost instead", exc.message)
        model = Model(version, XGBoostBackend(booster), tuple(feature_names), model_hash, dict(metadata))
        warm_up(model, booster)
    return model


def warm_up(model: Model, booster) -> None:
    """Run the model once on fixed rows; refuse it when the scores are not sane."""
    X = warm_up_rows(len(model.feature_names))
    for n in (1, 8, len(X)):
        scores = model.predict(X[:n])
        if scores.shape != (n,) or not np.isfinite(scores).all():
            raise ModelRejected(f"version {model.version} warm-up produced non-finite scores")
    objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
    if "logistic" in objective and ((scores < 0).any() or (scores > 1).any()):
        raise ModelRejected(f"version {model.version} warm-up produced probabilities outside [0, 1]")
    if not isinstance(model.backend, XGBoostBackend):
        reference = XGBoostBackend(booster).predict(X)
        worst = float(np.max(np.abs(reference - scores)))
        if not math.isfinite(worst) or worst > PARITY_TOLERANCE:
            raise ModelRejected(f"version {model.version}: the {model.backend.name} backend differs from XGBoost "
                                f"by {worst:.3g} (> {PARITY_TOLERANCE:g}); use --backend xgboost")


class ModelWatcher:
    """Keep one of ``scorer``'s models on the version a registry alias points at.

    ``alias="production"`` (the default) follows the production XGBoost model
    (:func:`load_model`, :meth:`Scorer.swap`); ``alias="online"`` follows the online River
    snapshots (:func:`~models.predictor.online.load_online_model`, :meth:`Scorer.swap_online`;
    the source must have ``online_version`` and ``load_online``, as :class:`RegistrySource` does);
    ``alias="challenger"`` follows the model scored in shadow (:func:`load_model`, then the
    scorer's ``shadow``; the source must have ``challenger_version``) and unloads it when the
    alias is cleared.
    """

    def __init__(self, scorer: Scorer, source: ModelSource | str | Path, *, alias: str = PRODUCTION,
                 poll_interval: float = 2.0, backend: str = "auto", spec_hash: str | None = None, telemetry=None,
                 on_swap: Callable[[Model | OnlineModel], Awaitable[None] | None] | None = None,
                 retry_refused: float = 60.0, keep: int = 2, clock: Callable[[], float] = time.monotonic,
                 online_fast: bool = True):
        if alias not in ALIASES:
            raise ValueError(f"alias must be one of {', '.join(ALIASES)}, got {alias!r}")
        self.scorer = scorer
        self.alias = alias
        self.spec_hash = spec_hash or default_spec_hash()
        self.source = RegistrySource(source, self.spec_hash) if isinstance(source, (str, Path)) else source
        self.poll_interval = poll_interval
        self.backend = backend
        self.telemetry = telemetry
        self.on_swap = on_swap
        self.retry_refused = retry_refused
        self.clock = clock
        self.online_fast = online_fast
        self.refused: dict[str, tuple[str, float]] = {}  # version -> (reason, when)
        self._recent: collections.OrderedDict[str, Model | OnlineModel] = collections.OrderedDict()
        self._keep = keep
        if alias == ONLINE and not callable(getattr(self.source, "online_version", None)):
            raise ValueError(f"{type(self.source).__name__} has no online models (online_version/load_online)")
        if alias == CHALLENGER and (getattr(scorer, "shadow", None) is None
                                    or not callable(getattr(self.source, "challenger_version", None))):
            raise ValueError("following the challenger alias needs a scorer with a shadow (ShadowScorer) and a "
                             "source with challenger_version")
        self._label = {PRODUCTION: "", ONLINE: "online ", CHALLENGER: "shadow "}[alias]  # in log messages

    # -- the alias this watcher follows -------------------------------------------------

    def _version(self) -> str | None:
        if self.alias == CHALLENGER:
            return self.source.challenger_version()
        return self.source.production_version() if self.alias == PRODUCTION else self.source.online_version()

    def _current(self) -> Model | OnlineModel | None:
        if self.alias == CHALLENGER:
            return self.scorer.shadow.model
        return self.scorer.model if self.alias == PRODUCTION else self.scorer.online_model

    def _load(self, version: str) -> Model | OnlineModel:
        if self.alias in (PRODUCTION, CHALLENGER):
            return load_model(self.source, version, spec_hash=self.spec_hash, feature_names=self.scorer.feature_names,
                              backend=self.backend)
        return load_online_model(self.source, version, spec_hash=self.spec_hash,
                                 feature_names=self.scorer.feature_names,
                                 rows=warm_up_rows(len(self.scorer.feature_names)), fast=self.online_fast)

    def _swap(self, model: Model | OnlineModel | None) -> None:
        if self.alias == CHALLENGER:
            self.scorer.shadow.swap(model)
        elif self.alias == PRODUCTION:
            self.scorer.swap(model)
        else:
            self.scorer.swap_online(model)

    def _count(self, result: str) -> None:
        if self.telemetry is not None:
            self.telemetry.reload(result, self.alias)

    # -- polling ------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:  # noqa: BLE001 - a bug here must not stop the polling (or the serving)
                log.exception("model watcher: unexpected error; the current model keeps serving")
            await asyncio.sleep(self.poll_interval)

    async def check(self) -> str:
        """One poll: ``"loaded"``, ``"unchanged"``, ``"absent"``, ``"refused"``, ``"error"``, or
        ``"unloaded"`` (the challenger alias was cleared: no more shadow)."""
        try:
            version = await asyncio.to_thread(self._version)
        except Exception as exc:  # noqa: BLE001 - a registry hiccup must not stop serving
            log.warning("could not read the %s alias: %s", self.alias, exc)
            return "error"
        current = self._current()
        if version is None:
            if self.alias == CHALLENGER and current is not None:
                self._swap(None)
                log.info("no shadow model any more (the challenger alias was cleared; was %s)", current.version)
                await self._swapped(None, "unloaded")
                return "unloaded"
            return "absent"
        if current is not None and current.version == version:
            return "unchanged"
        refused = self.refused.get(version)
        if refused is not None and self.clock() - refused[1] < self.retry_refused:
            return "refused"
        model = self._recent.get(version)
        if model is None:
            try:
                model = await asyncio.to_thread(self._load, version)
            except ModelRejected as exc:
                self.refused[version] = (exc.message, self.clock())
                log.error("refusing %sversion %s (still serving %s): %s", self._label, version,
                          current.version if current else "nothing", exc.message)
                self._count("refused")
                return "refused"
        self._swap(model)
        self.refused.pop(version, None)
        if current is not None:
            self._remember(current)
        self._remember(model)
        kind = f"{model.backend.name} backend" if isinstance(model, Model) else f"{model.form.name} form"
        log.info("serving %sversion %s (%s), was %s", self._label, version, kind,
                 current.version if current else "nothing")
        await self._swapped(model, "loaded")
        return "loaded"

    async def _swapped(self, model: Model | OnlineModel | None, result: str) -> None:
        """Count the swap and tell ``on_swap`` (None: the shadow was unloaded)."""
        self._count(result)
        if self.on_swap is not None:
            done = self.on_swap(model)
            if asyncio.iscoroutine(done):
                await done

    def _remember(self, model: Model) -> None:
        """Keep the last few models so a rollback is instant (they are immutable)."""
        self._recent[model.version] = model
        self._recent.move_to_end(model.version)
        while len(self._recent) > self._keep:
            self._recent.popitem(last=False)
