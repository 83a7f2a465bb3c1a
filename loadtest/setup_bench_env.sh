#!/usr/bin/env bash
# Benchmark-only peer: Seldon MLServer + its XGBoost runtime in their own venv (.venv-bench),
# kept out of the project's .venv (MLServer pins its own protobuf/grpc/fastapi stack).
#
#   loadtest/setup_bench_env.sh            # idempotent; fast when already installed
#   PYTHON=python3.11 loadtest/setup_bench_env.sh
#
# Used by `python -m loadtest.bench_predictor`, which skips the peer when this venv is absent.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${BENCH_VENV:-$ROOT/.venv-bench}"
# Versions that pip resolves together on Python 3.11 (MLServer 1.7.x needs uvloop < 0.22 here).
MLSERVER_VERSION="${MLSERVER_VERSION:-1.7.1}"
PACKAGES=("mlserver==$MLSERVER_VERSION" "mlserver-xgboost==$MLSERVER_VERSION" "uvloop==0.21.0")

# shellcheck source=loadtest/peer_venv.sh
source "$ROOT/loadtest/peer_venv.sh"
peer_venv bench "$VENV" 10 '"$VENV/bin/mlserver" --help' \
    'mlserver|mlserver-xgboost|xgboost|uvloop|grpcio|protobuf' "${PACKAGES[@]}"
