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
PYTHON="${PYTHON:-python3}"
FEAST_VERSION="${FEAST_VERSION:-0.67.*}"
PACKAGES=("feast[redis]==$FEAST_VERSION" "hiredis")
STAMP="$VENV/.feast-stamp"
WANT="${PACKAGES[*]}"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]] && "$VENV/bin/python" -c 'import feast, redis, hiredis' >/dev/null 2>&1; then
    echo "feast env ready: $VENV ($WANT)"
    exit 0
fi

"$PYTHON" -c 'import sys; assert sys.version_info[:2] >= (3, 10), "Feast 0.67 needs Python >= 3.10, found " + sys.version.split()[0]'
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "${PACKAGES[@]}"
"$VENV/bin/python" -c 'import feast, redis, hiredis'
echo "$WANT" > "$STAMP"
echo "feast env ready: $VENV ($("$VENV/bin/python" -m pip list 2>/dev/null | grep -iE '^(feast|redis|hiredis|pandas|pyarrow|protobuf) ' | tr -s ' ' | tr '\n' ';'))"
