#!/usr/bin/env bash
# Runs the end-to-end tests against a real Kafka started by deploy/kafka.sh.
#   tests/run-e2e.sh                 # through Custos (target/debug/custos or $CUSTOS_BIN)
#   CUSTOS_E2E_DIRECT=1 tests/run-e2e.sh   # straight to Kafka, no proxy
#   tests/run-e2e.sh -k groups -x    # extra arguments go to pytest
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import confluent_kafka, pytest' 2>/dev/null; then
  "$PY" -m pip install -q -r tests/requirements.txt
fi
deploy/kafka.sh fetch >/dev/null
exec "$PY" -m pytest tests/e2e -q "$@"
