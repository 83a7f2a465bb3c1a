"""``streamscore loadtest <kind>``: dispatch to the load generators (each has its own ``--help``)."""

from __future__ import annotations

from streaming.cli import select

KINDS = {
    "grpc": ("loadtest.grpc_loadgen:run", "closed/open-loop gRPC load against the predictor (Scorer or KServe v2)"),
    "replay": ("loadtest.replay:run", "replay recorded traffic through the whole system (step load, shadow); JSON + HTML"),
    "compare": ("loadtest.compare:run", "differences between two replay reports, regressions flagged"),
}


def run(argv: list[str] | None = None) -> int:
    _, run_kind, rest = select("streamscore loadtest", "Load tests of the predictor or of the whole system.", KINDS,
                               list(argv or []))
    return int(run_kind(rest) or 0)
