#!/usr/bin/env bash
# Benchmark-only peer: Feast's Python SDK with its Redis online store, in its own venv (.venv-feast),
# kept out of the project's .venv (Feast pins its own pandas/pyarrow/protobuf/pydantic stack).
#
#   loadtest/setup_feast_env.sh            # idempotent; fast when already installed
#   PYTHON=python3.11 loadtest/setup_feast_env.sh
#
# Used by `python -m loadtest.bench_predictor --raw`, which runs loadtest/feast_peer.py in this venv
# on the benchmark's Redis, and skips the peer with a message when the venv is absent.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FEAST_VENV:-$ROOT/.venv-feast}"
FEAST_VERSION="${FEAST_VERSION:-0.67.*}"
PACKAGES=("feast[redis]==$FEAST_VERSION" "hiredis")

# shellcheck source=loadtest/peer_venv.sh
source "$ROOT/loadtest/peer_venv.sh"
peer_venv feast "$VENV" 10 '"$VENV/bin/python" -c "import feast, redis, hiredis"' \
    'feast|redis|hiredis|pandas|pyarrow|protobuf' "${PACKAGES[@]}"
