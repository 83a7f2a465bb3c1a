"""Where an online learner starts: a matching snapshot, the production model's training window, or cold.

:func:`warm_start` is called once per learner key when the streaming job starts (its state is
empty). In order of preference:

1. **snapshot** — the newest online snapshot in the registry with this feature ``spec_hash``,
   this learner key and this learner kind is restored and learning continues from it. Snapshots
   of another feature spec are *refused* (they would read the wrong inputs); the newest refused
   one is reported.
2. **training_window** — the production XGBoost version records the feature table it was
   trained on (``data.features``) and its training window (``data.split.train``: first and last day); those rows
   (this shard's share of them) are learned in event-time order. Every one of them is labelled
   already: the window ends a label delay before the model's test period.
3. **cold** — no snapshot and no usable production model: the learner starts untrained.

The returned ``info`` is what the ``online_start`` monitoring event carries.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pandas as pd

from models.online import DEFAULT_LEARNER, OnlineLearner, learner_factory
from models.online_shards import shard_of

log = logging.getLogger(__name__)


def _refused(registry, spec_hash: str, learner_key: str) -> dict | None:
    other = [v for v in registry.versions() if v.startswith(f"online-{learner_key}-")]
    newest = None
    for version in other:
        meta = registry.metadata(version)
        if meta.get("feature_spec_hash") != spec_hash and (newest is None or meta["created_at"] > newest[0]):
            newest = (meta["created_at"], version, meta.get("feature_spec_hash"))
    if newest is None:
        return None
    return {"version": newest[1], "reason": f"feature spec {str(newest[2])[:12]}… is not this job's {spec_hash[:12]}…"}


def from_snapshot(registry, spec_hash: str, learner_key: str, learner: str, member: int | None):
    """``(OnlineLearner, version)`` from the newest matching snapshot, or ``None``."""
    version = registry.latest_online(spec_hash=spec_hash, learner_key=learner_key)
    if version is None:
        return None
    meta = registry.metadata(version)
    if meta.get("learner", "linear") != learner:
        log.info("online snapshot %s is a %r learner, this job runs %r: not resumed", version,
                 meta.get("learner", "linear"), learner)
        return None
    _, restored = registry.load_online(version, expected_spec_hash=spec_hash)
    if member is not None:
        members = getattr(restored, "members", None)
        if not members or member >= len(members):
            return None
        restored = members[member]
    return restored, version


def training_window(registry, spec, *, shards: int = 1, shard: int = 0) -> tuple[pd.DataFrame, str] | None:
    """The production model's training rows (this shard's), in event-time order, and its version."""
    from models.evaluation import read_feature_table

    meta_version = registry.alias()["version"]
    if meta_version is None:
        return None
    meta = registry.metadata(meta_version)
    data = meta.get("data") or {}
    path, window = data.get("features"), (data.get("split") or {}).get("train")
    if meta.get("feature_spec_hash") != spec.spec_hash or not path or not window:
        return None
    try:
        table = read_feature_table(path, spec.names, spec.spec_hash)
    except (FileNotFoundError, ValueError) as exc:
        log.warning("production model %s: training table %s unusable for the warm start: %s", meta_version, path, exc)
        return None
    start, end = pd.Timestamp(window[0]), pd.Timestamp(window[1]) + pd.Timedelta(days=1)  # [first, last] days
    rows = table[(table["TX_DATETIME"] >= start) & (table["TX_DATETIME"] < end)]
    rows = rows.sort_values(["TX_DATETIME", "TRANSACTION_ID"], kind="stable")
    if shards > 1:
        rows = rows[[shard_of(str(t), shards) == shard for t in rows["TRANSACTION_ID"]]]
    return rows, meta_version


def warm_start(registry, spec, *, learner_key: str, learner: str = DEFAULT_LEARNER,
               combined_key: str | None = None,
               member: int | None = None, shards: int = 1, shard: int = 0,
               factory: Callable[[], object] | None = None) -> tuple[OnlineLearner, dict]:
    """A learner for ``learner_key`` and the ``online_start`` event fields saying how it started.

    ``combined_key``/``member``: a sharded job resumes shard ``member`` from the combined snapshot.
    """
    factory = factory or learner_factory(learner)
    key = combined_key or learner_key
    info: dict = {"learner_key": learner_key, "learner": learner, "refused": _refused(registry, spec.spec_hash, key)}
    resumed = from_snapshot(registry, spec.spec_hash, key, learner, member)
    if resumed is not None:
        restored, version = resumed
        return restored, {**info, "start": "snapshot", "version": version, "labels": restored.labels_seen}
    fresh = OnlineLearner(spec.names, factory)
    window = training_window(registry, spec, shards=shards, shard=shard)
    if window is None:
        return fresh, {**info, "start": "cold", "labels": 0}
    rows, version = window
    X = rows[list(spec.names)].to_numpy(np.float64)
    for x, y in zip(X.tolist(), rows["TX_FRAUD"].astype(int).tolist()):
        fresh.learn_one(x, y, prequential=False)
    return fresh, {**info, "start": "training_window", "version": version, "labels": fresh.labels_seen,
                   "frauds": fresh.frauds_seen}
