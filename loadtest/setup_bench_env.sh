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
PYTHON="${PYTHON:-python3}"
# Versions that pip resolves together on Python 3.11 (MLServer 1.7.x needs uvloop < 0.22 here).
MLSERVER_VERSION="${MLSERVER_VERSION:-1.7.1}"
PACKAGES=("mlserver==$MLSERVER_VERSION" "mlserver-xgboost==$MLSERVER_VERSION" "uvloop==0.21.0")
STAMP="$VENV/.bench-stamp"
WANT="${PACKAGES[*]}"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]] && "$VENV/bin/mlserver" --help >/dev/null 2>&1; then
    echo "bench env ready: $VENV ($WANT)"
    exit 0
fi

"$PYTHON" -c 'import sys; assert sys.version_info[:2] >= (3, 10), "MLServer needs Python >= 3.10, found " + sys.version.split()[0]'
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "${PACKAGES[@]}"
"$VENV/bin/mlserver" --help >/dev/null
echo "$WANT" > "$STAMP"
echo "bench env ready: $VENV ($("$VENV/bin/python" -m pip list 2>/dev/null | grep -iE '^(mlserver|mlserver-xgboost|xgboost|uvloop|grpcio|protobuf) ' | tr -s ' ' | tr '\n' ';'))"
