"""Benchmark raw-transaction scoring (issue 12): the online store's read path, in process and over gRPC.

    python -m loadtest.bench_online_store [--days 60] [--n 3000] [--json out.json]

1. Builds the stream's per-key states for a time-ordered dataset (the reference data's first
   ``--days`` days when ../shared/data/fraud-handbook is present, else a simulated one at the
   reference scale: 5,000 cards, 10,000 terminals) and writes them to a fresh redis-server with
   the stream's writer; reports bytes per card and per terminal key (median, p99, max).
2. In process, per transaction of the following day: the bare redis-py floor (one MGET of the
   two keys, bytes only) vs the whole read path (MGET + decode + add the transaction + features).
3. Over gRPC, our predictor (``--model-file`` + ``--online-store``): sequential unary
   ``Score(transaction)`` vs ``Score(features)``, and ``ScoreStream`` with 32 messages in flight
   for both inputs (throughput), with the same synchronous client.
Each figure is the median of ``--repeat`` runs; the load average is printed with each.
The Feast peer (PEERS.md) is NOT run here: see docs/online-store.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from loadtest.bench_predictor import _train, loadavg, our_server
from streaming.io.datasets import iter_transactions, read_table, reference_dir
from streaming.io.encoding import to_proto
from streaming.features.spec import DAY_NS, DEFAULT_SPEC
from streaming.features.transaction import time_ns
from streaming.features.state import CustomerState, TerminalState
from streaming.store.encoding import encode_state
from streaming.store.raw import raw_features
from streaming.store.redis_server import RedisServer
from streaming.store.redis_store import StoreConfig, StoreReader, StoreWriter, ttl_ms

LATENESS_DAYS = 7.0


def dataset(days: int):
    import pandas as pd

    folder = reference_dir()
    if (folder / "transactions.parquet").exists():
        df = read_table(folder / "transactions.parquet")
        source = "reference"
    else:
        from streaming.sim.simulator import simulate
        df, source = simulate(customers=5000, terminals=10000, days=days + 1, seed=0), "simulated"
    start = df["TX_DATETIME"].min()
    cut = start + pd.Timedelta(days=days)
    history = df[df["TX_DATETIME"] < cut].reset_index(drop=True)
    probe = df[(df["TX_DATETIME"] >= cut) & (df["TX_DATETIME"] < cut + pd.Timedelta(days=1))].reset_index(drop=True)
    return source, history, probe


def build_states(history) -> tuple[dict, dict]:
    lateness = int(LATENESS_DAYS * DAY_NS)
    customers, terminals = {}, {}
    frauds = dict(zip(history["TRANSACTION_ID"].astype(str), history["TX_FRAUD"]))
    for tx in iter_transactions(history):
        t = time_ns(tx.event_time)
        c = customers.get(tx.customer_id) or customers.setdefault(tx.customer_id, CustomerState(DEFAULT_SPEC, lateness))
        c.add(tx.transaction_id, t, tx.amount)
        m = terminals.get(tx.terminal_id) or terminals.setdefault(tx.terminal_id, TerminalState(DEFAULT_SPEC, lateness))
        m.add_transaction(tx.transaction_id, t)
        if frauds[tx.transaction_id]:  # labels known (the stream gets them within the delay)
            m.add_label(tx.transaction_id, t, 1)
    return customers, terminals


def _sizes(values) -> dict:
    a = np.array([len(v) for v in values])
    return {"keys": int(a.size), "median": int(np.median(a)), "p99": int(np.percentile(a, 99)), "max": int(a.max())}


def _pct(samples_ns, q) -> float:
    return float(np.percentile(np.array(samples_ns) / 1e3, q))


def in_process(config: StoreConfig, probe_txs) -> dict:
    client = config.client()
    reader = StoreReader(config, DEFAULT_SPEC)
    bare, full = [], []
    for tx in probe_txs:
        keys = (config.customer_key(tx.customer_id), config.terminal_key(tx.terminal_id))
        t0 = time.perf_counter_ns()
        client.mget(keys)
        t1 = time.perf_counter_ns()
        c, m = reader.fetch(tx.customer_id, tx.terminal_id)
        raw_features(tx, c, m, DEFAULT_SPEC)
        t2 = time.perf_counter_ns()
        bare.append(t1 - t0)
        full.append(t2 - t1)
    return {"bare_mget_p50_us": _pct(bare, 50), "bare_mget_p99_us": _pct(bare, 99),
            "fetch_and_features_p50_us": _pct(full, 50), "fetch_and_features_p99_us": _pct(full, 99),
            "ratio_p50": _pct(full, 50) / _pct(bare, 50)}


def _requests(probe_txs, feature_rows):
    from protos.streamscore.v1 import scorer_pb2

    raw = [scorer_pb2.ScoreRequest(transaction_id=tx.transaction_id, transaction=to_proto(tx)) for tx in probe_txs]
    vec = [scorer_pb2.ScoreRequest(transaction_id=tx.transaction_id,
                                   features=scorer_pb2.FeatureVector(values=row)) for tx, row in zip(probe_txs, feature_rows)]
    return raw, vec


def unary(target, requests) -> dict:
    import grpc

    from protos.streamscore.v1 import scorer_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        stub = scorer_pb2_grpc.ScorerStub(channel)
        for r in requests[:200]:  # warm-up
            stub.Score(r)
        lat = []
        for r in requests:
            t0 = time.perf_counter_ns()
            stub.Score(r)
            lat.append(time.perf_counter_ns() - t0)
    return {"p50_ms": _pct(lat, 50) / 1e3, "p99_ms": _pct(lat, 99) / 1e3}


def stream(target, requests, in_flight: int = 32) -> dict:
    import grpc

    from protos.streamscore.v1 import scorer_pb2_grpc

    window = threading.Semaphore(in_flight)

    def gen():
        for r in requests:
            window.acquire()
            yield r

    with grpc.insecure_channel(target) as channel:
        stub = scorer_pb2_grpc.ScorerStub(channel)
        t0 = time.perf_counter()
        n = errors = 0
        for response in stub.ScoreStream(gen()):
            window.release()
            n += 1
            errors += response.HasField("error")
        elapsed = time.perf_counter() - t0
    return {"per_s": n / elapsed, "errors": errors}


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_online_store", description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=60, help="days of history in the store (default 60)")
    parser.add_argument("--n", type=int, default=3000, help="probe transactions per measurement (default 3000)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    source, history, probe = dataset(args.days)
    probe_txs = list(iter_transactions(probe.head(args.n)))
    t0 = time.perf_counter()
    customers, terminals = build_states(history)
    print(f"{source} data: {len(history):,} transactions over {args.days} days -> {len(customers):,} cards, "
          f"{len(terminals):,} terminals (states built in {time.perf_counter() - t0:.1f} s); "
          f"{len(probe_txs):,} probe transactions", flush=True)
    out: dict = {"source": source, "days": args.days}
    with RedisServer() as server, tempfile.TemporaryDirectory() as tmp:
        config = StoreConfig(server.url, DEFAULT_SPEC.spec_hash, ttl_ms(DEFAULT_SPEC, LATENESS_DAYS))
        writer = StoreWriter(config)
        now = time.time_ns() // 1_000_000
        c_values = {config.customer_key(k): encode_state(s, written_at_ms=now) for k, s in customers.items()}
        m_values = {config.terminal_key(k): encode_state(s, written_at_ms=now) for k, s in terminals.items()}
        items = list({**c_values, **m_values}.items())
        for i in range(0, len(items), 1000):
            writer.write(dict(items[i:i + 1000]))
        out["bytes_per_card"] = _sizes(c_values.values())
        out["bytes_per_terminal"] = _sizes(m_values.values())
        out["redis_used_memory_bytes"] = int(config.client().info("memory")["used_memory"])
        print(f"bytes per card key {out['bytes_per_card']}, per terminal key {out['bytes_per_terminal']}, "
              f"redis used_memory {out['redis_used_memory_bytes']:,}", flush=True)

        reader = StoreReader(config, DEFAULT_SPEC)
        rows = [list(raw_features(tx, *reader.fetch(tx.customer_id, tx.terminal_id), DEFAULT_SPEC).values)
                for tx in probe_txs]
        runs = [in_process(config, probe_txs) for _ in range(args.repeat)]
        out["in_process"] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(f"in process (load {loadavg():.2f}): {json.dumps(out['in_process'])}", flush=True)

        model = Path(tmp) / "model.json"
        _train(model, 100, 6)
        raw_reqs, vec_reqs = _requests(probe_txs, rows)
        with our_server(model, Path(tmp), ["--online-store", server.url]) as target:
            results = {"unary_raw": [], "unary_features": [], "stream_raw": [], "stream_features": []}
            for _ in range(args.repeat):
                results["unary_features"].append(unary(target, vec_reqs) | {"load": loadavg()})
                results["unary_raw"].append(unary(target, raw_reqs) | {"load": loadavg()})
                results["stream_features"].append(stream(target, vec_reqs) | {"load": loadavg()})
                results["stream_raw"].append(stream(target, raw_reqs) | {"load": loadavg()})
        for name, rs in results.items():
            out[name] = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
            print(f"{name}: {json.dumps(out[name])}", flush=True)
        out["ratios"] = {
            "unary_raw_over_features_p50": out["unary_raw"]["p50_ms"] / out["unary_features"]["p50_ms"],
            "stream_raw_over_features_throughput": out["stream_raw"]["per_s"] / out["stream_features"]["per_s"],
        }
        print(f"ratios: {json.dumps(out['ratios'])}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(run())
