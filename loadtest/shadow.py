"""Shadow comparison: score the replay's feature vectors with a candidate predictor as well.

Every score message carries the ``features`` it was scored with, so after the replay the
candidate (a second ``streamscore serve``, e.g. ``--model-file candidate.json`` or another
registry's production) scores exactly those vectors over gRPC
(:class:`streaming.job.scoring.ScoringClient`). Done after the measured run, so the candidate's CPU
does not disturb the latencies being measured; the figures are the same as scoring in line.

:func:`agreement` is the pure part: mean and max absolute difference, Spearman rank
correlation, overlap of the top 1 % by each version, agreement of alerts at a threshold, and each version's average precision on the
labelled events (labels from the input's ``TX_FRAUD``).

>>> a = agreement([0.1, 0.9, 0.4], [0.2, 0.8, 0.3], labels=[0, 1, 0], threshold=0.5)
>>> a["alerts"]["agreement"], a["production"]["average_precision"], round(a["max_abs_diff"], 6)
(1.0, 1.0, 0.1)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from models.online import average_precision


def _nan_to_none(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def agreement(production: Sequence[float], candidate: Sequence[float], labels: Sequence[int | None] | None = None,
              threshold: float = 0.5, top_share: float = 0.01) -> dict:
    """How two versions' scores of the same events compare (``labels`` entries may be ``None``).

    ``top_overlap``: of the ``top_share`` highest-scored events by each version, the share both
    rank there (what matters when only the top of the ranking is investigated; the Spearman
    correlation over all events is dominated by the mass of near-zero scores).
    """
    p, c = np.asarray(production, dtype=float), np.asarray(candidate, dtype=float)
    if p.shape != c.shape:
        raise ValueError(f"production and candidate need one score per event each, got {len(p)} and {len(c)}")
    n = len(p)
    diff = np.abs(p - c)
    rank = (pd.Series(p).rank().corr(pd.Series(c).rank()) if n > 1 else math.nan)
    k = max(1, math.ceil(top_share * n)) if n else 0
    top_p, top_c = set(np.argsort(-p, kind="stable")[:k]), set(np.argsort(-c, kind="stable")[:k])
    pa, ca = p >= threshold, c >= threshold
    out = {"events": n, "mean_abs_diff": _nan_to_none(diff.mean()) if n else None,
           "max_abs_diff": _nan_to_none(diff.max()) if n else None,
           "spearman": _nan_to_none(rank),
           "top_overlap": {"share": top_share, "k": k, "overlap": len(top_p & top_c) / k if k else None},
           "alerts": {"threshold": threshold, "production": int(pa.sum()), "candidate": int(ca.sum()),
                      "both": int(np.sum(pa & ca)), "only_production": int(np.sum(pa & ~ca)),
                      "only_candidate": int(np.sum(~pa & ca)),
                      "agreement": _nan_to_none(np.mean(pa == ca)) if n else None}}
    y = np.array([math.nan if v is None else v for v in (labels if labels is not None else [None] * n)], dtype=float)
    if len(y) != n:
        raise ValueError(f"labels need one entry per event, got {len(y)} for {n} events")
    known = ~np.isnan(y)
    out["labelled"], out["frauds"] = int(known.sum()), int(np.nansum(y))
    for name, scores in (("production", p), ("candidate", c)):
        has_fraud = out["frauds"] > 0
        out[name] = {"average_precision": average_precision(scores[known], y[known].astype(int)) if has_fraud else None}
    return out


def shadow_compare(scored: Mapping[str, tuple[float, str, dict]], labels: Mapping[str, int], target: str, *,
                   threshold: float = 0.5, batch: int = 500, deadline: float = 10.0) -> dict:
    """Score ``scored`` (id → (production score, production version, features)) with the predictor at ``target``.

    Feature vectors are sent in the order the score message lists them (the job writes them in
    its feature spec's order). Events the candidate refuses are counted, not compared.
    """
    from streaming.job.scoring import RetryPolicy, ScoringClient

    client = ScoringClient(target, deadline=deadline, retry=RetryPolicy(max_attempts=5))
    ids = list(scored)
    prod, cand, ys, refused, versions = [], [], [], 0, set()
    for start in range(0, len(ids), batch):
        chunk = ids[start:start + batch]
        results = client.score_many([(tid, list(scored[tid][2].values())) for tid in chunk])
        for tid, result in zip(chunk, results):
            if result.error is not None:
                refused += 1
                continue
            versions.add(result.model_version)
            prod.append(scored[tid][0])
            cand.append(result.score)
            ys.append(labels.get(tid))
    out = agreement(prod, cand, ys, threshold)
    out["target"] = target
    out["refused_by_candidate"] = refused
    out["production"]["model_versions"] = sorted({v for _, v, _ in scored.values()})
    out["candidate"]["model_versions"] = sorted(versions)
    return out
