"""The Feast peer of raw-transaction scoring (issue 12, PEERS.md): Feast's online retrieval on our Redis.

Runs in the benchmark-only venv (``loadtest/setup_feast_env.sh`` -> ``.venv-feast``), never in the
project's: it imports nothing from streamscore. ``loadtest.bench_predictor --raw`` starts it with

    .venv-feast/bin/python loadtest/feast_peer.py --redis HOST:PORT --values values.json \
        --pairs pairs.json [--repeat 3] [--batch 32] > result.json

1. builds a Feast repo in a temporary directory (deleted at the end; never committed): project
   ``streamscore_peer``, a local provider, a file registry, the Redis online store on the given
   Redis (the benchmark's own server), two entities (``customer``, ``terminal``, string keys)
   and two feature views of float features (``customer_features``: the six customer window
   features, ``terminal_features``: the six terminal ones: 12 in all, the same names as ours);
2. writes every entity's values (``--values``: {"customer": {id: {name: value}}, "terminal": ...})
   with ``FeatureStore.write_to_online_store`` (Feast's push path);
3. times ``get_online_features(features=<the 12>, entity_rows=...).to_dict()`` for the
   (customer, terminal) pairs of ``--pairs``: one entity row per call (p50/p90/p99 µs) and
   ``--batch`` rows per call (µs per call and per row); after a warm-up, ``--repeat`` passes;
4. checks that what Feast returns equals what was written (so the timing is of a real lookup).

Prints one JSON object on stdout (the medians of the passes and every pass).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

CUSTOMER = [f"CUSTOMER_ID_{kind}_{n}DAY_WINDOW" for n in (1, 7, 30) for kind in ("NB_TX", "AVG_AMOUNT")]
TERMINAL = [f"TERMINAL_ID_{kind}_{n}DAY_WINDOW" for n in (1, 7, 30) for kind in ("NB_TX", "RISK")]


def _repo(folder: Path, redis: str) -> None:
    (folder / "data").mkdir(parents=True, exist_ok=True)
    (folder / "feature_store.yaml").write_text(
        "project: streamscore_peer\n"
        "provider: local\n"
        f"registry: {folder / 'data' / 'registry.db'}\n"
        "online_store:\n"
        "  type: redis\n"
        f"  connection_string: \"{redis}\"\n"
        "offline_store:\n"
        "  type: file\n"
        "entity_key_serialization_version: 3\n")


def _definitions(folder: Path):
    import pandas as pd
    from feast import Entity, FeatureView, Field, FileSource
    from feast.types import Float64, String
    from feast.value_type import ValueType

    customer = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.STRING)
    terminal = Entity(name="terminal", join_keys=["terminal_id"], value_type=ValueType.STRING)
    views = []
    for name, entity, key, features in (("customer_features", customer, "customer_id", CUSTOMER),
                                        ("terminal_features", terminal, "terminal_id", TERMINAL)):
        path = folder / "data" / f"{name}.parquet"  # an (empty) offline source: Feast needs one per view
        pd.DataFrame({key: pd.Series([], dtype="string"), "event_timestamp": pd.Series([], dtype="datetime64[ns, UTC]"),
                      **{f: pd.Series([], dtype="float64") for f in features}}).to_parquet(path)
        views.append(FeatureView(name=name, entities=[entity], ttl=timedelta(days=60),
                                 schema=[Field(name=key, dtype=String)] + [Field(name=f, dtype=Float64) for f in features],
                                 online=True, source=FileSource(path=str(path), timestamp_field="event_timestamp")))
    return [customer, terminal, *views]


def _write(store, values: dict) -> int:
    import pandas as pd

    now = datetime.now(timezone.utc)
    written = 0
    for kind, view, key, features in (("customer", "customer_features", "customer_id", CUSTOMER),
                                      ("terminal", "terminal_features", "terminal_id", TERMINAL)):
        rows = values[kind]
        ids = list(rows)
        for i in range(0, len(ids), 5000):
            chunk = ids[i:i + 5000]
            df = pd.DataFrame({key: chunk, "event_timestamp": [now] * len(chunk),
                               **{f: [float(rows[k][f]) for k in chunk] for f in features}})
            store.write_to_online_store(view, df)
            written += len(chunk)
    return written


def _pct(sorted_us, q):
    """Nearest-rank percentile (as loadtest.grpc_loadgen.percentile)."""
    return sorted_us[min(len(sorted_us), max(1, math.ceil(q / 100 * len(sorted_us)))) - 1]


def _time_single(store, refs, pairs) -> dict:
    lat = []
    for c, t in pairs:
        t0 = time.perf_counter_ns()
        store.get_online_features(features=refs, entity_rows=[{"customer_id": c, "terminal_id": t}]).to_dict()
        lat.append((time.perf_counter_ns() - t0) / 1e3)
    lat.sort()
    return {"p50_us": _pct(lat, 50), "p90_us": _pct(lat, 90), "p99_us": _pct(lat, 99),
            "calls_per_s": len(lat) / (sum(lat) / 1e6)}


def _time_batch(store, refs, pairs, batch: int) -> dict:
    lat = []
    for i in range(0, len(pairs) - batch + 1, batch):
        rows = [{"customer_id": c, "terminal_id": t} for c, t in pairs[i:i + batch]]
        t0 = time.perf_counter_ns()
        store.get_online_features(features=refs, entity_rows=rows).to_dict()
        lat.append((time.perf_counter_ns() - t0) / 1e3)
    lat.sort()
    return {"per_call_p50_us": _pct(lat, 50), "per_row_p50_us": _pct(lat, 50) / batch,
            "per_row_p99_us": _pct(lat, 99) / batch, "rows_per_s": batch * len(lat) / (sum(lat) / 1e6)}


def _check(store, refs, pairs, values) -> int:
    """Rows whose 12 values Feast returned exactly as written (all of them, or the timing is not of a lookup)."""
    got = store.get_online_features(features=refs, entity_rows=[{"customer_id": c, "terminal_id": t}
                                                                for c, t in pairs]).to_dict()
    ok = 0
    for i, (c, t) in enumerate(pairs):
        want = [values["customer"].get(c, {}).get(f) for f in CUSTOMER] + \
               [values["terminal"].get(t, {}).get(f) for f in TERMINAL]
        ok += [got[f][i] for f in CUSTOMER + TERMINAL] == want
    return ok


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", required=True, help="HOST:PORT of the Redis server (the benchmark's)")
    parser.add_argument("--values", type=Path, required=True, help="JSON: {customer: {id: {feature: value}}, terminal: ...}")
    parser.add_argument("--pairs", type=Path, required=True, help="JSON: [[customer_id, terminal_id], ...] to look up")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args(argv)

    import feast
    from feast import FeatureStore

    values = json.loads(args.values.read_text())
    pairs = [tuple(p) for p in json.loads(args.pairs.read_text())]
    refs = [f"customer_features:{f}" for f in CUSTOMER] + [f"terminal_features:{f}" for f in TERMINAL]
    with tempfile.TemporaryDirectory(prefix="feast-peer-") as tmp:
        folder = Path(tmp)
        _repo(folder, args.redis)
        store = FeatureStore(repo_path=str(folder))
        store.apply(_definitions(folder))
        t0 = time.perf_counter()
        written = _write(store, values)
        write_s = time.perf_counter() - t0
        ok = _check(store, refs, pairs[:200], values)
        for c, t in pairs[:300]:  # warm-up (registry cache, connection)
            store.get_online_features(features=refs, entity_rows=[{"customer_id": c, "terminal_id": t}]).to_dict()
        single = [_time_single(store, refs, pairs) for _ in range(args.repeat)]
        batched = [_time_batch(store, refs, pairs, args.batch) for _ in range(args.repeat)]
    out = {"feast_version": feast.__version__, "rows_written": written, "write_s": write_s,
           "checked_rows": min(200, len(pairs)), "checked_equal": ok, "lookups_per_pass": len(pairs),
           "single": {k: statistics.median(r[k] for r in single) for k in single[0]},
           f"batch{args.batch}": {k: statistics.median(r[k] for r in batched) for k in batched[0]},
           "passes": {"single": single, "batch": batched}}
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
