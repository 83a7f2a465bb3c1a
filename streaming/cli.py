"""``streamscore <command>``: the one command-line entry point.

Each command lives in its own module as ``run(argv) -> int``; this file only dispatches
(imports are lazy so ``streamscore --help`` is instant). Errors users can fix (bad
arguments, missing or malformed input) end with a one-line reason and a non-zero exit.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Callable

# command -> (module with run(argv), one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "simulate": ("streaming.cli:run_simulate", "generate labelled card transactions (Parquet or JSON Lines)"),
    "publish": ("streaming.io.publish:run", "publish a dataset's transactions, and later its labels, to Pub/Sub"),
    "featurize": ("streaming.features.featurize:main", "batch Beam job: the streaming features, one row per transaction"),
    "stream": ("streaming.job.pipeline:run", "the Beam streaming job (runner flags pass through to Beam)"),
    "up": ("streaming.demo.up:run", "the local demo stack: emulator, streaming job, simulated traffic, summary"),
    "train": ("models.training:run", "train XGBoost on a feature table, model selection on validation folds only"),
    "retrain": ("models.retrain:run", "challenger on the latest labelled window, gated against production, registered, promoted if better"),
    "monitor": ("models.cli_monitor:run", "PSI against the model's training reference and live AP/CP@100, window by window"),
    "evaluate": ("models.cli_eval:run", "AUC, AP, card precision@100 under the handbook's protocols; JSON + HTML"),
    "controller": ("models.cli_controller:run", "promote the challenger after its shadow, watch it live, roll it back out of bounds"),
    "registry": ("models.registry:run", "model versions and the production alias: list | show | promote | rollback"),
    "serve": ("models.predictor.server:run", "the gRPC predictor (Scorer, KServe v2, health, reflection)"),
    "score": ("models.predictor.score_cli:run", "score raw transactions (JSON) over gRPC against `serve --online-store`"),
    "loadtest": ("loadtest.cli:run", "load tests: `loadtest grpc|replay|compare ...`"),
}


def _load(target: str) -> Callable[[list[str]], int]:
    module, _, func = target.partition(":")
    return getattr(importlib.import_module(module), func)


def select(prog: str, description: str, commands: dict[str, tuple[str, str]],
           argv: list[str]) -> tuple[str, Callable[[list[str]], int], list[str]]:
    """Pick ``argv[0]`` among ``commands`` (name -> ("module:function", help)); return (name, run, rest)."""
    width = max(map(len, commands)) + 2
    listing = "\n".join(f"  {name:<{width}}{text}" for name, (_, text) in commands.items())
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
        usage=f"{prog} COMMAND [options]",
        epilog=f"commands:\n{listing}\n\nRun `{prog} COMMAND --help` for a command's options.")
    parser.add_argument("command", choices=sorted(commands), metavar="COMMAND", help="one of the commands below")
    parser.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv[:1] if argv and not argv[0].startswith("-") else argv)
    return args.command, _load(commands[args.command][0]), argv[1:]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command, run, rest = select("streamscore", "Streaming real-time card-fraud scoring.", COMMANDS, argv)
    try:
        return int(run(rest) or 0)
    except KeyboardInterrupt:
        print(f"streamscore {command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as exc:  # DatasetError and friends: one line, no traceback
        print(f"streamscore {command}: {exc}", file=sys.stderr)
        return 2


# --------------------------------------------------------------------------- simulate


def run_simulate(argv: list[str] | None = None) -> int:
    """``streamscore simulate``: write a simulated, labelled transaction dataset."""
    from streaming.io.datasets import write_table
    from streaming.sim.simulator import DRIFT_KINDS, simulate

    parser = argparse.ArgumentParser(prog="streamscore simulate", description=run_simulate.__doc__)
    parser.add_argument("--customers", type=int, default=5000, help="number of customers (default 5000)")
    parser.add_argument("--terminals", type=int, default=10000, help="number of terminals (default 10000)")
    parser.add_argument("--days", type=int, default=183, help="number of days (default 183)")
    parser.add_argument("--start", default="2018-04-01", help="first day, YYYY-MM-DD (default 2018-04-01)")
    parser.add_argument("--radius", type=float, default=5.0, help="customer-terminal radius r (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--drift-day", type=int, default=None,
                        help="start a drift scenario on this day (0-based, days after --start); default: no drift")
    parser.add_argument("--drift-kind", choices=DRIFT_KINDS, default="new-pattern",
                        help="new-pattern: card testing, small-amount frauds on newly compromised cards; "
                             "amount-shift: every amount x1.5 (default new-pattern)")
    parser.add_argument("--out", required=True, help="output path, .parquet or .jsonl")
    args = parser.parse_args(argv)
    if not args.out.lower().endswith((".parquet", ".jsonl", ".ndjson")):
        parser.error(f"--out must end in .parquet or .jsonl, got {args.out!r}")
    started = time.monotonic()
    df = simulate(customers=args.customers, terminals=args.terminals, days=args.days,
                  start=args.start, seed=args.seed, radius=args.radius, drift_day=args.drift_day,
                  drift_kind=args.drift_kind)
    path = write_table(df, args.out)
    frauds = int(df["TX_FRAUD"].sum())
    print(f"wrote {len(df):,} transactions ({frauds:,} frauds, {frauds / max(len(df), 1):.3%}) to {path}"
          f" in {time.monotonic() - started:.1f} s")
    note = fraud_rate_note(args.customers, args.terminals)
    if note:
        print(note)
    return 0


#: The simulator's fixed daily compromises (../shared/specs/SIMULATOR.md, scenarios 2 and 3).
TERMINALS_PER_DAY, TERMINAL_DAYS, CARDS_PER_DAY, CARD_DAYS = 2, 28, 3, 14


def fraud_rate_note(customers: int, terminals: int) -> str | None:
    """Why a small simulation has many more frauds than the reference's ~0.8 %, or ``None``.

    >>> fraud_rate_note(5000, 10000) is None
    True
    >>> print(fraud_rate_note(100, 200))
    note: the simulator compromises 2 terminals and 3 cards every day whatever the population, so here
    up to ~28% of terminals and ~42% of cards are compromised at a time (reference 5,000 cards /
    10,000 terminals: 0.56% and 0.84%), hence the high fraud rate
    """
    terminal_share = min(1.0, TERMINALS_PER_DAY * TERMINAL_DAYS / max(terminals, 1))
    card_share = min(1.0, CARDS_PER_DAY * CARD_DAYS / max(customers, 1))
    if terminal_share < 0.02 and card_share < 0.02:
        return None
    return (f"note: the simulator compromises {TERMINALS_PER_DAY} terminals and {CARDS_PER_DAY} cards every day"
            f" whatever the population, so here\nup to ~{terminal_share:.0%} of terminals and ~{card_share:.0%} of cards"
            f" are compromised at a time (reference 5,000 cards /\n10,000 terminals: 0.56% and 0.84%),"
            f" hence the high fraud rate")


if __name__ == "__main__":
    sys.exit(main())
