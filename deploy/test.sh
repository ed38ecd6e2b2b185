#!/usr/bin/env bash
# Runs every test: Rust unit tests, then the end-to-end suite against a real
# Apache Kafka (fetched from Maven Central) with real clients through Custos.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
cargo test --workspace
cargo build -p custos
export CUSTOS_BIN="$REPO/target/debug/custos"
tests/run-e2e.sh "$@"
