"""Benchmark raw-transaction scoring (issue 12): an alias of ``loadtest.bench_predictor --raw-only``.

    python -m loadtest.bench_online_store [--raw-days 60] [--raw-n 3000] [--repeat 3] [--json out.json]

The raw-transaction modes now live in :mod:`loadtest.bench_predictor` (``--raw`` adds them to
its run, ``--raw-only`` runs nothing else): a fresh redis-server with the stream's states,
``Score``/``ScoreStream(transaction)`` vs ``(features)`` on the same server with the same
client, the in-process read path vs the redis-py floor, and the Feast peer (``.venv-feast``).
Every argument is passed on (see ``python -m loadtest.bench_predictor --help``).
"""

from __future__ import annotations

import sys


def run(argv: list[str] | None = None) -> int:
    from loadtest.bench_predictor import run as bench_predictor

    return bench_predictor(["--raw-only", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(run())
